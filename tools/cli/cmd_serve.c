/*
 * cmd_serve.c — `kvcast serve`: the OpenAI-compatible HTTP server (server/serve.c).
 */
#include "server/serve.h"
#include "tools/cli/commands.h"

int kc_cmd_serve(int argc, char **argv) {
    return srv_serve_main(argc, argv);
}
