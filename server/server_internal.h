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
 *      watchdog peeks at its socket every disconnect_check_ms; streams also get an SSE
 *      comment every heartbeat_ms. A gone client cancels its choices (finish ABORT).
 *   5. MHD_stop_daemon is never called with a suspended connection: shutdown resumes all.
 *
 * Request states (per srv_conn): HEADERS (first call) -> BODY (upload calls) -> DISPATCHED
 * (route ran; a response is queued, or a completion is running with the connection
 * suspended (non-stream) or streaming) -> COMPLETED (srv_request_completed frees it).
 */
#ifndef SRV_SERVER_INTERNAL_H
#define SRV_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>
#include <uv.h>

#include "config/config.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "scheduler/scheduler.h"
#include "server/errors.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/util.h"

enum srv_state { SRV_LOADING = 0, SRV_SERVING, SRV_DRAINING, SRV_STOPPING };

struct srv_completion;

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
    /* models */
    struct eng_kvp_bundle *bundle; /* when loaded from a bundle or --aux/--predictor */
    struct eng_model *base_owned;  /* when loaded from --model alone */
    const struct eng_model *base;
    struct eng_tok *tok; /* NULL: token-id prompts only, empty text out */
    char *tok_buf;       /* loop-thread scratch for eng_tok_stream_push */
    size_t tok_buf_cap;
    char model_id[CFG_STR_MAX];
    char model_root[CFG_PATH_MAX];
    int max_model_len;
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
};

/* Per HTTP request (MHD's con_cls). */
struct srv_conn {
    struct srv *srv;
    struct MHD_Connection *mc;
    uint64_t rid;
    double t_start;
    int route;
    bool dispatched;
    bool close; /* answer with Connection: close (request smuggling attempts) */
    struct srv_buf body;
    int status; /* for the access log */
    int log_prompt_tokens;
    int log_gen_tokens;
    double log_ttft_ms;
    struct srv_completion *cmp;
    /* non-stream completion result, queued when the handler runs after resume */
    struct srv_buf pending_body;
    int pending_status;
    bool pending_ready;
    char origin[256]; /* allowed CORS origin to echo, "" for none */
};

/* http.c */
int srv_http_start(struct srv *s, struct kc_error *err);
void srv_http_stop(struct srv *s);
/* Ask the loop to call MHD_run soon (after a resume). */
void srv_mhd_kick(struct srv *s);
/* Queues a JSON (or other) body with status and common headers; takes a copy of body. */
enum MHD_Result srv_send(struct srv_conn *c, int status, const char *content_type, const char *body,
                         size_t len);
enum MHD_Result srv_send_error(struct srv_conn *c, const struct srv_error *e);
void srv_resume(struct srv_completion *cmp);

/* completions.c */
enum MHD_Result srv_completions_start(struct srv_conn *c);
/* POST /tokenize, encoded on the threadpool like completion prompts. */
enum MHD_Result srv_tokenize_start(struct srv_conn *c);
/* The handler ran again for a connection whose completion is attached. */
enum MHD_Result srv_completions_resumed(struct srv_conn *c);
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

#endif /* SRV_SERVER_INTERNAL_H */
