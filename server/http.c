/*
 * http.c — libmicrohttpd driven by the libuv loop: connection tracking, the checks of a
 * request's first call, and the responses. The route table and the simple handlers are in
 * routes.c. This is the only file that speaks libmicrohttpd (the seam, server_internal.h):
 * the routes and completions.c queue responses, begin streams, suspend and resume
 * connections and check for gone clients through srv_send*, srv_http_* only, and every
 * response gets its CORS and X-Request-Id headers here (tests/check_layering.sh).
 *
 * MHD runs in "external epoll" mode: uv_poll watches MHD's epoll fd, a uv_timer fires at
 * MHD_get_timeout() (and at 0 ms after a resume), and both call MHD_run on the loop thread.
 * So every MHD callback (access handler, content reader, completion notice) runs on the loop
 * thread too, and connection state needs no locks (server_internal.h, invariant 1).
 *
 * Routes (table and handlers: routes.c): GET /health, GET /metrics, GET /v1/models,
 * POST /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize;
 * OPTIONS for CORS preflights. /v1/..., /tokenize, /detokenize and (unless --metrics-public)
 * /metrics need the API key when one is set; /health never does. Every response carries
 * X-Request-Id.
 *
 * DESIGN
 *   1. Everything that can be refused from the headers is refused on the first call, before
 *      any body byte is read: connection limits (503), Host (DNS rebinding), framing that a
 *      proxy could read differently (two differing Content-Length, any repeated or
 *      non-"chunked" Transfer-Encoding, TE with CL, whitespace in a header name: 400 +
 *      close; MHD 0.9.75 accepts all of these), auth, route, method, content type,
 *      Content-Length over the limit (413). A chunked body that grows past the limit is
 *      discarded and answered 413 when it ends (bounded by --body-timeout-s and a byte cap).
 *   2. A response is queued either on the first call or after the whole body arrived, never
 *      in a call that carries upload data (MHD's rule).
 *   3. Secrets never reach a log line or an error body.
 *   4. Slow and idle clients (slowloris) cannot hold the connection slots. Every TCP
 *      connection is tracked from MHD's connection notice (struct srv_sock): a request head
 *      must be complete within --header-timeout-s of the accept or of the end of the previous
 *      response, a body within --body-timeout-s of its head; conn_timer enforces both with
 *      shutdown(). When a new connection takes the count over --max-connections, the
 *      connection that has waited longest without a running request is shut down, so a real
 *      client always gets in; when every connection runs a request the newcomer gets 503.
 *      MHD's own limit sits above ours (it refuses silently), and its per-IP limit is off:
 *      ours answers 503 + Retry-After.
 *   5. A half-closed client (it sent the whole request, then shutdown(SHUT_WR), e.g. `nc -N`)
 *      gets its answer. libmicrohttpd 0.9.75 takes a recv() of 0 bytes as the end of the
 *      connection in any state past the request line (MHD_connection_handle_read: read_closed,
 *      then close WITH_ERROR), and it calls recv() when the connection's event_loop_info says
 *      READ and epoll flagged the socket readable. It does not update event_loop_info while a
 *      connection is suspended, so a connection suspended by the final handler call kept the
 *      READ of the body it had just read; the client's FIN, arriving meanwhile, flagged it
 *      readable, and the resume ended in recv() == 0 and a close before the handler ran again
 *      (status 0, "aborted"). So the routes that suspend (completions, tokenize) return once
 *      without a response first: MHD then sets the full request's event_loop_info (BLOCK: no
 *      reads) and calls the handler again at its next run, where the route suspends. MHD then
 *      never reads the socket again before the response is out (a response queued after the
 *      body sets WRITE), and the watchdog alone tells a half-closed client from a gone one
 *      (srv_http_peer_check).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server/server_internal.h"

/* The seam's codes are libmicrohttpd's own, so they convert by value. */
_Static_assert((int)SRV_HTTP_OK == (int)MHD_YES && (int)SRV_HTTP_CLOSE == (int)MHD_NO,
               "enum srv_http_rc must match enum MHD_Result");
_Static_assert(SRV_STREAM_END == MHD_CONTENT_READER_END_OF_STREAM &&
                   SRV_STREAM_ERROR == MHD_CONTENT_READER_END_WITH_ERROR,
               "SRV_STREAM_* must match MHD_CONTENT_READER_*");

