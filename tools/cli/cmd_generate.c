/* Placeholder until the forward pass lands (being written now); replaced, not kept. */
#include <stdio.h>

#include "tools/cli/commands.h"

int kc_cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvcast generate: not built yet\n");
    return 2;
}

int kc_cmd_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvcast bench: not built yet\n");
    return 2;
}
