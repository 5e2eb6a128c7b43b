/*
 * server_internal.h — state shared by the server's files: the process-wide `struct srv`
 * (loop, libmicrohttpd daemon, scheduler, models, metrics), one `struct srv_conn` per HTTP
 * request and one `struct srv_completion` per /v1/completions call.
 *
 * Place in the data flow:
 *   socket -> MHD (driven by the uv loop: uv_poll on MHD's epoll fd + uv_timer for its
 *   timeouts) -> http.c access handler (body, auth, routes) -> completions.c (validate,
 *   tokenize, sch_submit per choice) ... scheduler worker threads -> srv_on_event (copy into
 *   evq under ev_lock, uv_async_send) -> loop thread drains evq -> completions.c turns
 *   events into SSE chunks or the final JSON -> MHD content reader / resumed handler.
 *
 * DESIGN (invariants)
 *   1. Everything but `evq`/`ev_lock` belongs to the loop thread: MHD is called only there
 *      (MHD_run, suspend, resume, queue), so the `suspended` flags need no lock and a
 *      connection is resumed only when its flag says it is suspended.
 *   2. uv_async_send coalesces: the async callback always drains the whole evq.
 *   3. A completion lives until (a) every choice got its terminal scheduler event (the
 *      scheduler holds `user` pointers until then) and (b) MHD is done with its connection
 *      and response. srv_completion_maybe_free checks both.
 *   4. A suspended connection gets no MHD timeout and no disconnect detection, so the
 *      watchdog checks its socket every disconnect_check_ms (srv_http_peer_check: EOF alone
 *      is a half-close, not a gone client; a write then tells them apart); streams also get
 *      an SSE comment every heartbeat_ms. A gone client cancels its choices (finish ABORT).
 *      MHD itself must not read a suspended request's socket after the resume: it would take
 *      a half-close for the end (http.c DESIGN 5).
 *   6. Connections without a running request (idle keep-alive, head, body) are bounded in
 *      time and number by http.c (struct srv_sock, DESIGN 4 there).
 *   5. MHD_stop_daemon is never called with a suspended connection: shutdown resumes all.
 *
 * Request states (per srv_conn): HEADERS (first call) -> BODY (upload calls) -> DISPATCHED
 * (route ran; a response is queued, or a completion is running with the connection
 * suspended (non-stream) or streaming) -> COMPLETED (srv_request_completed frees it).
 */
#ifndef SRV_SERVER_INTERNAL_H
#define SRV_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <sys/types.h>

#include <uv.h>

#include "config/config.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "scheduler/scheduler.h"
#include "server/errors.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

/* How many unknown request field names are remembered (warned about once each). */
#define SRV_UNKNOWN_NAMES_MAX 64

/* libmicrohttpd's handles, opaque outside http.c. */
struct MHD_Daemon;
struct MHD_Connection;

enum srv_state { SRV_LOADING = 0, SRV_SERVING, SRV_DRAINING, SRV_STOPPING };

struct srv_completion;

/* Where a TCP connection is (http.c's slow-client defence). HEAD covers a fresh connection and
 * an idle keep-alive one alike: both owe us a request head. */
enum srv_sock_phase { SRV_SOCK_HEAD = 0, SRV_SOCK_BODY, SRV_SOCK_DISPATCHED };

/* One per TCP connection, from MHD's NOTIFY_CONNECTION STARTED to CLOSED (its socket_context).
 * Only the loop thread touches it. We never close() the fd: a deadline or an eviction calls
 * shutdown(), MHD then sees EOF and closes it, so the fd cannot be reused underneath us. */
struct srv_sock {
    struct srv_sock *prev;
    struct srv_sock *next;
    int fd;
    enum srv_sock_phase phase;
    double t_phase; /* when the current phase began (kc_now_s) */
    bool doomed;    /* shut down by us; MHD closes it at its next run */
    bool over_ip;   /* its request gets 503: over --max-connections-per-ip */
    bool over_cap;  /* its request gets 503: no waiting connection could be evicted */
    char addr[64];  /* client address (text), "-" when unknown */
};

