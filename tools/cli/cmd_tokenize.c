/* Placeholder until the tokenizer lands (being written now); replaced, not kept. */
#include <stdio.h>

#include "tools/cli/commands.h"

int kc_cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvcast tokenize: not built yet\n");
    return 2;
}

int kc_cmd_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvcast detokenize: not built yet\n");
    return 2;
}
