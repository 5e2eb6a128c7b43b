/* args.c — option value parsing shared by the CLI subcommands. */
#include "tools/cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

bool kc_arg_int(const char *s, long lo, long hi, long *out) {
    if (s == NULL || *s == '\0') {
        return false;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

bool kc_arg_float(const char *s, double lo, double hi, double *out) {
    if (s == NULL || *s == '\0') {
        return false;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || !(v >= lo && v <= hi)) {
        return false;
    }
    *out = v;
    return true;
}

bool kc_arg_ids(const char *s, int32_t **ids, int *n) {
    if (s == NULL || *s == '\0') {
        return false;
    }
    size_t cap = 1;
    for (const char *p = s; *p; p++) {
        cap += *p == ',';
    }
    int32_t *out = malloc(cap * sizeof(int32_t));
    if (out == NULL) {
        return false;
    }
    int count = 0;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(out);
            return false;
        }
        out[count++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end == ',' && *p == '\0') {
            free(out);
            return false;
        }
    }
    *ids = out;
    *n = count;
    return true;
}

bool kc_arg_value(int argc, char **argv, int *i, const char *name, const char **val,
                  bool *missing) {
    if (strcmp(argv[*i], name) != 0) {
        return false;
    }
    if (*i + 1 >= argc) {
        *missing = true;
        return false;
    }
    *val = argv[++*i];
    return true;
}