/* The loaded models and what is read off them. The loader thread fills them (serve.c) and
 * owns them until load_done_cb; from then on they are read-only while serving: the loop
 * thread and the prepare jobs on the threadpool (which encode with tok) read them. */
struct srv_models {
    struct eng_kvp_bundle *bundle; /* when loaded from a bundle or --aux/--predictor */
    struct eng_model *base_owned;  /* when loaded from --model alone */
    const struct eng_model *base;  /* the bundle's base or base_owned */
    struct eng_tok *tok;           /* NULL: token-id prompts only, empty text out */
    struct eng_chat *chat;         /* the chat template; NULL: chat requests get a 400 */
    char chat_missing[1024];       /* why chat is NULL (the 400's message) */
    char id[CFG_STR_MAX];          /* the served model name ("model" of requests, /v1/models) */
    char root[CFG_PATH_MAX];       /* the base model's directory (/v1/models "root") */
    int max_model_len;             /* prompt + max_tokens limit (srv_max_context) */
};

struct srv {
    struct cfg_settings cfg;
    enum srv_state state;
    uv_loop_t loop;
    uv_poll_t mhd_poll;   /* MHD's epoll fd */
    uv_timer_t mhd_timer; /* MHD_get_timeout, and "run MHD again now" after a resume */
    uv_timer_t watchdog;  /* disconnect peeks, heartbeats, deadlines */
    uv_timer_t drain_timer;
    uv_async_t wake; /* scheduler events arrived */
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    int signals_seen;
    struct MHD_Daemon *mhd;
    int port;
    struct srv_models models;
    char *tok_buf; /* loop-thread scratch for eng_tok_stream_push (sized for models.tok) */
    size_t tok_buf_cap;
    struct srv_limits lim;
    struct sch *sch;
    /* scheduler -> loop thread; ev_lock guards evq, evq_len, evq_cap */
    pthread_mutex_t ev_lock;
    struct sch_event *evq;
    size_t evq_len;
    size_t evq_cap;
    /* loop-thread state */
    struct srv_completion *active; /* doubly-linked list of live completions */
    int n_active;
    struct srv_metrics metrics;
    uint64_t next_req;
    uint64_t id_salt;
    /* completions.c: prepare (parse + tokenize) jobs of big bodies waiting for a threadpool
     * slot, FIFO through srv_completion.prep_next; at most prep_max run at once */
    struct srv_completion *prep_wait_head;
    struct srv_completion *prep_wait_tail;
    int prep_running;
    int prep_max;
    /* completions.c: unknown request field names already warned about (bounded) */
    char unknown_names[SRV_UNKNOWN_NAMES_MAX][SRV_UNKNOWN_NAME_MAX];
    int n_unknown_names;
    /* connections (http.c): list in accept order; n_socks_live excludes doomed ones */
    struct srv_sock *socks;
    struct srv_sock *socks_tail;
    int n_socks_live;
    int n_socks_dispatched;
    uv_timer_t conn_timer; /* enforces --header-timeout-s / --body-timeout-s */
    bool conn_timer_on;
    double t_refusal_warn; /* rate limit of the "refused/evicted connections" warning */
    uint64_t refusals_unlogged;
    bool host_loopback; /* cfg.host resolves to loopback only (resolved once at start) */
    /* start-up (serve.c): models load on a libuv worker thread while the loop already answers
     * (/health 503 "loading"); the loader owns the model fields above until load_done runs. */
    uv_work_t load_req;
    int load_rc;
    struct kc_error load_err;
    atomic_int load_cancel; /* a signal arrived while loading: the loader stops early */
    double load_t0;
    char load_file[CFG_PATH_MAX + 64]; /* loader thread only: progress of this file */
    int load_next_pct;
    int exit_code;
};

/* The routes of routes.c; SRV_ROUTE_NONE: no route matched (404). */
enum srv_route {
    SRV_ROUTE_NONE = 0,
    SRV_ROUTE_HEALTH,
    SRV_ROUTE_READY,
    SRV_ROUTE_METRICS,
    SRV_ROUTE_MODELS,
    SRV_ROUTE_COMPLETIONS,
    SRV_ROUTE_CHAT,
    SRV_ROUTE_TOKENIZE,
    SRV_ROUTE_DETOKENIZE,
};

