/*
 * commands.h — the `kvcast` subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit code.
 */
#ifndef KC_CLI_COMMANDS_H
#define KC_CLI_COMMANDS_H

int kc_cmd_generate(int argc, char **argv);   /* cmd_generate.c */
int kc_cmd_bench(int argc, char **argv);      /* cmd_bench.c */
int kc_bench_serve(int argc, char **argv);    /* cmd_bench_serve.c: `kvcast bench serve` */
int kc_cmd_tokenize(int argc, char **argv);   /* cmd_tokenize.c */
int kc_cmd_detokenize(int argc, char **argv); /* cmd_tokenize.c */
int kc_cmd_calibrate(int argc, char **argv);  /* cmd_calibrate.c */
int kc_cmd_eval(int argc, char **argv);       /* cmd_eval.c */
int kc_cmd_serve(int argc, char **argv);      /* cmd_serve.c */
int kc_cmd_version(int argc, char **argv);    /* cmd_version.c: also `kvcast --version` */

/* cmd_chat_template.c: `kvcast chat-template` */
int kc_cmd_chat_template(int argc, char **argv);

/* The git describe this binary was built from (cmd_version.c). */
const char *kc_cli_version(void);

#endif
