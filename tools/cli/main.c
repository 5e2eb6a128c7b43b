/*
 * main.c — the `kvcast` executable: dispatches to a subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "common/kc.h"
#include "tools/cli/commands.h"

struct kc_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
};

static const struct kc_command commands[] = {
    {"generate", kc_cmd_generate, "generate tokens from a model directory"},
    {"bench", kc_cmd_bench,
     "benchmarks: `bench engine` (forward pass), `bench serve` (HTTP load test)"},
    {"tokenize", kc_cmd_tokenize, "print the token ids of a text"},
    {"detokenize", kc_cmd_detokenize, "print the text of token ids"},
    {"chat-template", kc_cmd_chat_template,
     "print the prompt a model's chat template makes of a conversation"},
    {"serve", kc_cmd_serve, "serve the OpenAI-compatible HTTP API (/v1/completions, ...)"},
    {"calibrate", kc_cmd_calibrate, "fit a KV predictor for a (base, aux) pair in closed form"},
    {"eval", kc_cmd_eval, "KV Prediction quality and TTFT: full vs aux vs predict"},
    {"version", kc_cmd_version, "the git describe of this build and its libraries' versions"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: kvcast <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    }
    fprintf(f, "\n`kvcast <command> --help` describes each command's options; `kvcast --version`\n"
               "prints the build's git describe and library versions.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        return kc_cmd_version(argc - 1, argv + 1);
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "kvcast: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
