/*
 * args.h — strict parsing of command-line option values for the kvcast subcommands:
 * whole-string numbers within a range, comma-separated id lists. Errors are printed by the
 * caller with the option's name.
 */
#ifndef KC_CLI_ARGS_H
#define KC_CLI_ARGS_H

#include <stdbool.h>
#include <stdint.h>

/* Parses a base-10 integer in [lo, hi]; false on garbage, overflow or out of range. */
bool kc_arg_int(const char *s, long lo, long hi, long *out);
/* Parses a finite float in [lo, hi]. */
bool kc_arg_float(const char *s, double lo, double hi, double *out);
/* Parses "1,2,3" into a heap array of ids in [0, INT32_MAX]; false on a bad or empty list. */
bool kc_arg_ids(const char *s, int32_t **ids, int *n);

/* If argv[*i] equals name and a value follows, stores it in *val, advances *i and returns
 * true. Exits nothing: a missing value makes it return false with *missing set. */
bool kc_arg_value(int argc, char **argv, int *i, const char *name, const char **val,
                  bool *missing);

#endif