static enum MHD_Result mhd_rc(enum srv_http_rc r) {
    return r == SRV_HTTP_OK ? MHD_YES : MHD_NO;
}

static enum srv_http_rc http_rc(enum MHD_Result r) {
    return r == MHD_YES ? SRV_HTTP_OK : SRV_HTTP_CLOSE;
}

static void mhd_kick(struct srv *s);

/* ---- responses ---- */

/* CORS and X-Request-Id headers: every response of c carries them, and only this file adds
 * them. */
static void add_common_headers(struct srv_conn *c, struct MHD_Response *r) {
    if (c->origin[0] != '\0') {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", c->origin);
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "X-Request-Id");
        MHD_add_response_header(r, "Vary", "Origin");
    }
    if (c->request_id[0] != '\0') {
        MHD_add_response_header(r, "X-Request-Id", c->request_id);
    }
}

enum srv_http_rc srv_send(struct srv_conn *c, int status, const char *content_type,
                          const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)(uintptr_t)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return SRV_HTTP_CLOSE;
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
        const struct srv_route_def *rd = srv_route_get(c->route);
        if (rd != NULL) {
            char allow[32];
            snprintf(allow, sizeof(allow), "%s, OPTIONS", rd->method);
            MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
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
    return http_rc(ret);
}

enum srv_http_rc srv_send_error(struct srv_conn *c, const struct srv_error *e) {
    size_t len = 0;
    char *body = srv_error_body(e, &len);
    if (body == NULL) {
        return SRV_HTTP_CLOSE;
    }
    enum srv_http_rc ret = srv_send(c, e->status, "application/json", body, len);
    free(body);
    return ret;
}

enum srv_http_rc srv_send_http_error(struct srv_conn *c, int status, const char *msg) {
    struct srv_error e;
    srv_error_http(&e, status, "%s", msg);
    return srv_send_error(c, &e);
}

void srv_http_suspend(struct srv_conn *c) {
    MHD_suspend_connection(c->mc);
}

void srv_http_resume(struct srv_conn *c) {
    MHD_resume_connection(c->mc);
    mhd_kick(c->srv);
}

enum srv_http_rc srv_http_stream_begin(struct srv_conn *c, srv_stream_read_fn read,
                                       srv_stream_done_fn done, void *ud) {
    /* The reader and done callbacks have MHD's own signatures (and codes, asserted above). */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read, ud, done);
    if (r == NULL) {
        done(ud);
        return SRV_HTTP_CLOSE;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(c, r);
    c->status = 200;
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* not queued: this calls done(ud) */
    return http_rc(ret);
}

/* ---- connection tracking (DESIGN 4) ---- */