/* Per HTTP request (MHD's con_cls). */
struct srv_conn {
    struct srv *srv;
    struct MHD_Connection *mc;
    uint64_t rid;
    double t_start;
    enum srv_route route;
    bool dispatched;
    bool yielded; /* returned once without a response before a suspending route (http.c 5) */
    bool close;   /* answer with Connection: close (request smuggling attempts) */
    struct srv_buf body;
    int status; /* for the access log */
    int log_prompt_tokens;
    int log_gen_tokens;
    double log_ttft_ms;
    struct srv_completion *cmp;
    struct srv_sock *sock; /* NULL when MHD gave no socket context */
    bool http11;           /* the request is HTTP/1.1 (1xx interim responses allowed) */
    bool eof_probed;       /* the client half-closed; a probe was sent (srv_http_peer_check) */
    double t_probe;        /* when the last "100 Continue" probe went out (kc_now_s) */
    bool too_big;          /* body over --max-body-bytes: discard the rest, answer 413 */
    size_t discarded;
    char method[16];
    char path[96];
    char request_id[72]; /* X-Request-Id echoed back (the client's or ours) */
    char cmpl_id[48];    /* completion id for the access log, "" for none */
    /* non-stream completion result, queued when the handler runs after resume */
    struct srv_buf pending_body;
    int pending_status;
    bool pending_ready;
    char origin[256]; /* allowed CORS origin to echo, "" for none */
};

/* http.c — the only file that speaks libmicrohttpd (tests/check_layering.sh enforces it:
 * microhttpd.h is included nowhere else but version.c). The rest of the server answers
 * through this seam: queue a whole response, begin a stream, suspend and resume a
 * connection, and ask whether its client is still there. CORS and X-Request-Id headers are
 * added here to every response, so no route adds them itself. All loop thread. */
int srv_http_start(struct srv *s, struct kc_error *err);
void srv_http_stop(struct srv *s);

/* What a handler returns to http.c: SRV_HTTP_OK when a response is queued or the connection
 * was suspended to answer later (on a first call with nothing queued: go on reading the
 * body); SRV_HTTP_CLOSE to drop the connection without an answer (libmicrohttpd's MHD_NO). */
enum srv_http_rc { SRV_HTTP_CLOSE = 0, SRV_HTTP_OK = 1 };

/* Queues a JSON (or other) body with status and common headers; takes a copy of body. */
enum srv_http_rc srv_send(struct srv_conn *c, int status, const char *content_type,
                          const char *body, size_t len);
enum srv_http_rc srv_send_error(struct srv_conn *c, const struct srv_error *e);
/* An error body of the plain HTTP kind (srv_error_http) with status and msg. */
enum srv_http_rc srv_send_http_error(struct srv_conn *c, int status, const char *msg);

/* Suspends c's connection: libmicrohttpd neither calls the handler (or a stream's reader) nor
 * touches the socket until srv_http_resume. A suspended connection has no timeout: the
 * caller's watchdog checks it (srv_http_peer_check). */
void srv_http_suspend(struct srv_conn *c);
/* Resumes a connection suspended by srv_http_suspend and asks the loop to run MHD now: the
 * handler runs again (srv_completions_resumed) or the stream's reader is called again. */
void srv_http_resume(struct srv_conn *c);

/* A stream's reader: copies up to max bytes to buf and returns their count; returns
 * SRV_STREAM_END after the last byte, SRV_STREAM_ERROR to cut the connection, or 0 when it
 * has nothing now, and then it must have called srv_http_suspend (a reader that returns 0
 * without suspending would be polled in a busy loop). */
#define SRV_STREAM_END ((ssize_t)-1)
#define SRV_STREAM_ERROR ((ssize_t)-2)
typedef ssize_t (*srv_stream_read_fn)(void *ud, uint64_t pos, char *buf, size_t max);
/* Called once when the stream's response is gone (sent, cut, or never queued). */
typedef void (*srv_stream_done_fn)(void *ud);
/* Begins a 200 text/event-stream answer of unknown length (SSE: no caching, no proxy
 * buffering) whose bytes come from read(ud, ...). done(ud) is called exactly once, also when
 * this fails (SRV_HTTP_CLOSE: no memory, or MHD refused the response). */
