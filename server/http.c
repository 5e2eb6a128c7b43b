/*
 * http.c — libmicrohttpd driven by the libuv loop, and the routes.
 *
 * MHD runs in "external epoll" mode: uv_poll watches MHD's epoll fd, a uv_timer fires at
 * MHD_get_timeout() (and at 0 ms after a resume), and both call MHD_run on the loop thread.
 * So every MHD callback (access handler, content reader, completion notice) runs on the loop
 * thread too, and connection state needs no locks (server_internal.h, invariant 1).
 *
 * Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/completions,
 * POST /v1/chat/completions (501), POST /tokenize, POST /detokenize; OPTIONS for CORS
 * preflights. /v1/..., /tokenize and /detokenize need the API key when one is set.
 *
 * DESIGN
 *   1. Everything that can be refused from the headers is refused on the first call, before
 *      any body byte is read: Host (DNS rebinding on loopback), Content-Length +
 *      Transfer-Encoding smuggling, auth, route, method, content type, Content-Length over
 *      the limit (413). A chunked body that grows past the limit drops the connection.
 *   2. A response is queued either on the first call or after the whole body arrived, never
 *      in a call that carries upload data (MHD's rule).
 *   3. Secrets never reach a log line or an error body.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <jansson.h>

#include "server/server_internal.h"

enum route {
    R_NONE = 0,
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_COMPLETIONS,
    R_CHAT,
    R_TOKENIZE,
    R_DETOKENIZE,
};

struct route_def {
    const char *path;
    enum route route;
    const char *method; /* the one allowed method besides OPTIONS */
    bool auth;
};

static const struct route_def routes[] = {
    {"/health", R_HEALTH, "GET", false},
    {"/metrics", R_METRICS, "GET", false},
    {"/v1/models", R_MODELS, "GET", true},
    {"/v1/completions", R_COMPLETIONS, "POST", true},
    {"/v1/chat/completions", R_CHAT, "POST", true},
    {"/tokenize", R_TOKENIZE, "POST", true},
    {"/detokenize", R_DETOKENIZE, "POST", true},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

/* ---- responses ---- */

static void add_common_headers(struct srv_conn *c, struct MHD_Response *r) {
    if (c->origin[0] != '\0') {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", c->origin);
        MHD_add_response_header(r, "Vary", "Origin");
    }
}

enum MHD_Result srv_send(struct srv_conn *c, int status, const char *content_type, const char *body,
                         size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)(uintptr_t)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return MHD_NO;
    }
    if (content_type != NULL) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    }
    add_common_headers(c, r);
    if (status == 503) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", c->srv->cfg.retry_after_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (status == 405) {
        for (size_t i = 0; i < N_ROUTES; i++) {
            if (routes[i].route == (enum route)c->route) {
                char allow[32];
                snprintf(allow, sizeof(allow), "%s, OPTIONS", routes[i].method);
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
            }
        }
    }
    if (c->close || status == 413 || status == 403) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    c->status = status;
    if (status >= 400) {
        c->srv->metrics.http_errors++;
    }
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned int)status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result srv_send_error(struct srv_conn *c, const struct srv_error *e) {
    size_t len = 0;
    char *body = srv_error_body(e, &len);
    if (body == NULL) {
        return MHD_NO;
    }
    enum MHD_Result ret = srv_send(c, e->status, "application/json", body, len);
    free(body);
    return ret;
}

static enum MHD_Result send_json(struct srv_conn *c, int status, json_t *o) {
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (txt == NULL) {
        return MHD_NO;
    }
    enum MHD_Result ret = srv_send(c, status, "application/json", txt, strlen(txt));
    free(txt);
    return ret;
}

static enum MHD_Result send_http_error(struct srv_conn *c, int status, const char *msg) {
    struct srv_error e;
    srv_error_http(&e, status, "%s", msg);
    return srv_send_error(c, &e);
}

/* ---- simple routes ---- */

static void gauges_of(struct srv *s, struct srv_gauges *g) {
    struct sch_stats st;
    memset(&st, 0, sizeof(st));
    memset(g, 0, sizeof(*g));
    if (s->sch != NULL) {
        sch_stats_get(s->sch, &st);
    }
    g->running = st.prefilling + st.running;
    g->waiting = st.queued;
    if (st.base_blocks_total > 0) {
        g->kv_base = (double)(st.base_blocks_total - st.base_blocks_free) / st.base_blocks_total;
    }
    if (st.aux_blocks_total > 0) {
        g->has_aux = 1;
        g->kv_aux = (double)(st.aux_blocks_total - st.aux_blocks_free) / st.aux_blocks_total;
    }
}

