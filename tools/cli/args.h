/*
 * args.h — the one command-line parser of the kvcast subcommands (`kvcast serve` takes its
 * settings through config/config.c, which follows the same rules):
 *   --name VALUE and --name=VALUE are the same; a flag given a value (--json=1) is an error;
 *   --help and -h print the usage to stdout and exit 0;
 *   an unknown option, a stray word, a missing or malformed value: a message naming the option on
 *   stderr and exit code 2.
 * Values are parsed strictly: whole-string numbers within a range, comma-separated id lists.
 *
 * A subcommand's loop:
 *     struct kc_args a;
 *     kc_args_init(&a, "kvcast eval", argc, argv);
 *     while (kc_args_next(&a)) {
 *         if (kc_args_help(&a)) { usage(stdout); return 0; }
 *         else if (kc_args_str(&a, "--bundle", &o->bundle)) {}
 *         else if (kc_args_long(&a, "--samples", 1, 1 << 20, &o->samples)) {}
 *         else if (kc_args_flag(&a, "--json")) { o->json = true; }
 *         else { return kc_args_fail(&a); }
 *     }
 * A matcher returns true only when the option is its own and its value is good; on a missing
 * or bad value it prints the message, records exit code 2 and returns false, so the chain falls
 * through to kc_args_fail(), which then prints nothing more.
 */
#ifndef KC_CLI_ARGS_H
#define KC_CLI_ARGS_H

#include <stdbool.h>
#include <stdint.h>

struct kc_args {
    const char *cmd; /* "kvcast eval": the prefix of every message */
    int argc;
    char **argv;       /* argv[0] is the subcommand's name and is skipped */
    int i;             /* index of the current argument */
    char name[64];     /* the current option without "=VALUE" */
    const char *value; /* the text after '=', or NULL */
    int error;         /* 0, or 2 once a message has been printed */
};

/* Starts a cursor over argv[1..argc-1]; cmd must outlive it. */
void kc_args_init(struct kc_args *a, const char *cmd, int argc, char **argv);
/* Moves to the next argument; false at the end or once an error was recorded. */
bool kc_args_next(struct kc_args *a);
/* True when the current argument is --help or -h. */
bool kc_args_help(const struct kc_args *a);
/* True when the current argument is the flag `name`; name=VALUE is an error. */
bool kc_args_flag(struct kc_args *a, const char *name);
/* True when the current argument is option `name` and a value follows (inline or as the next
 * argument, which is consumed); *val points into argv. */
bool kc_args_str(struct kc_args *a, const char *name, const char **val);
/* As kc_args_str, for a base-10 integer in [lo, hi]. */
bool kc_args_long(struct kc_args *a, const char *name, long lo, long hi, long *out);
/* As kc_args_long, into an int (lo and hi within int's range). */
bool kc_args_int(struct kc_args *a, const char *name, int lo, int hi, int *out);
/* As kc_args_str, for a finite number in [lo, hi]. */
bool kc_args_double(struct kc_args *a, const char *name, double lo, double hi, double *out);
/* Takes the next argument as one more value of the current option when it does not start with
 * '-' (options with a list of values, e.g. `--goodput ttft:450 tpot:10`). */
bool kc_args_more(struct kc_args *a, const char **val);
/* Prints "<cmd>: <current option>: <msg>" to stderr and records exit code 2; returns 2. */
int kc_args_bad(struct kc_args *a, const char *msg);
/* The end of a matcher chain: prints "unknown option" (or nothing if a matcher already printed
 * a message) and returns 2. */
int kc_args_fail(struct kc_args *a);

/* Value parsers, for values that are not options (e.g. list items). */
/* Parses a base-10 integer in [lo, hi]; false on garbage, overflow or out of range. */
bool kc_arg_int(const char *s, long lo, long hi, long *out);
/* Parses a finite float in [lo, hi]. */
bool kc_arg_float(const char *s, double lo, double hi, double *out);
/* Parses "1,2,3" into a heap array of ids in [0, INT32_MAX]; false on a bad or empty list. */
bool kc_arg_ids(const char *s, int32_t **ids, int *n);

#endif