static struct srv_sock *sock_of(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

static void sock_set_phase(struct srv *s, struct srv_sock *k, enum srv_sock_phase ph) {
    if (k == NULL || k->phase == ph) {
        return;
    }
    if (!k->doomed) {
        s->n_socks_dispatched += (ph == SRV_SOCK_DISPATCHED) - (k->phase == SRV_SOCK_DISPATCHED);
    }
    k->phase = ph;
    k->t_phase = kc_now_s();
}

/* A warning for refused or closed connections, at most one line per 10 s (a flood must not
 * flood the log too); the count of the ones in between is in the next line and in /metrics. */
static void refusal_warn(struct srv *s, const char *what, const char *addr) {
    double now = kc_now_s();
    if (now - s->t_refusal_warn < 10.0) {
        s->refusals_unlogged++;
        return;
    }
    KC_WARN("%s (client %s; %llu more since the last such warning; see "
            "http_connections_closed_total in /metrics)",
            what, addr, (unsigned long long)s->refusals_unlogged);
    s->t_refusal_warn = now;
    s->refusals_unlogged = 0;
}

/* Closes a connection through MHD: shutdown() makes it see EOF at its next run (no close(),
 * so no fd reuse race). */
static void sock_doom(struct srv *s, struct srv_sock *k, enum srv_conn_close_reason why) {
    if (k->doomed) {
        return;
    }
    (void)shutdown(k->fd, SHUT_RDWR);
    k->doomed = true;
    s->n_socks_live--;
    if (k->phase == SRV_SOCK_DISPATCHED) {
        s->n_socks_dispatched--;
    }
    s->metrics.conn_closed[why]++;
    static const char *const what[SRV_CLOSE_COUNT] = {
        "closed a connection that sent no whole request head in time",
        "closed a connection whose request body did not complete in time",
        "closed the longest-waiting idle or slow connection to make room (--max-connections)",
        "refused a connection over --max-connections-per-ip", "refused a connection: busy"};
    refusal_warn(s, what[why], k->addr);
    mhd_kick(s);
}

/* The live connection without a running request that has waited longest, except skip. */
static struct srv_sock *oldest_waiting(struct srv *s, const struct srv_sock *skip) {
    struct srv_sock *best = NULL;
    for (struct srv_sock *k = s->socks; k != NULL; k = k->next) {
        if (k != skip && !k->doomed && k->phase != SRV_SOCK_DISPATCHED &&
            (best == NULL || k->t_phase < best->t_phase)) {
            best = k;
        }
    }
    return best;
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    struct srv *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct srv_sock *k = *socket_context;
        if (k == NULL) {
            return;
        }
        *socket_context = NULL;
        if (!k->doomed) {
            s->n_socks_live--;
            if (k->phase == SRV_SOCK_DISPATCHED) {
                s->n_socks_dispatched--;
            }
        }
        if (k->prev != NULL) {
            k->prev->next = k->next;
        } else {
            s->socks = k->next;
        }
        if (k->next != NULL) {
            k->next->prev = k->prev;
        } else {
            s->socks_tail = k->prev;
        }
        free(k);
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_STARTED) {
        return;
    }
    struct srv_sock *k = calloc(1, sizeof(*k));
    const union MHD_ConnectionInfo *fi =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (k == NULL || fi == NULL) {
        free(k);
        return; /* untracked: MHD's own inactivity timeout still applies */
    }
    k->fd = fi->connect_fd;
    k->phase = SRV_SOCK_HEAD;
    k->t_phase = kc_now_s();
    snprintf(k->addr, sizeof(k->addr), "-");
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ai != NULL && ai->client_addr != NULL) {
        const struct sockaddr *sa = ai->client_addr;
        if (sa->sa_family == AF_INET) {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, k->addr,
                      sizeof(k->addr));
        } else if (sa->sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                      k->addr, sizeof(k->addr));
        }
    }
    int limit_ip = s->cfg.max_connections_per_ip;
    if (limit_ip > 0) {
        int same = 0;
        for (struct srv_sock *o = s->socks; o != NULL; o = o->next) {
            same += !o->doomed && strcmp(o->addr, k->addr) == 0;
        }
        k->over_ip = same >= limit_ip;
    }
    k->prev = s->socks_tail;
    if (s->socks_tail != NULL) {
        s->socks_tail->next = k;
    } else {
        s->socks = k;
    }
    s->socks_tail = k;
    s->n_socks_live++;
    *socket_context = k;
    if (s->n_socks_live > s->cfg.max_connections && !k->over_ip) {
        struct srv_sock *victim = oldest_waiting(s, k);
        if (victim != NULL) {
            sock_doom(s, victim, SRV_CLOSE_EVICTED);
        } else {
            k->over_cap = true;
        }
    }
}

/* conn_timer: the head and body deadlines. */
static void on_conn_timer(uv_timer_t *t) {
    struct srv *s = t->data;
    const double now = kc_now_s();
    for (struct srv_sock *k = s->socks; k != NULL; k = k->next) {
        if (k->doomed) {
            continue;
        }
        if (k->phase == SRV_SOCK_HEAD && now - k->t_phase > s->cfg.header_timeout_s) {
            sock_doom(s, k, SRV_CLOSE_HEADER_TIMEOUT);
        } else if (k->phase == SRV_SOCK_BODY && now - k->t_phase > s->cfg.body_timeout_s) {
            sock_doom(s, k, SRV_CLOSE_BODY_TIMEOUT);
        }
    }
}

