/* args.c — the kvcast subcommands' command-line parser (args.h) and its value parsers. */
#include "tools/cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kc_args_init(struct kc_args *a, const char *cmd, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
    a->i = 0;
}

bool kc_args_next(struct kc_args *a) {
    if (a->error != 0 || ++a->i >= a->argc) {
        return false;
    }
    const char *s = a->argv[a->i];
    const char *eq = strncmp(s, "--", 2) == 0 ? strchr(s, '=') : NULL;
    const size_t len = eq != NULL ? (size_t)(eq - s) : strlen(s);
    /* A name longer than any option is kept whole (truncated) and matches nothing. */
    const size_t keep = len < sizeof(a->name) - 1 ? len : sizeof(a->name) - 1;
    memcpy(a->name, s, keep);
    a->name[keep] = '\0';
    a->value = eq != NULL && len == keep ? eq + 1 : NULL;
    if (eq != NULL && len != keep) {
        a->name[0] = '\0'; /* cannot be any option: kc_args_fail reports argv[i] */
    }
    return true;
}

bool kc_args_help(const struct kc_args *a) {
    return a->error == 0 && (strcmp(a->name, "--help") == 0 || strcmp(a->name, "-h") == 0) &&
           a->value == NULL;
}

bool kc_args_flag(struct kc_args *a, const char *name) {
    if (a->error != 0 || strcmp(a->name, name) != 0) {
        return false;
    }
    if (a->value != NULL) {
        kc_args_bad(a, "takes no value");
        return false;
    }
    return true;
}

bool kc_args_str(struct kc_args *a, const char *name, const char **val) {
    if (a->error != 0 || strcmp(a->name, name) != 0) {
        return false;
    }
    if (a->value != NULL) {
        *val = a->value;
        return true;
    }
    if (a->i + 1 >= a->argc) {
        kc_args_bad(a, "needs a value");
        return false;
    }
    *val = a->argv[++a->i];
    return true;
}

bool kc_args_long(struct kc_args *a, const char *name, long lo, long hi, long *out) {
    const char *v = NULL;
    if (!kc_args_str(a, name, &v)) {
        return false;
    }
    if (!kc_arg_int(v, lo, hi, out)) {
        fprintf(stderr, "%s: %s must be an integer in [%ld, %ld], got '%s'\n", a->cmd, name, lo, hi,
                v);
        a->error = 2;
        return false;
    }
    return true;
}

bool kc_args_int(struct kc_args *a, const char *name, int lo, int hi, int *out) {
    long v = 0;
    if (!kc_args_long(a, name, lo, hi, &v)) {
        return false;
    }
    *out = (int)v;
    return true;
}

bool kc_args_double(struct kc_args *a, const char *name, double lo, double hi, double *out) {
    const char *v = NULL;
    if (!kc_args_str(a, name, &v)) {
        return false;
    }
    if (!kc_arg_float(v, lo, hi, out)) {
        fprintf(stderr, "%s: %s must be a number in [%g, %g], got '%s'\n", a->cmd, name, lo, hi, v);
        a->error = 2;
        return false;
    }
    return true;
}

bool kc_args_more(struct kc_args *a, const char **val) {
    if (a->error != 0 || a->i + 1 >= a->argc || a->argv[a->i + 1][0] == '-') {
        return false;
    }
    *val = a->argv[++a->i];
    return true;
}

int kc_args_bad(struct kc_args *a, const char *msg) {
    fprintf(stderr, "%s: %s %s\n", a->cmd, a->name[0] != '\0' ? a->name : a->argv[a->i], msg);
    a->error = 2;
    return 2;
}

int kc_args_fail(struct kc_args *a) {
    if (a->error == 0) {
        const char *s = a->argv[a->i];
        fprintf(stderr, "%s: %s '%s' (see `%s --help`)\n", a->cmd,
                s[0] == '-' ? "unknown option" : "unexpected argument", s, a->cmd);
        a->error = 2;
    }
    return a->error;
}

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