static enum MHD_Result route_health(struct srv_conn *c) {
    struct srv *s = c->srv;
    if (s->state != SRV_SERVING) {
        return send_http_error(c, 503,
                               s->state == SRV_LOADING ? "the server is loading"
                                                       : "the server is shutting down");
    }
    return srv_send(c, 200, "application/json", "{\"status\":\"ok\"}", 15);
}

static enum MHD_Result route_metrics(struct srv_conn *c) {
    struct srv_gauges g;
    gauges_of(c->srv, &g);
    struct srv_buf o = {0};
    if (srv_metrics_render(&c->srv->metrics, &g, &o) != KC_OK) {
        srv_buf_free(&o);
        return MHD_NO;
    }
    enum MHD_Result ret = srv_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", o.p, o.len);
    srv_buf_free(&o);
    return ret;
}

static enum MHD_Result route_models(struct srv_conn *c) {
    struct srv *s = c->srv;
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(0));
    json_object_set_new(m, "owned_by", json_string("kvcast"));
    json_t *root = json_stringn(s->model_root, strlen(s->model_root));
    json_object_set_new(m, "root", root ? root : json_string(s->model_id));
    json_object_set_new(m, "parent", json_null());
    json_object_set_new(m, "max_model_len", json_integer(s->max_model_len));
    json_object_set_new(m, "permission", json_array());
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_object_set_new(o, "data", data);
    return send_json(c, 200, o);
}

static enum MHD_Result route_tokenize(struct srv_conn *c) {
    return srv_tokenize_start(c); /* off the loop thread: completions.c */
}

static enum MHD_Result route_detokenize(struct srv_conn *c) {
    struct srv *s = c->srv;
    struct srv_error e;
    int32_t *ids = NULL;
    int n = 0;
    if (srv_detokenize_parse(c->body.p, c->body.len, &s->lim, &ids, &n, &e) != KC_OK) {
        return srv_send_error(c, &e);
    }
    if (s->tok == NULL) {
        free(ids);
        srv_error_kc(&e, KC_EUNSUPPORTED, NULL, "this model has no tokenizer");
        return srv_send_error(c, &e);
    }
    char *text = NULL;
    size_t len = 0;
    struct kc_error kerr = {0};
    int rc = eng_tok_decode(s->tok, ids, (size_t)n, 0, &text, &len, &kerr);
    free(ids);
    if (rc != KC_OK) {
        srv_error_kc(&e, KC_EINVAL, "tokens", "%s", kerr.msg);
        return srv_send_error(c, &e);
    }
    json_t *o = json_object();
    json_t *t = json_stringn(text, len);
    json_object_set_new(o, "prompt", t ? t : json_string(""));
    free(text);
    return send_json(c, 200, o);
}

/* ---- header checks (first call) ---- */

static const char *header(struct srv_conn *c, const char *name) {
    return MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, name);
}

/* DNS rebinding defence: a server bound to loopback answers only loopback Host names. */
static bool host_ok(struct srv_conn *c) {
    if (!cfg_host_is_loopback(c->srv->cfg.host)) {
        return true;
    }
    const char *h = header(c, MHD_HTTP_HEADER_HOST);
    if (h == NULL) {
        return true; /* HTTP/1.0 */
    }
    size_t n = strlen(h);
    const char *colon = strrchr(h, ':');
    if (colon != NULL && strchr(h, ']') < colon) {
        n = (size_t)(colon - h);
    }
    static const char *const ok[] = {"localhost", "127.0.0.1", "[::1]"};
    for (size_t i = 0; i < 3; i++) {
        if (strlen(ok[i]) == n && strncasecmp(h, ok[i], n) == 0) {
            return true;
        }
    }
    return n >= 4 && strncmp(h, "127.", 4) == 0 && strspn(h, "0123456789.") == n;
}

static bool auth_ok(struct srv_conn *c) {
    const char *key = c->srv->cfg.api_key;
    if (key[0] == '\0') {
        return true;
    }
    const char *h = header(c, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0) {
        return false;
    }
    const char *tok = h + 7;
    while (*tok == ' ') {
        tok++;
    }
    size_t n = strlen(tok);
    return srv_secret_equal(tok, n, key, strlen(key));
}