enum srv_peer srv_http_peer_check(struct srv_conn *c, bool response_started) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL) {
        return SRV_PEER_ALIVE;
    }
    int st = srv_sock_peer_state(ci->connect_fd);
    if (st == SRV_SOCK_GONE) {
        return SRV_PEER_GONE;
    }
    if (st != SRV_SOCK_EOF) {
        return SRV_PEER_ALIVE;
    }
    /* FIN from the client: a half-close and a real close look the same until we write. A
     * closed peer answers the write with RST (POLLERR at the next check); a half-closed one
     * reads it. A stream writes anyway (tokens, heartbeats): one heartbeat now is enough. */
    if (response_started) {
        if (c->eof_probed) {
            return SRV_PEER_ALIVE;
        }
        c->eof_probed = true;
        return SRV_PEER_WANT_WRITE;
    }
    /* Before the response only an interim response may be written (RFC 9110 15.2: clients
     * must accept unexpected 1xx), and only to HTTP/1.1: an HTTP/1.0 request that half-closed
     * simply runs to its end. The probe repeats every heartbeat, so a client that half-closed
     * and then closed (`nc -N`, then Ctrl-C) is found gone within a heartbeat, too. */
    const double now = kc_now_s();
    if (!c->http11 || (c->eof_probed && now - c->t_probe < c->srv->cfg.heartbeat_ms / 1000.0)) {
        return SRV_PEER_ALIVE;
    }
    c->eof_probed = true;
    c->t_probe = now;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    return srv_sock_write_now(ci->connect_fd, cont, sizeof(cont) - 1) ? SRV_PEER_ALIVE
                                                                      : SRV_PEER_GONE;
}

/* ---- header checks (first call) ---- */

static const char *header(struct srv_conn *c, const char *name) {
    return MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, name);
}

/* Does the comma list `list` hold `item` (n bytes; spaces trimmed; nocase: compared
 * case-insensitively)? */
static bool list_has(const char *list, const char *item, size_t n, bool nocase) {
    const char *p = list;
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
        if (len == n && (nocase ? strncasecmp(p, item, n) : strncmp(p, item, n)) == 0) {
            return true;
        }
        if (comma == NULL) {
            break;
        }
        p = comma + 1;
    }
    return false;
}

/* DNS rebinding defence: a browser page on evil.example that resolves its name to 127.0.0.1
 * reaches a loopback server with `Host: evil.example`. So only the names in --allowed-hosts
 * are answered, by default (empty) the loopback names when bound to loopback; "*" turns the
 * check off. The port is ignored. */
static bool host_ok(struct srv_conn *c) {
    const char *allowed = c->srv->cfg.allowed_hosts;
    if (strcmp(allowed, "*") == 0 || (allowed[0] == '\0' && !c->srv->host_loopback)) {
        return true;
    }
    const char *h = header(c, MHD_HTTP_HEADER_HOST);
    if (h == NULL) {
        return true; /* HTTP/1.0 (MHD refuses HTTP/1.1 without Host); browsers always send it */
    }
    size_t n = strlen(h);
    const char *colon = strrchr(h, ':');
    const char *bracket = strchr(h, ']');
    if (colon != NULL && (bracket == NULL || bracket < colon)) {
        n = (size_t)(colon - h);
    }
    if (allowed[0] != '\0') {
        return list_has(allowed, h, n, true);
    }
    static const char *const ok[] = {"localhost", "127.0.0.1", "[::1]"};
    for (size_t i = 0; i < 3; i++) {
        if (strlen(ok[i]) == n && strncasecmp(h, ok[i], n) == 0) {
            return true;
        }
    }
    return n >= 4 && strncmp(h, "127.", 4) == 0 && strspn(h, "0123456789.") == n;
}

/* Framing headers, all of them (MHD_lookup_connection_value sees only the first). */
struct framing {
    int n_cl;
    int n_te;
    int n_host;
    bool cl_differ;
    bool bad;
    char cl[32];
    char why[96];
};

static bool name_is(const char *key, size_t n, const char *name) {
    return strlen(name) == n && strncasecmp(key, name, n) == 0;
}

