/* json_out.c — the subcommands' JSON output (json_out.h). */
#include "tools/cli/json_out.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Printing precision: enough for every rounded value to print as its shortest decimal form
 * (4.1502, not 4.1502000000000001). */
#define KC_JSON_PRECISION 15

json_t *kc_json_real(double x, int decimals) {
    if (!isfinite(x)) {
        return json_null();
    }
    const double scale = pow(10.0, decimals);
    const double r = round(x * scale) / scale;
    return json_real(isfinite(r) ? r : x);
}

json_t *kc_json_sig(double x, int digits) {
    if (!isfinite(x)) {
        return json_null();
    }
    if (x == 0.0) {
        return json_real(0.0);
    }
    char buf[64];
    snprintf(buf, sizeof(buf), "%.*g", digits, x);
    return json_real(strtod(buf, NULL));
}

json_t *kc_json_str(const char *s) {
    return kc_json_strn(s, s != NULL ? strlen(s) : 0);
}

json_t *kc_json_strn(const char *s, size_t len) {
    json_t *j = s != NULL ? json_stringn(s, len) : NULL;
    return j != NULL ? j : json_null();
}

int kc_json_print(const char *cmd, json_t *j) {
    char *s = j != NULL ? json_dumps(j, JSON_REAL_PRECISION(KC_JSON_PRECISION)) : NULL;
    json_decref(j);
    if (s == NULL) {
        fprintf(stderr, "%s: out of memory building the JSON output\n", cmd);
        return 1;
    }
    const int rc = puts(s) < 0 || fflush(stdout) != 0 ? 1 : 0;
    free(s);
    if (rc != 0) {
        fprintf(stderr, "%s: writing the JSON output failed\n", cmd);
    }
    return rc;
}
