/*
 * json_out.h — the JSON that the kvcast subcommands print (`--json`), built with jansson so that
 * strings are always escaped and non-finite numbers become null. Numbers are rounded to the
 * precision each field means (a latency to a microsecond, a ratio to 1e-4) before printing, so
 * the output stays short and stable.
 */
#ifndef KC_CLI_JSON_OUT_H
#define KC_CLI_JSON_OUT_H

#include <jansson.h>
#include <stddef.h>

/* x rounded to `decimals` places as a JSON real; null when x is NaN or infinite. */
json_t *kc_json_real(double x, int decimals);
/* x rounded to `digits` significant digits (like printf's %.{digits}g); null when non-finite. */
json_t *kc_json_sig(double x, int digits);
/* A JSON string of s (UTF-8), or null when s is NULL or not valid UTF-8. */
json_t *kc_json_str(const char *s);
/* As kc_json_str for the len bytes at s. */
json_t *kc_json_strn(const char *s, size_t len);
/* Prints j on one line to stdout (`{"a": 1, "b": 2}`) and releases it; 0, or 1 when it could
 * not be built or written (the message names cmd). j may be NULL (an allocation failed). */
int kc_json_print(const char *cmd, json_t *j);

#endif