static void cors_origin(struct srv_conn *c) {
    const char *allow = c->srv->cfg.cors_allow_origins;
    const char *origin = header(c, "Origin");
    if (allow[0] == '\0' || origin == NULL) {
        return;
    }
    size_t n = strlen(origin);
    const char *p = allow;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && *p == ' ') {
            p++;
            len--;
        }
        while (len > 0 && p[len - 1] == ' ') {
            len--;
        }
        if (len == n && strncmp(p, origin, n) == 0 && n < sizeof(c->origin)) {
            memcpy(c->origin, origin, n + 1);
            return;
        }
        if (comma == NULL) {
            break;
        }
        p = comma + 1;
    }
}

static enum MHD_Result preflight(struct srv_conn *c, const struct route_def *rd) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return MHD_NO;
    }
    if (c->origin[0] != '\0') {
        char methods[32];
        snprintf(methods, sizeof(methods), "%s, OPTIONS", rd->method);
        MHD_add_response_header(r, "Access-Control-Allow-Origin", c->origin);
        MHD_add_response_header(r, "Vary", "Origin");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    }
    c->status = 204;
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    return ret;
}

/* The first call for a request: everything decidable from the headers (DESIGN 1). Returns
 * MHD_YES with nothing queued to go on reading the body. */
static enum MHD_Result first_call(struct srv_conn *c, const char *url, const char *method) {
    struct srv *s = c->srv;
    if (!host_ok(c)) {
        return send_http_error(c, 403, "Host header not allowed");
    }
    const char *te = header(c, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (te != NULL && (cl != NULL || strcasecmp(te, "chunked") != 0)) {
        c->close = true;
        return send_http_error(c, 400,
                               "Transfer-Encoding must be exactly 'chunked' and may not be "
                               "combined with Content-Length");
    }
    const struct route_def *rd = NULL;
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (strcmp(url, routes[i].path) == 0) {
            rd = &routes[i];
        }
    }
    if (rd == NULL) {
        return send_http_error(c, 404, "Not found");
    }
    c->route = rd->route;
    cors_origin(c);
    if (strcmp(method, "OPTIONS") == 0) {
        return preflight(c, rd);
    }
    if (rd->auth && !auth_ok(c)) {
        /* Identical body for a missing and a wrong key (RELIABILITY D1). */
        return send_http_error(c, 401, "Incorrect or missing API key.");
    }
    if (strcmp(method, rd->method) != 0) {
        return send_http_error(c, 405, "Method not allowed");
    }
    if (strcmp(rd->method, "POST") == 0) {
        const char *ct = header(c, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (ct != NULL && strncasecmp(ct, "application/json", 16) != 0 &&
            strstr(ct, "+json") == NULL) {
            return send_http_error(c, 415, "Content-Type must be application/json");
        }
        if (cl != NULL) {
            char *end = NULL;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end == cl || *end != '\0' || n > (unsigned long long)s->cfg.max_body_bytes) {
                struct srv_error e;
                srv_error_http(&e, 413, "Request body larger than %ld bytes",
                               s->cfg.max_body_bytes);
                return srv_send_error(c, &e);
            }
        }
    }
    if (rd->route == R_COMPLETIONS && s->state != SRV_SERVING) {
        struct srv_error e;
        srv_error_kc(&e, KC_EBUSY, NULL, "The server is shutting down.");
        return srv_send_error(c, &e);
    }
    return MHD_YES;
}

