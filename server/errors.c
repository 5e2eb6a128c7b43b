/*
 * errors.c — KC_E* / HTTP status -> OpenAI error body. See errors.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "server/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

__attribute__((format(printf, 2, 0))) static void set_message(struct srv_error *e, const char *fmt,
                                                              va_list ap) {
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
}

int srv_error_kc(struct srv_error *e, int kc_code, const char *param, const char *fmt, ...) {
    e->param[0] = '\0';
    if (param != NULL) {
        snprintf(e->param, sizeof(e->param), "%s", param);
    }
    e->code = NULL;
    switch (kc_code) {
    case KC_EINVAL:
    case KC_EFORMAT:
    case KC_ERANGE:
    case KC_EUNSUPPORTED:
        e->status = 400;
        e->type = "invalid_request_error";
        break;
    case KC_ECONTEXT:
        e->status = 400;
        e->type = "invalid_request_error";
        e->code = "context_length_exceeded";
        break;
    case KC_ENOTFOUND:
        e->status = 404;
        e->type = "invalid_request_error";
        e->code = "model_not_found";
        break;
    case KC_EBUSY:
    case KC_ECANCELED:
        e->status = 503;
        e->type = "server_error";
        e->code = "server_overloaded";
        break;
    default:
        e->status = 500;
        e->type = "server_error";
        break;
    }
    va_list ap;
    va_start(ap, fmt);
    set_message(e, fmt, ap);
    va_end(ap);
    return kc_code;
}

int srv_error_http(struct srv_error *e, int status, const char *fmt, ...) {
    e->param[0] = '\0';
    e->status = status;
    e->type = status >= 500 ? "server_error" : "invalid_request_error";
    switch (status) {
    case 401:
        e->code = "invalid_api_key";
        break;
    case 403:
        e->code = "forbidden";
        break;
    case 404:
        e->code = "not_found";
        break;
    case 405:
        e->code = "method_not_allowed";
        break;
    case 413:
        e->code = "request_too_large";
        break;
    case 415:
        e->code = "unsupported_media_type";
        break;
    case 501:
        e->code = "not_implemented";
        break;
    case 503:
        e->code = "server_overloaded";
        break;
    default:
        e->code = NULL;
        break;
    }
    va_list ap;
    va_start(ap, fmt);
    set_message(e, fmt, ap);
    va_end(ap);
    return KC_EINVAL;
}

char *srv_error_body(const struct srv_error *e, size_t *len) {
    /* Messages may quote request text cut at a byte limit: json_stringn rejects invalid
     * UTF-8, so fall back to a fixed message rather than send nothing. */
    json_t *msg = json_stringn(e->message, strnlen(e->message, sizeof(e->message)));
    if (msg == NULL) {
        msg = json_string("invalid request");
    }
    json_t *inner = json_object();
    json_t *root = json_object();
    char *out = NULL;
    if (msg == NULL || inner == NULL || root == NULL) {
        json_decref(msg);
        goto fail;
    }
    json_object_set_new(inner, "message", msg);
    json_object_set_new(inner, "type", json_string(e->type ? e->type : "server_error"));
    json_object_set_new(inner, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->code ? json_string(e->code) : json_null());
    json_object_set(root, "error", inner);
    out = json_dumps(root, JSON_COMPACT);
    if (out != NULL && len != NULL) {
        *len = strlen(out);
    }
fail:
    json_decref(inner);
    json_decref(root);
    return out;
}