static enum MHD_Result scan_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                    size_t key_size, const char *value, size_t value_size) {
    struct framing *f = cls;
    (void)kind;
    if (key == NULL) {
        return MHD_YES;
    }
    size_t n = key_size;
    bool ws = false;
    for (size_t i = 0; i < key_size; i++) {
        ws |= key[i] == ' ' || key[i] == '\t';
    }
    if (ws) {
        /* RFC 9112 5.1: whitespace between name and colon must be rejected; a proxy may read
         * "Transfer-Encoding :" as Transfer-Encoding while MHD 0.9.75 does not. */
        f->bad = true;
        snprintf(f->why, sizeof(f->why), "whitespace in a header name");
        return MHD_NO;
    }
    if (name_is(key, n, "Content-Length")) {
        if (value == NULL || value_size == 0 || value_size >= sizeof(f->cl) ||
            strspn(value, "0123456789") != value_size) {
            f->bad = true;
            snprintf(f->why, sizeof(f->why), "invalid Content-Length");
            return MHD_NO;
        }
        if (f->n_cl > 0 && strcmp(f->cl, value) != 0) {
            f->cl_differ = true;
        }
        snprintf(f->cl, sizeof(f->cl), "%s", value);
        f->n_cl++;
    } else if (name_is(key, n, "Host")) {
        f->n_host++;
    } else if (name_is(key, n, "Transfer-Encoding")) {
        f->n_te++;
        if (value == NULL || strcasecmp(value, "chunked") != 0) {
            f->bad = true;
            snprintf(f->why, sizeof(f->why), "Transfer-Encoding must be exactly 'chunked'");
            return MHD_NO;
        }
    }
    return MHD_YES;
}

/* NULL when the framing is unambiguous, else why not (RELIABILITY 3.4, request smuggling). */
static const char *framing_error(struct srv_conn *c, struct framing *f) {
    memset(f, 0, sizeof(*f));
    MHD_get_connection_values_n(c->mc, MHD_HEADER_KIND, scan_framing, f);
    if (f->bad) {
        return f->why;
    }
    if (f->cl_differ) {
        return "differing Content-Length headers";
    }
    if (f->n_te > 1) {
        return "more than one Transfer-Encoding header";
    }
    if (f->n_te > 0 && f->n_cl > 0) {
        return "Transfer-Encoding together with Content-Length";
    }
    if (f->n_host > 1) {
        return "more than one Host header"; /* RFC 9112 3.2: 400; the Host check reads one */
    }
    return NULL;
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
    const size_t n = strlen(origin);
    if (n < sizeof(c->origin) && list_has(allow, origin, n, false)) {
        memcpy(c->origin, origin, n + 1);
    }
}

/* Access-Control-Allow-Headers of a preflight: --cors-allow-headers when set, else the
 * headers the preflight asks for (only header-name characters, so nothing is injected). */
static const char *cors_allow_headers(struct srv_conn *c) {
    const char *conf = c->srv->cfg.cors_allow_headers;
    if (conf[0] != '\0') {
        return conf;
    }
    const char *req = header(c, "Access-Control-Request-Headers");
    static const char tchar[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                "!#$%&'*+-.^_`|~, ";
    if (req != NULL && req[0] != '\0' && strlen(req) <= 1024 && strspn(req, tchar) == strlen(req)) {
        return req;
    }
    return "Authorization, Content-Type";
}

static enum srv_http_rc preflight(struct srv_conn *c, const struct srv_route_def *rd) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return SRV_HTTP_CLOSE;
    }
    if (c->origin[0] != '\0') {
        char methods[32];
        snprintf(methods, sizeof(methods), "%s, OPTIONS", rd->method);
        MHD_add_response_header(r, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(r, "Access-Control-Allow-Headers", cors_allow_headers(c));
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    }
    add_common_headers(c, r);
    if (c->origin[0] != '\0') {
        MHD_add_response_header(r, "Vary", "Access-Control-Request-Headers");
    }
    c->status = 204;
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    return http_rc(ret);
}

/* X-Request-Id: the client's when it is a plain token of at most 64 bytes, else ours. */
static void request_id(struct srv_conn *c) {
    const char *h = header(c, "X-Request-Id");
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
    size_t n = h != NULL ? strlen(h) : 0;
    if (n > 0 && n <= 64 && strspn(h, ok) == n) {
        memcpy(c->request_id, h, n + 1);
        return;
    }
    uint64_t x = (c->srv->id_salt ^ (c->rid * 0x9e3779b97f4a7c15ULL)) * 0xbf58476d1ce4e5b9ULL;
    snprintf(c->request_id, sizeof(c->request_id), "req-%016llx",
             (unsigned long long)(x ^ (x >> 31)));
}

/* Printable ASCII copy for the access log (a URL may hold anything after unescaping). */
static void log_safe_copy(char *dst, size_t cap, const char *src) {
    size_t i = 0;
    for (; src != NULL && src[i] != '\0' && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char)ch : '?';
    }
    dst[i] = '\0';
}