static enum MHD_Result dispatch(struct srv_conn *c) {
    c->dispatched = true;
    switch ((enum route)c->route) {
    case R_HEALTH:
        return route_health(c);
    case R_METRICS:
        return route_metrics(c);
    case R_MODELS:
        return route_models(c);
    case R_COMPLETIONS:
        return srv_completions_start(c);
    case R_CHAT:
        return send_http_error(c, 501,
                               "/v1/chat/completions is not implemented yet; use "
                               "/v1/completions");
    case R_TOKENIZE:
        return route_tokenize(c);
    case R_DETOKENIZE:
        return route_detokenize(c);
    case R_NONE:
        break;
    }
    return send_http_error(c, 404, "Not found");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    struct srv *s = cls;
    (void)version;
    struct srv_conn *c = *con_cls;
    if (c == NULL) {
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            return MHD_NO;
        }
        c->srv = s;
        c->mc = mc;
        c->rid = ++s->next_req;
        c->t_start = kc_now_s();
        *con_cls = c;
        return first_call(c, url, method);
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (c->body.len + n > (size_t)s->cfg.max_body_bytes) {
            /* Chunked body past the cap: no response may be queued in this call, so drop. */
            KC_INFO("req=%llu body over %ld bytes; closing", (unsigned long long)c->rid,
                    s->cfg.max_body_bytes);
            c->status = 413;
            return MHD_NO;
        }
        return srv_buf_append(&c->body, upload_data, n) == KC_OK ? MHD_YES : MHD_NO;
    }
    if (!c->dispatched) {
        return dispatch(c);
    }
    return srv_completions_resumed(c);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct srv *s = cls;
    struct srv_conn *c = *con_cls;
    (void)mc;
    if (c == NULL) {
        return;
    }
    *con_cls = NULL;
    bool ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (c->cmp != NULL) {
        srv_completions_conn_closed(c->cmp, ok);
    }
    if (s->cfg.access_log) {
        static const char *const names[] = {
            "/health",   "/metrics",   "/v1/models", "/v1/completions", "/v1/chat/completions",
            "/tokenize", "/detokenize"};
        const char *path = c->route > 0 && c->route <= 7 ? names[c->route - 1] : "-";
        KC_INFO("req=%llu %s status=%d prompt_tokens=%d gen_tokens=%d ttft_ms=%.1f "
                "total_ms=%.1f%s",
                (unsigned long long)c->rid, path, c->status, c->log_prompt_tokens,
                c->log_gen_tokens, c->log_ttft_ms, (kc_now_s() - c->t_start) * 1000.0,
                ok ? "" : " aborted");
    }
    srv_buf_free(&c->body);
    srv_buf_free(&c->pending_body);
    free(c);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    if (KC_LOG_DEBUG <= kc_log_level) {
        char msg[512];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t n = strlen(msg);
        while (n > 0 && msg[n - 1] == '\n') {
            msg[--n] = '\0';
        }
        KC_DEBUG("libmicrohttpd: %s", msg);
    }
}

/* ---- uv glue ---- */

static void run_mhd(struct srv *s);

static void on_mhd_timer(uv_timer_t *t) {
    run_mhd(t->data);
}

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    run_mhd(p->data);
}

static void run_mhd(struct srv *s) {
    if (s->mhd == NULL) {
        return;
    }
    MHD_run(s->mhd);
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (MHD_get_timeout(s->mhd, &to) == MHD_YES) {
        uv_timer_start(&s->mhd_timer, on_mhd_timer, to, 0);
    } else {
        uv_timer_start(&s->mhd_timer, on_mhd_timer, 1000, 0);
    }
}

void srv_mhd_kick(struct srv *s) {
    if (s->mhd != NULL) {
        uv_timer_start(&s->mhd_timer, on_mhd_timer, 0, 0);
    }
}

static int bind_addr(const char *host, int port, struct sockaddr_storage *ss, bool *v6,
                     struct kc_error *err) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || res == NULL) {
        return kc_error_set(err, KC_EINVAL, "--host %s: %s", host, gai_strerror(rc));
    }
    /* Prefer IPv4 for names like localhost that resolve to both. */
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *v6 = pick->ai_family == AF_INET6;
    if (*v6) {
        ((struct sockaddr_in6 *)(void *)ss)->sin6_port = htons((uint16_t)port);
    } else {
        ((struct sockaddr_in *)(void *)ss)->sin_port = htons((uint16_t)port);
    }
    freeaddrinfo(res);
    return KC_OK;
}

int srv_http_start(struct srv *s, struct kc_error *err) {
    struct sockaddr_storage ss;
    bool v6 = false;
    int rc = bind_addr(s->cfg.host, s->cfg.port, &ss, &v6, err);
    if (rc != KC_OK) {
        return rc;
    }
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) {
        flags |= MHD_USE_IPv6;
    }
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)s->cfg.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)s->cfg.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)s->cfg.connection_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)s->cfg.connection_memory_kib * 1024, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_END);
    if (s->mhd == NULL) {
        return kc_error_set(err, KC_EIO, "cannot listen on %s:%d (address in use or not local?)",
                            s->cfg.host, s->cfg.port);
    }
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (pi == NULL || ei == NULL) {
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
        return kc_error_set(err, KC_EIO, "libmicrohttpd: no port or epoll fd");
    }
    s->port = pi->port;
    uv_timer_init(&s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    uv_poll_init(&s->loop, &s->mhd_poll, ei->epoll_fd);
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    srv_mhd_kick(s);
    return KC_OK;
}

void srv_http_stop(struct srv *s) {
    if (s->mhd == NULL) {
        return;
    }
    /* Invariant 5: never stop the daemon with a suspended connection. */
    srv_completions_resume_all(s);
    MHD_run(s->mhd);
    uv_poll_stop(&s->mhd_poll);
    uv_timer_stop(&s->mhd_timer);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
}
