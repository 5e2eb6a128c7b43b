/*
 * cmd_serve.c — `kvcast serve`: the OpenAI-compatible HTTP server (server/serve.c).
 */
#include <stdio.h>

#include "tools/cli/commands.h"
#if defined(KC_HAVE_SERVER)
#include "server/serve.h"
#endif

int kc_cmd_serve(int argc, char **argv) {
#if defined(KC_HAVE_SERVER)
    return srv_serve_main(argc, argv);
#else
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvcast serve: this build has no server (the scheduler was missing)\n");
    return 1;
#endif
}