/* The first call for a request: everything decidable from the headers (DESIGN 1). Returns
 * SRV_HTTP_OK with nothing queued to go on reading the body. */
static enum srv_http_rc first_call(struct srv_conn *c, const char *url, const char *method) {
    struct srv *s = c->srv;
    struct srv_sock *k = c->sock;
    if (k != NULL && (k->over_ip || k->over_cap)) {
        c->close = true;
        if (k->over_ip) {
            s->metrics.conn_closed[SRV_CLOSE_PER_IP]++;
            refusal_warn(s, "refused a request over --max-connections-per-ip", k->addr);
            return srv_send_http_error(c, 503, "Too many connections from this address");
        }
        s->metrics.conn_closed[SRV_CLOSE_CAPACITY]++;
        refusal_warn(s, "refused a request: every connection runs a request (--max-connections)",
                     k->addr);
        return srv_send_http_error(c, 503, "The server is busy; retry later.");
    }
    struct framing fr;
    const char *ferr = framing_error(c, &fr);
    if (ferr != NULL) {
        c->close = true;
        struct srv_error e;
        srv_error_http(&e, 400, "Ambiguous request framing: %s", ferr);
        return srv_send_error(c, &e);
    }
    if (!host_ok(c)) {
        return srv_send_http_error(c, 403, "Host header not allowed");
    }
    const char *cl = fr.n_cl > 0 ? fr.cl : NULL;
    const struct srv_route_def *rd = srv_route_find(url);
    if (rd == NULL) {
        return srv_send_http_error(c, 404, "Not found");
    }
    c->route = rd->route;
    cors_origin(c);
    if (strcmp(method, "OPTIONS") == 0) {
        return preflight(c, rd);
    }
    bool need_auth = rd->auth || (rd->route == SRV_ROUTE_METRICS && !s->cfg.metrics_public);
    if (need_auth && !auth_ok(c)) {
        /* Identical body for a missing and a wrong key (RELIABILITY D1). */
        return srv_send_http_error(c, 401, "Incorrect or missing API key.");
    }
    if (strcmp(method, rd->method) != 0) {
        return srv_send_http_error(c, 405, "Method not allowed");
    }
    if (s->state == SRV_LOADING && rd->route != SRV_ROUTE_HEALTH) {
        struct srv_error e;
        srv_error_kc(&e, KC_EBUSY, NULL, "The server is loading the model; retry shortly.");
        return srv_send_error(c, &e);
    }
    if (strcmp(rd->method, "POST") == 0) {
        const char *ct = header(c, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (ct != NULL && strncasecmp(ct, "application/json", 16) != 0 &&
            strstr(ct, "+json") == NULL) {
            return srv_send_http_error(c, 415, "Content-Type must be application/json");
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
    if ((rd->route == SRV_ROUTE_COMPLETIONS || rd->route == SRV_ROUTE_CHAT) &&
        s->state != SRV_SERVING) {
        struct srv_error e;
        srv_error_kc(&e, KC_EBUSY, NULL, "The server is shutting down.");
        return srv_send_error(c, &e);
    }
    return SRV_HTTP_OK;
}

static enum srv_http_rc dispatch(struct srv_conn *c) {
    c->dispatched = true;
    sock_set_phase(c->srv, c->sock, SRV_SOCK_DISPATCHED);
    return srv_route_run(c);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    struct srv *s = cls;
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
        c->sock = sock_of(mc);
        c->http11 = version != NULL && strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
        log_safe_copy(c->method, sizeof(c->method), method);
        log_safe_copy(c->path, sizeof(c->path), url);
        request_id(c);
        *con_cls = c;
        sock_set_phase(s, c->sock, SRV_SOCK_BODY);
        return mhd_rc(first_call(c, url, method));
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (c->too_big || c->body.len + n > (size_t)s->cfg.max_body_bytes) {
            /* A chunked body past the cap. No response may be queued in a call that carries
             * data, so the rest is discarded (no memory) and 413 goes out when the body ends;
             * --body-timeout-s bounds the time, this cap the bytes. */
            if (!c->too_big) {
                KC_INFO("req=%llu body over %ld bytes; discarding the rest, then 413",
                        (unsigned long long)c->rid, s->cfg.max_body_bytes);
                c->too_big = true;
                srv_buf_free(&c->body);
                memset(&c->body, 0, sizeof(c->body));
            }
            c->discarded += n;
            if (c->discarded > (size_t)s->cfg.max_body_bytes * 4 + (64u << 20)) {
                c->status = 413;
                return MHD_NO;
            }
            return MHD_YES;
        }
        return srv_buf_append(&c->body, upload_data, n) == KC_OK ? MHD_YES : MHD_NO;
    }
    if (c->too_big) {
        c->close = true;
        struct srv_error e;
        srv_error_http(&e, 413, "Request body larger than %ld bytes", s->cfg.max_body_bytes);
        c->too_big = false;
        c->dispatched = true;
        return mhd_rc(srv_send_error(c, &e));
    }
    if (!c->dispatched) {
        if ((c->route == SRV_ROUTE_COMPLETIONS || c->route == SRV_ROUTE_CHAT ||
             c->route == SRV_ROUTE_TOKENIZE) &&
            !c->yielded) {
            /* These routes suspend the connection: first let MHD leave its reading state
             * (DESIGN 5). It calls us again at its next run, without reading the socket. */
            c->yielded = true;
            mhd_kick(s);
            return MHD_YES;
        }
        return mhd_rc(dispatch(c));
    }
    return mhd_rc(srv_completions_resumed(c));
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
        c->log_gen_tokens = srv_completions_tokens(c->cmp);
        srv_completions_conn_closed(c->cmp, ok);
    }
    /* Keep-alive: the connection owes the next request head from now on. */
    sock_set_phase(s, c->sock, SRV_SOCK_HEAD);
    if (s->cfg.access_log) {
        const char *addr = c->sock != NULL ? c->sock->addr : "-";
        double total_ms = (kc_now_s() - c->t_start) * 1000.0;
        char fields[768];
        snprintf(fields, sizeof(fields),
                 "\"event\":\"access\",\"req\":%llu,\"method\":\"%s\",\"path\":\"%s\","
                 "\"status\":%d,\"client\":\"%s\",\"request_id\":\"%s\",\"completion_id\":\"%s\","
                 "\"prompt_tokens\":%d,\"gen_tokens\":%d,\"ttft_ms\":%.1f,\"total_ms\":%.1f,"
                 "\"aborted\":%s",
                 (unsigned long long)c->rid, c->method, c->path, c->status, addr, c->request_id,
                 c->cmpl_id, c->log_prompt_tokens, c->log_gen_tokens, c->log_ttft_ms, total_ms,
                 ok ? "false" : "true");
        KC_LOG_FIELDS(KC_LOG_INFO, fields,
                      "req=%llu %s %s status=%d client=%s request_id=%s completion_id=%s "
                      "prompt_tokens=%d gen_tokens=%d ttft_ms=%.1f total_ms=%.1f%s",
                      (unsigned long long)c->rid, c->method, c->path, c->status, addr,
                      c->request_id, c->cmpl_id[0] ? c->cmpl_id : "-", c->log_prompt_tokens,
                      c->log_gen_tokens, c->log_ttft_ms, total_ms, ok ? "" : " aborted");
    }
    srv_buf_free(&c->body);
    srv_buf_free(&c->pending_body);
    free(c);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    struct srv *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    /* MHD's own limit closes without an answer (DESIGN 4 keeps it out of reach); should it
     * still act, say so, rate-limited like our refusals. */
    if (strstr(msg, "connection limit") != NULL || strstr(msg, "resource limit") != NULL) {
        refusal_warn(s,
                     "libmicrohttpd closed a new connection without an answer (its own "
                     "connection limit)",
                     "-");
        return;
    }
    KC_DEBUG("libmicrohttpd: %s", msg);
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

/* Asks the loop to call MHD_run soon (after a resume). */
static void mhd_kick(struct srv *s) {
    if (s->mhd != NULL) {
        uv_timer_start(&s->mhd_timer, on_mhd_timer, 0, 0);
    }
}

/* Opens the listening socket ourselves rather than through MHD, so that a busy port or a
 * foreign address fails with the errno text ("Address already in use"), which MHD only
 * logs. Returns the fd or -1 with err set. */
static int listen_socket(const char *host, int port, int *bound_port, struct kc_error *err) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || res == NULL) {
        kc_error_set(err, KC_EINVAL, "--host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    /* Prefer IPv4 for names like localhost that resolve to both. */
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, pick->ai_addr, pick->ai_addrlen);
    const socklen_t len = pick->ai_addrlen;
    const int family = pick->ai_family;
    freeaddrinfo(res);
    if (family == AF_INET6) {
        ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)port);
    } else {
        ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)port);
    }
    const char *step = "socket";
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) {
        const int one = 1;
        /* SO_REUSEADDR (as MHD sets it): rebinding over TIME_WAIT, never two listeners. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        step = "bind";
        if (bind(fd, (struct sockaddr *)&ss, len) == 0) {
            step = "listen";
            if (listen(fd, SOMAXCONN) == 0) {
                step = NULL;
            }
        }
    }
    if (step != NULL) {
        const int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        kc_error_set(err, KC_EIO, "cannot listen on %s:%d: %s: %s", host, port, step, strerror(e));
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t glen = sizeof(got);
    memset(&got, 0, sizeof(got));
    getsockname(fd, (struct sockaddr *)&got, &glen);
    *bound_port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)(void *)&got)->sin6_port
                                           : ((struct sockaddr_in *)(void *)&got)->sin_port);
    return fd;
}

/* MHD's own connection limit: above --max-connections (DESIGN 4: ours acts first and answers;
 * MHD's closes silently), within the open-files limit (raised to its hard maximum when
 * needed). Epoll mode has no FD_SETSIZE bound. */
static unsigned int mhd_conn_limit(const struct srv *s) {
    long want = (long)s->cfg.max_connections + 64 + s->cfg.max_connections / 4;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        const long reserve = 64; /* model files, logs, epoll, eventfd, listen socket */
        if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < want + reserve) {
            struct rlimit up = rl;
            up.rlim_cur = rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max >= want + reserve
                              ? (rlim_t)(want + reserve)
                              : rl.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &up) == 0) {
                rl = up;
            }
        }
        if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur - reserve < want) {
            long fit = (long)rl.rlim_cur - reserve;
            KC_WARN("open-files limit %ld leaves room for %ld connections; --max-connections "
                    "is %d (raise `ulimit -n`)",
                    (long)rl.rlim_cur, fit, s->cfg.max_connections);
            want = fit > 8 ? fit : 8;
        }
    }
    return (unsigned int)want;
}

