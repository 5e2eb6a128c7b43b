/*
 * errors.h — the ONE place that turns a failure into an HTTP status and an OpenAI error body
 *   {"error": {"message": "...", "type": "...", "param": "..."|null, "code": "..."|null}}
 *
 * Place in the data flow: request parsing, routing and scheduler refusals fill a srv_error;
 * the HTTP layer sends srv_error_body() with srv_error.status (plus Retry-After for 503).
 * Thread rules: pure functions; call from any thread.
 */
#ifndef SRV_ERRORS_H
#define SRV_ERRORS_H

#include <stddef.h>

#include "common/kc.h"

struct srv_error {
    int status;       /* HTTP status code */
    const char *type; /* OpenAI error type: invalid_request_error, server_error, ... */
    const char *code; /* machine-readable code or NULL: context_length_exceeded, ... */
    char param[64];   /* offending request field, "" when none */
    char message[512];
};

/* Fills e from a KC_E* code (the mapping below is the only one in the server):
 *   KC_EINVAL, KC_EFORMAT, KC_ERANGE, KC_EUNSUPPORTED -> 400 invalid_request_error
 *   KC_ECONTEXT -> 400 invalid_request_error, code context_length_exceeded
 *   KC_ENOTFOUND -> 404 invalid_request_error, code model_not_found
 *   KC_EBUSY, KC_ECANCELED -> 503 server_error, code server_overloaded
 *   everything else -> 500 server_error
 * param may be NULL. Returns kc_code so callers can `return srv_error_kc(...)`. */
int srv_error_kc(struct srv_error *e, int kc_code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fills e for an HTTP-level failure with an explicit status (401, 404, 405, 413, 415, 501, ...);
 * type and code are chosen from the status. Returns KC_EINVAL. */
int srv_error_http(struct srv_error *e, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Serialises e as the OpenAI error body; malloc'd, NUL-terminated; NULL on out of memory. */
char *srv_error_body(const struct srv_error *e, size_t *len);

#endif /* SRV_ERRORS_H */