enum srv_http_rc srv_http_stream_begin(struct srv_conn *c, srv_stream_read_fn read,
                                       srv_stream_done_fn done, void *ud);

/* Watchdog check of a suspended connection's client. A half-closed client (it sent its
 * request, then shutdown(SHUT_WR), e.g. `nc -N`) is not gone: EOF alone never counts. After
 * EOF a write is arranged: for a response not yet started, an HTTP/1.1 "100 Continue"
 * interim response is written here, again every --heartbeat-ms; a peer that really closed
 * answers any write with RST, seen as gone at the next check. response_started: headers are
 * out (a stream), so the caller must write instead (SRV_PEER_WANT_WRITE, once: send a
 * heartbeat now; the stream's later writes keep probing). RST, POLLHUP or a TCP state other
 * than ESTABLISHED/CLOSE_WAIT: gone at once. */
enum srv_peer { SRV_PEER_ALIVE = 0, SRV_PEER_GONE, SRV_PEER_WANT_WRITE };
enum srv_peer srv_http_peer_check(struct srv_conn *c, bool response_started);

/* routes.c */
/* One row of the route table: the only method allowed besides OPTIONS, and whether the
 * route needs the API key when one is set (/metrics: http.c adds --metrics-public). */
struct srv_route_def {
    const char *path;
    enum srv_route route;
    const char *method;
    bool auth;
};
/* The table row for an exact path, or NULL (404). */
const struct srv_route_def *srv_route_find(const char *path);
/* The table row of a route, or NULL for SRV_ROUTE_NONE. */
const struct srv_route_def *srv_route_get(enum srv_route route);
/* Answers (or, for completions and tokenize, starts) a request that passed every check of
 * http.c's first call and whose body arrived: the handler of c->route. */
enum srv_http_rc srv_route_run(struct srv_conn *c);

/* completions.c */
enum srv_http_rc srv_completions_start(struct srv_conn *c);
/* POST /v1/chat/completions: parsed, rendered and tokenized on the threadpool, then served
 * like a completion. */
enum srv_http_rc srv_chat_start(struct srv_conn *c);
/* POST /tokenize, encoded on the threadpool like completion prompts. */
enum srv_http_rc srv_tokenize_start(struct srv_conn *c);
/* The handler ran again for a connection whose completion is attached. */
enum srv_http_rc srv_completions_resumed(struct srv_conn *c);
void srv_completions_on_event(struct srv *s, const struct sch_event *ev);
/* The HTTP request ended (toe: MHD's termination code). */
void srv_completions_conn_closed(struct srv_completion *cmp, bool ok);
/* Watchdog tick: heartbeats, deadlines, gone clients. */
void srv_completions_tick(struct srv *s);
/* Cancels every live choice (shutdown). */
void srv_completions_cancel_all(struct srv *s);
/* Resumes every suspended connection (before MHD_stop_daemon). */
void srv_completions_resume_all(struct srv *s);
/* Number of choices still waiting for their terminal event. */
int srv_completions_live(const struct srv *s);
/* Tokens generated so far over all choices (the access log of an aborted request). */
int srv_completions_tokens(const struct srv_completion *cmp);

/* chat.c */
/* Threadpool (the prepare job): renders a parsed chat request's messages with the model's
 * template into r->prompts[0].text. 400 naming "messages" for bad messages and for template
 * errors (raise_exception's message as is); 400 explaining how to give a template when the
 * model has none. Reads only what is immutable while serving (models). */
int srv_chat_render(const struct srv *s, struct srv_completion_req *r, struct srv_error *e);
/* Loader thread (serve.c): finds the template for the tokenizer at tok_path (--chat-template
 * overrides); a model without one, or with one that does not parse, still serves (chat gets a
 * 400 saying why), but a --chat-template that fails is an error. */
int srv_chat_load(struct srv *s, const char *tok_path, struct kc_error *err);

#endif /* SRV_SERVER_INTERNAL_H */