int srv_http_start(struct srv *s, struct kc_error *err) {
    int port = 0;
    const int fd = listen_socket(s->cfg.host, s->cfg.port, &port, err);
    if (fd < 0) {
        return err != NULL ? err->code : KC_EIO;
    }
    if (s->cfg.api_key_on_cmdline) {
        KC_WARN("the API key was given as --api-key: other local users can read it in the "
                "process list (ps, /proc); prefer --api-key-file FILE or KVCAST_API_KEY");
    }
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* MHD owns fd from here and closes it in MHD_stop_daemon. No
     * MHD_OPTION_PER_IP_CONNECTION_LIMIT: MHD would close silently; first_call answers 503
     * instead (DESIGN 4). */
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, mhd_conn_limit(s),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)s->cfg.connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)s->cfg.connection_memory_kib * 1024,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_END);
    if (s->mhd == NULL) {
        close(fd);
        return kc_error_set(err, KC_EIO, "libmicrohttpd could not start on %s:%d", s->cfg.host,
                            port);
    }
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (ei == NULL) {
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
        return kc_error_set(err, KC_EIO, "libmicrohttpd: no epoll fd");
    }
    s->port = port;
    uv_timer_init(&s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    uv_poll_init(&s->loop, &s->mhd_poll, ei->epoll_fd);
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_timer_init(&s->loop, &s->conn_timer);
    s->conn_timer.data = s;
    uint64_t every = (uint64_t)s->cfg.header_timeout_s * 1000 / 8;
    every = every < 50 ? 50 : every > 250 ? 250 : every;
    uv_timer_start(&s->conn_timer, on_conn_timer, every, every);
    s->conn_timer_on = true;
    mhd_kick(s);
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
    if (s->conn_timer_on) {
        uv_timer_stop(&s->conn_timer);
        uv_close((uv_handle_t *)&s->conn_timer, NULL);
        s->conn_timer_on = false;
    }
    MHD_stop_daemon(s->mhd); /* its connection notices free every srv_sock */
    s->mhd = NULL;
}
