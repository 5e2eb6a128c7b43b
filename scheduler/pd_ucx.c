/*
 * pd_ucx.c — the prefill/decode transport on UCX (API and threads in pd_ucx.h). The only file
 * that includes UCX (tests/check_layering.sh).
 *
 * DESIGN invariants:
 *  1. One progress thread drives the UCP worker (UCS_THREAD_MODE_SERIALIZED): every ucp_*
 *     call is made holding net.io, which the progress thread holds whenever it is not asleep
 *     in poll() or yielding. Another thread's sch_pd_net_send posts its frame itself when it
 *     gets net.io at once (trylock: it may hold its own locks, which callbacks take) and no
 *     command is queued (frames keep their order); otherwise it queues a command (net.lock)
 *     and wakes the progress thread through an eventfd that it polls together with the
 *     worker's event fd. Posting in place saves a thread wake-up on the path of every small
 *     frame (SUBMIT, FIRST: measured in docs/disaggregated.md). Everything else (receives,
 *     connects, closes, failures, every callback) stays on the progress thread; a failure of
 *     an in-place post is left to it (peer_err).
 *  2. net.lock guards the command queue, the connection table (ids, states) and the counters;
 *     a connection's receive buffer is touched by the progress thread alone, its endpoint
 *     under net.io. Lock order: net.io, then the callbacks' locks, then net.lock. Callbacks
 *     run on the progress thread with net.io held and net.lock not held.
 *  3. A connection reports KC_OK once (both HELLOs accepted) and one negative status once,
 *     then never again; a frame that fails to decode closes it (a peer we cannot parse is a
 *     peer we cannot trust for the next frame either).
 *  4. Receive buffering is bounded: bytes are appended and frames cut after every piece UCX
 *     hands over, and a header announcing more than sch_pd_max_payload fails the connection
 *     before anything is allocated for it.
 *
 * Wire choice: stream messages. UCP stream keeps per-endpoint byte order, which the frames
 * need anyway (FIRST before its KV chunks before the next request's), lets the receiver read
 * each header before it commits memory to the payload (invariant 4), and needs no tag space
 * shared between many decode hosts. Measured against tagged messages received straight into
 * the destination (tests/unit/bench_pd_wire.c: a TinyLlama-sized prompt's K/V, 23.1 MB f32, in
 * 16 MiB chunks, loopback, best of 8, two runs on the shared 2-core machine): with
 * UCX_TLS=tcp (what crosses hosts here) stream 52.0 / 33.8 ms, tag 64.0 / 24.6 ms: equal within
 * the noise, both ~0.5-0.9 GB/s; with UCX's default transports (shared memory on one host)
 * stream 2.9-3.8 ms, tag 12-13 ms. Tagged receives would save the receiver's one copy, which
 * on TCP is small next to the socket copies. RMA puts into registered decode-pool memory would
 * save it too, but need the pool's memory keys exchanged per block and pay off only on RDMA
 * transports; these machines have TCP only.
 *
 * Through this transport (tests/unit/test_scheduler_pd_ucx.c with KC_PD_BENCH=1, release build,
 * best of 10, the pattern written and checked byte by byte included): the 23.1 MB f32 K/V in
 * 67-86 ms, bf16 (11.5 MB) in 22-44 ms, on loopback with UCX's default transports and with
 * UCX_TLS=tcp alike. Two things made that: frame buffers are reused (PD_SPARE: fresh 16 MiB
 * buffers page-faulted for 240-440 ms) and the progress thread does not sleep while a send or a
 * receive is under way (UCX's TCP transport raises no new event for the rest of a large frame).
 */
#define _POSIX_C_SOURCE 200809L
#include "scheduler/pd_ucx.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

enum conn_state { CONN_CONNECTING = 0, CONN_UP, CONN_DEAD };

struct conn {
    uint64_t id;
    ucp_ep_h ep;
    enum conn_state state; /* net.lock */
    bool hello_got;        /* progress thread */
    uint8_t *rx;           /* progress thread: bytes received, not yet framed */
    size_t rx_len, rx_cap;
    void *close_req;       /* ucp_ep_close_nbx request in flight, or NULL */
    bool closed;           /* endpoint closed (or never opened): the slot can go */
    ucs_status_t peer_err; /* the endpoint's error, reported after its data is drained */
    bool peer_refused;     /* the peer's ERROR closed it: no ERROR back */
    uint64_t linger_ns;    /* refused: close at this kc_now_ns() (or when the peer goes), so that
                            * our ERROR reaches it first; 0: close at once */
};

enum cmd_type { CMD_SEND = 0, CMD_CONNECT, CMD_CLOSE };

struct cmd {
    enum cmd_type type;
    uint64_t conn;
    uint8_t *buf; /* CMD_SEND: the frame */
    size_t len, cap;
    struct sockaddr_storage addr; /* CMD_CONNECT */
    socklen_t addr_len;
    int msg_type; /* CMD_SEND: the frame's type and request (the debug trace) */
    uint64_t req_id;
    uint64_t t_queued; /* kc_now_ns() when queued */
    struct cmd *next;
};

struct send_item {
    struct sch_pd_net *net;
    uint8_t *buf;
    size_t len, cap;
};

/* Large frame buffers kept for reuse: a fresh multi-MiB buffer is a fresh mapping whose every
 * page faults on first write (glibc maps them and trims them back), which in these VMs cost
 * more than the copy itself (perf: a third of a 23 MB K/V transfer in page faults). */
#define PD_SPARE 8
#define PD_SPARE_MIN ((size_t)1 << 20)

struct sch_pd_net {
    struct sch_pd_net_params p;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_listener_h listener; /* prefill hosts */
    int port;                /* the listener's bound port */
    int worker_fd;           /* the worker's event fd */
    int wake_fd;             /* eventfd: commands queued, or stop */
    pthread_t thread;
    bool started;
    pthread_mutex_t io; /* held for every ucp_* call (invariant 1) */

    pthread_mutex_t lock; /* guards everything below (invariant 2) */
    struct cmd *cmd_head, *cmd_tail;
    struct conn **conns; /* [n_conns] */
    int n_conns, cap_conns;
    uint64_t next_id;
    bool stop;
    size_t queued_bytes; /* frames queued or in flight */
    struct {
        uint8_t *p;
        size_t cap;
    } spare[PD_SPARE]; /* frame buffers for reuse */
    int n_spare;
    uint64_t bytes_sent, bytes_received;
};

/* ---- helpers (progress thread unless said otherwise) ---- */

static void wake(struct sch_pd_net *n) {
    const uint64_t one = 1;
    ssize_t w;
    do {
        w = write(n->wake_fd, &one, sizeof(one));
    } while (w < 0 && errno == EINTR);
}

static struct conn *conn_find(struct sch_pd_net *n, uint64_t id) { /* net.lock held */
    for (int i = 0; i < n->n_conns; i++) {
        if (n->conns[i]->id == id) {
            return n->conns[i];
        }
    }
    return NULL;
}

static struct conn *conn_by_ep(struct sch_pd_net *n, ucp_ep_h ep) { /* net.lock held */
    for (int i = 0; i < n->n_conns; i++) {
        if (n->conns[i]->ep == ep && ep != NULL) {
            return n->conns[i];
        }
    }
    return NULL;
}

/* A new connection slot (net.lock held); NULL on ENOMEM. */
static struct conn *conn_add(struct sch_pd_net *n) {
    if (n->n_conns == n->cap_conns) {
        const int cap = n->cap_conns ? 2 * n->cap_conns : 8;
        struct conn **c = realloc(n->conns, (size_t)cap * sizeof(*c));
        if (c == NULL) {
            return NULL;
        }
        n->conns = c;
        n->cap_conns = cap;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->id = n->next_id++;
    n->conns[n->n_conns++] = c;
    return c;
}

/* Keeps a large frame buffer for the next frame, or frees it. */
static void buf_recycle(struct sch_pd_net *n, uint8_t *p, size_t cap) {
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&n->lock);
    if (cap >= PD_SPARE_MIN && n->n_spare < PD_SPARE) {
        n->spare[n->n_spare].p = p;
        n->spare[n->n_spare].cap = cap;
        n->n_spare++;
        p = NULL;
    }
    pthread_mutex_unlock(&n->lock);
    free(p);
}

static void send_done(struct sch_pd_net *n, struct send_item *it, bool ok) {
    pthread_mutex_lock(&n->lock);
    n->queued_bytes -= it->len;
    if (ok) {
        n->bytes_sent += it->len;
    }
    pthread_mutex_unlock(&n->lock);
    buf_recycle(n, it->buf, it->cap);
    free(it);
}

static void send_cb(void *request, ucs_status_t status, void *user_data) {
    struct send_item *it = user_data;
    send_done(it->net, it, status == UCS_OK);
    ucp_request_free(request);
}

/* Starts closing c's endpoint (forcefully: a failed peer cannot flush). */
static void ep_close(struct conn *c) {
    if (c->ep == NULL || c->close_req != NULL || c->closed) {
        c->closed = c->closed || c->ep == NULL;
        return;
    }
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_EP_CLOSE_FLAG_FORCE};
    void *req = ucp_ep_close_nbx(c->ep, &prm);
    if (UCS_PTR_IS_PTR(req)) {
        c->close_req = req;
    } else {
        c->closed = true;
    }
}

static void post_send(struct sch_pd_net *n, struct conn *c, uint8_t *buf, size_t len, size_t cap);
static int frame_of(struct sch_pd_net *n, const struct sch_pd_msg *m, uint8_t **buf, size_t *len,
                    size_t *cap);

/* How long a refused connection stays open for our ERROR to reach the peer. */
#define PD_LINGER_NS 2000000000ull
/* How long sch_pd_net_free waits for its endpoints' forced closes. */
#define PD_CLOSE_NS 2000000000ull

/* Marks c dead and reports status once (invariant 3). A refusal (a bad frame, another model,
 * a close asked for) first tells the peer why with a connection-level ERROR (req_id 0) and
 * lingers so that it arrives; a failed peer is closed at once. */
static void conn_fail(struct sch_pd_net *n, struct conn *c, int status, const char *why) {
    pthread_mutex_lock(&n->lock);
    const bool report = c->state != CONN_DEAD;
    c->state = CONN_DEAD;
    const bool refuse = report && status != KC_EIO && status != KC_ENOMEM && c->ep != NULL &&
                        c->peer_err == UCS_OK && !c->peer_refused;
    pthread_mutex_unlock(&n->lock);
    if (!report) {
        return;
    }
    KC_INFO("pd: connection %llu closed: %s", (unsigned long long)c->id, why);
    if (n->p.on_conn != NULL) {
        n->p.on_conn(n->p.ud, c->id, status, why);
    }
    if (refuse) {
        struct sch_pd_msg e = {.type = SCH_PD_ERROR};
        e.u.error.code = status < KC_EBACKEND || status > KC_EINVAL ? KC_EINVAL : status;
        size_t i = 0;
        for (; why[i] != '\0' && i < SCH_PD_MAX_ERROR_TEXT; i++) {
            const unsigned char ch = (unsigned char)why[i];
            e.u.error.text[i] = ch >= 0x20 && ch <= 0x7e ? (char)ch : '?';
        }
        e.u.error.text[i] = '\0';
        uint8_t *buf;
        size_t len, cap;
        if (frame_of(n, &e, &buf, &len, &cap) == KC_OK) {
            pthread_mutex_lock(&n->lock);
            n->queued_bytes += len;
            pthread_mutex_unlock(&n->lock);
            post_send(n, c, buf, len, cap);
            c->linger_ns = kc_now_ns() + PD_LINGER_NS;
        }
    }
    /* reap_conns closes the endpoint, outside any UCX callback and lock. */
}

/* UCX reports a failed endpoint: remember it; the progress loop drains what the peer sent
 * before it went (its HELLO may say why it left) and then fails the connection. */
static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status) {
    struct sch_pd_net *n = arg;
    pthread_mutex_lock(&n->lock);
    struct conn *c = conn_by_ep(n, ep);
    if (c != NULL && c->peer_err == UCS_OK) {
        c->peer_err = status;
    }
    pthread_mutex_unlock(&n->lock);
}

static void peer_err_check(struct sch_pd_net *n, struct conn *c) {
    if (c->peer_err != UCS_OK && c->state != CONN_DEAD) {
        char why[128];
        snprintf(why, sizeof(why), "peer failed: %s", ucs_status_string(c->peer_err));
        conn_fail(n, c, KC_EIO, why);
    }
}

/* Encodes m into a frame buffer (a spare one when there is one, the largest). */
static int frame_of(struct sch_pd_net *n, const struct sch_pd_msg *m, uint8_t **buf, size_t *len,
                    size_t *cap) {
    struct sch_pd_buf b = {0};
    if (m->type == SCH_PD_KV) {
        pthread_mutex_lock(&n->lock);
        int best = -1;
        for (int i = 0; i < n->n_spare; i++) {
            best = best < 0 || n->spare[i].cap > n->spare[best].cap ? i : best;
        }
        if (best >= 0) {
            b.p = n->spare[best].p;
            b.cap = n->spare[best].cap;
            n->spare[best] = n->spare[--n->n_spare];
        }
        pthread_mutex_unlock(&n->lock);
    }
    const int rc = sch_pd_msg_encode(m, &b);
    if (rc != KC_OK) {
        buf_recycle(n, b.p, b.cap);
        return rc;
    }
    *buf = b.p;
    *len = b.len;
    *cap = b.cap;
    return KC_OK;
}

static void post_send(struct sch_pd_net *n, struct conn *c, uint8_t *buf, size_t len, size_t cap) {
    struct send_item *it = malloc(sizeof(*it));
    if (it == NULL) {
        pthread_mutex_lock(&n->lock);
        n->queued_bytes -= len;
        pthread_mutex_unlock(&n->lock);
        buf_recycle(n, buf, cap);
        conn_fail(n, c, KC_ENOMEM, "out of memory");
        return;
    }
    *it = (struct send_item){n, buf, len, cap};
    ucp_request_param_t prm = {.op_attr_mask =
                                   UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.send = send_cb,
                               .user_data = it};
    void *req = ucp_stream_send_nbx(c->ep, buf, len, &prm);
    if (req == NULL) {
        send_done(n, it, true);
    } else if (UCS_PTR_IS_ERR(req)) {
        send_done(n, it, false);
        char why[128];
        snprintf(why, sizeof(why), "send failed: %s", ucs_status_string(UCS_PTR_STATUS(req)));
        conn_fail(n, c, KC_EIO, why);
    }
}

/* Queues our HELLO on a new endpoint (the first frame each side sends). */
static void send_hello(struct sch_pd_net *n, struct conn *c) {
    struct sch_pd_msg h = {.type = SCH_PD_HELLO};
    h.u.hello.role = n->p.role;
    h.u.hello.shape = n->p.shape;
    uint8_t *buf;
    size_t len;
    size_t cap;
    if (frame_of(n, &h, &buf, &len, &cap) != KC_OK) {
        conn_fail(n, c, KC_ENOMEM, "out of memory");
        return;
    }
    pthread_mutex_lock(&n->lock);
    n->queued_bytes += len;
    pthread_mutex_unlock(&n->lock);
    post_send(n, c, buf, len, cap);
}

static int ep_open(struct sch_pd_net *n, ucp_ep_params_t *ep, struct conn *c) {
    ep->field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep->err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep->err_handler.cb = ep_err_cb;
    ep->err_handler.arg = n;
    ucp_ep_h h;
    const ucs_status_t st = ucp_ep_create(n->worker, ep, &h);
    if (st != UCS_OK) {
        char why[128];
        snprintf(why, sizeof(why), "cannot open an endpoint: %s", ucs_status_string(st));
        conn_fail(n, c, KC_EIO, why);
        return KC_EIO;
    }
    pthread_mutex_lock(&n->lock);
    c->ep = h;
    c->closed = false;
    pthread_mutex_unlock(&n->lock);
    send_hello(n, c);
    return KC_OK;
}

/* A decode host connects. While sch_pd_net_free runs (n->stop) the request is accepted and
 * closed at once rather than rejected: UCX's TCP connection manager can call a NULL notify
 * callback on its async thread for a rejected request whose client answers the reject
 * (openucx/ucx#11235, fixed upstream only after 1.13; a prefill host once crashed on
 * shutdown with a decode host reconnecting). The close loop in sch_pd_net_free reaps it like
 * any other connection. ucp_listener_reject is left for an out-of-memory slot only. */
static void conn_req_cb(ucp_conn_request_h req, void *arg) {
    struct sch_pd_net *n = arg;
    pthread_mutex_lock(&n->lock);
    const bool stopping = n->stop;
    struct conn *c = conn_add(n);
    pthread_mutex_unlock(&n->lock);
    if (c == NULL) {
        if (n->listener != NULL) { /* NULL: sch_pd_net_free destroyed it */
            ucp_listener_reject(n->listener, req);
        }
        return;
    }
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST, .conn_request = req};
    if (!stopping) {
        ep_open(n, &ep, c);
        return;
    }
    ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = ep_err_cb;
    ep.err_handler.arg = n;
    ucp_ep_h h = NULL;
    const ucs_status_t st = ucp_ep_create(n->worker, &ep, &h);
    pthread_mutex_lock(&n->lock);
    c->state = CONN_DEAD; /* no HELLO, no callback: reap_conns closes it */
    c->ep = st == UCS_OK ? h : NULL;
    c->closed = c->ep == NULL;
    pthread_mutex_unlock(&n->lock);
    KC_INFO("pd: connection %llu closed at once: this host is stopping", (unsigned long long)c->id);
}

/* Cuts whole frames off c's receive buffer and delivers them. */
static void rx_frames(struct sch_pd_net *n, struct conn *c) {
    size_t off = 0;
    while (c->state != CONN_DEAD && c->rx_len - off >= SCH_PD_HEADER_BYTES) {
        struct kc_error err = {0};
        struct sch_pd_header h;
        int rc = sch_pd_header_decode(c->rx + off, c->rx_len - off, &n->p.shape, &h, &err);
        if (rc != KC_OK) {
            conn_fail(n, c, rc, err.msg);
            return;
        }
        const size_t need = SCH_PD_HEADER_BYTES + (size_t)h.payload_len;
        if (c->rx_len - off < need) {
            break;
        }
        struct sch_pd_msg m;
        rc = sch_pd_msg_decode(c->rx + off, need, &n->p.shape, &m, &err);
        off += need;
        if (rc != KC_OK) {
            conn_fail(n, c, rc, err.msg);
            return;
        }
        pthread_mutex_lock(&n->lock);
        n->bytes_received += need;
        pthread_mutex_unlock(&n->lock);
        if (m.type == SCH_PD_ERROR && m.req_id == 0) {
            char why[SCH_PD_MAX_ERROR_TEXT + 64];
            snprintf(why, sizeof(why), "the peer refused the connection: %s", m.u.error.text);
            const int code = m.u.error.code;
            sch_pd_msg_free(&m);
            c->peer_refused = true;
            conn_fail(n, c, code, why);
            return;
        }
        if (!c->hello_got) {
            if (m.type != SCH_PD_HELLO || m.u.hello.role == n->p.role) {
                sch_pd_msg_free(&m);
                conn_fail(n, c, KC_EFORMAT,
                          "pd: the peer did not open with the HELLO of the other role");
                return;
            }
            c->hello_got = true;
            pthread_mutex_lock(&n->lock);
            c->state = CONN_UP;
            pthread_mutex_unlock(&n->lock);
            KC_INFO("pd: connection %llu up", (unsigned long long)c->id);
            if (n->p.on_conn != NULL) {
                n->p.on_conn(n->p.ud, c->id, KC_OK, "up");
            }
        } else if (m.type == SCH_PD_HELLO) {
            sch_pd_msg_free(&m);
            conn_fail(n, c, KC_EFORMAT, "pd: a second HELLO");
            return;
        } else if (n->p.on_msg != NULL) {
            KC_DEBUG("pd trace rx type=%d req=%llu len=%zu at_us=%llu", (int)m.type,
                     (unsigned long long)m.req_id, need, (unsigned long long)(kc_now_ns() / 1000));
            n->p.on_msg(n->p.ud, c->id, &m);
        }
        sch_pd_msg_free(&m);
    }
    if (off > 0) {
        memmove(c->rx, c->rx + off, c->rx_len - off);
        c->rx_len -= off;
    }
}

/* Drains what UCX has received on c; returns whether anything came. */
static bool rx_poll(struct sch_pd_net *n, struct conn *c) {
    bool got = false;
    while (c->state != CONN_DEAD && c->ep != NULL) {
        size_t len = 0;
        void *data = ucp_stream_recv_data_nb(c->ep, &len);
        if (data == NULL) {
            return got;
        }
        got = true;
        if (UCS_PTR_IS_ERR(data)) {
            char why[128];
            snprintf(why, sizeof(why), "receive failed: %s",
                     ucs_status_string(UCS_PTR_STATUS(data)));
            conn_fail(n, c, KC_EIO, why);
            return got;
        }
        if (c->rx_len + len > c->rx_cap) {
            size_t cap = c->rx_cap ? c->rx_cap : 4096;
            while (cap < c->rx_len + len) {
                cap *= 2;
            }
            uint8_t *p = realloc(c->rx, cap);
            if (p == NULL) {
                ucp_stream_data_release(c->ep, data);
                conn_fail(n, c, KC_ENOMEM, "out of memory");
                return got;
            }
            c->rx = p;
            c->rx_cap = cap;
        }
        memcpy(c->rx + c->rx_len, data, len);
        c->rx_len += len;
        ucp_stream_data_release(c->ep, data);
        rx_frames(n, c);
    }
    return got;
}

static void run_cmd(struct sch_pd_net *n, struct cmd *k) {
    pthread_mutex_lock(&n->lock);
    struct conn *c = conn_find(n, k->conn);
    const bool dead = c == NULL || c->state == CONN_DEAD;
    if (k->type == CMD_SEND && dead) {
        n->queued_bytes -= k->len;
    }
    pthread_mutex_unlock(&n->lock);
    switch (k->type) {
    case CMD_SEND:
        if (dead) {
            buf_recycle(n, k->buf, k->cap);
        } else {
            KC_DEBUG("pd trace post type=%d req=%llu len=%zu queued_us=%llu posted_us=%llu",
                     k->msg_type, (unsigned long long)k->req_id, k->len,
                     (unsigned long long)(k->t_queued / 1000),
                     (unsigned long long)(kc_now_ns() / 1000));
            post_send(n, c, k->buf, k->len, k->cap);
        }
        break;
    case CMD_CONNECT:
        if (!dead) {
            ucp_ep_params_t ep = {
                .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR,
                .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
                .sockaddr = {.addr = (const struct sockaddr *)&k->addr, .addrlen = k->addr_len},
            };
            ep_open(n, &ep, c);
        }
        break;
    case CMD_CLOSE:
        if (!dead) {
            conn_fail(n, c, KC_ECANCELED, "closed");
        }
        break;
    }
    free(k);
}

/* Closes the endpoints of dead connections and frees the slots whose endpoint has closed
 * (progress thread, outside UCX callbacks: a forced close completes pending sends, whose
 * callbacks take net.lock, so no lock is held across ep_close). */
static void reap_conns(struct sch_pd_net *n) {
    for (;;) {
        struct conn *to_close = NULL;
        pthread_mutex_lock(&n->lock);
        for (int i = 0; i < n->n_conns && to_close == NULL; i++) {
            struct conn *c = n->conns[i];
            if (c->state == CONN_DEAD && !c->closed && c->close_req == NULL &&
                (c->linger_ns == 0 || c->peer_err != UCS_OK || kc_now_ns() >= c->linger_ns)) {
                to_close = c;
            }
        }
        pthread_mutex_unlock(&n->lock);
        if (to_close == NULL) {
            break;
        }
        ep_close(to_close);
    }
    pthread_mutex_lock(&n->lock);
    for (int i = 0; i < n->n_conns; i++) {
        struct conn *c = n->conns[i];
        if (c->close_req != NULL && ucp_request_check_status(c->close_req) != UCS_INPROGRESS) {
            ucp_request_free(c->close_req);
            c->close_req = NULL;
            c->closed = true;
        }
        if (c->state == CONN_DEAD && c->closed) {
            free(c->rx);
            free(c);
            n->conns[i--] = n->conns[--n->n_conns];
        }
    }
    pthread_mutex_unlock(&n->lock);
}

static void *progress_main(void *arg) {
    struct sch_pd_net *n = arg;
    (void)prctl(PR_SET_NAME, (unsigned long)"kc-pd-ucx", 0UL, 0UL, 0UL); /* top -H, tests */
    struct conn **snap = NULL;
    int cap = 0;
    for (;;) {
        uint64_t v;
        while (read(n->wake_fd, &v, sizeof(v)) > 0) {
        }
        pthread_mutex_lock(&n->io);
        pthread_mutex_lock(&n->lock);
        const bool stop = n->stop;
        struct cmd *k = n->cmd_head;
        n->cmd_head = n->cmd_tail = NULL;
        pthread_mutex_unlock(&n->lock);
        while (k != NULL) {
            struct cmd *next = k->next;
            run_cmd(n, k);
            k = next;
        }
        if (stop) {
            pthread_mutex_unlock(&n->io);
            break;
        }
        while (ucp_worker_progress(n->worker) != 0) {
        }
        /* A snapshot of the table: callbacks may add connections while we poll. */
        pthread_mutex_lock(&n->lock);
        if (cap < n->n_conns) {
            struct conn **s = realloc(snap, (size_t)n->n_conns * sizeof(*s));
            if (s != NULL) {
                snap = s;
                cap = n->n_conns;
            }
        }
        const int m = n->n_conns < cap ? n->n_conns : cap;
        if (m > 0) {
            memcpy(snap, n->conns, (size_t)m * sizeof(*snap));
        }
        pthread_mutex_unlock(&n->lock);
        bool received = false;
        for (int i = 0; i < m; i++) {
            received |= rx_poll(n, snap[i]);
            peer_err_check(n, snap[i]);
        }
        reap_conns(n);
        /* Sends in flight progress only when the worker is progressed: UCX's TCP transport
         * raises no worker event when a socket can take the next fragment, so waiting in poll
         * would stall a large frame for the whole timeout (measured: 16 MiB K/V chunks took
         * ~100 ms each). Keep progressing, yielding the core, until they are out. */
        pthread_mutex_lock(&n->lock);
        const bool sending = n->queued_bytes > 0;
        pthread_mutex_unlock(&n->lock);
        /* Likewise a receive: the transport may hold more of a frame than one progress call
         * hands over, and the event that announced it has fired already. */
        if (received) {
            pthread_mutex_unlock(&n->io);
            continue;
        }
        if (sending) {
            pthread_mutex_unlock(&n->io); /* a sender may post in place meanwhile */
            sched_yield();
            continue;
        }
        const bool busy = ucp_worker_arm(n->worker) == UCS_ERR_BUSY;
        pthread_mutex_unlock(&n->io);
        if (busy) {
            continue;
        }
        /* A frame posted in place after the arm either completed at once or woke us (see
         * post_in_place). */
        struct pollfd fds[2] = {{n->worker_fd, POLLIN, 0}, {n->wake_fd, POLLIN, 0}};
        /* The timeout bounds the wait for close requests, which raise no event. */
        poll(fds, 2, 100);
    }
    free(snap);
    return NULL;
}

/* ---- API ---- */

static int resolve(const char *host, int port, bool passive, struct sockaddr_storage *addr,
                   socklen_t *len, struct kc_error *err);
static int net_listen(struct sch_pd_net *n, const char *host, int port, struct kc_error *err);

int sch_pd_net_create(const struct sch_pd_net_params *p, struct sch_pd_net **out,
                      struct kc_error *err) {
    struct sch_pd_net *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return kc_error_set(err, KC_ENOMEM, "pd: out of memory");
    }
    n->p = *p;
    if (n->p.max_queued_bytes == 0) {
        n->p.max_queued_bytes = (size_t)1 << 30;
    }
    n->next_id = 1;
    n->worker_fd = n->wake_fd = -1;
    pthread_mutex_init(&n->lock, NULL);
    pthread_mutex_init(&n->io, NULL);
    int rc = KC_EIO;
    ucp_config_t *config = NULL;
    ucs_status_t st = ucp_config_read(NULL, NULL, &config);
    if (st != UCS_OK) {
        kc_error_set(err, KC_EIO, "pd: UCX configuration: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                       .features = UCP_FEATURE_STREAM | UCP_FEATURE_WAKEUP};
    st = ucp_init(&up, config, &n->ctx);
    ucp_config_release(config);
    if (st != UCS_OK) {
        kc_error_set(err, KC_EIO, "pd: UCX init: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    st = ucp_worker_create(n->ctx, &wp, &n->worker);
    if (st != UCS_OK) {
        kc_error_set(err, KC_EIO, "pd: UCX worker: %s", ucs_status_string(st));
        goto fail;
    }
    st = ucp_worker_get_efd(n->worker, &n->worker_fd);
    if (st != UCS_OK) {
        kc_error_set(err, KC_EIO, "pd: UCX worker event fd: %s", ucs_status_string(st));
        goto fail;
    }
    n->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->wake_fd < 0) {
        kc_error_set(err, KC_EIO, "pd: eventfd: %s", strerror(errno));
        goto fail;
    }
    if (p->listen && (rc = net_listen(n, p->listen_host, p->listen_port, err)) != KC_OK) {
        goto fail;
    }
    rc = KC_EIO;
    if (pthread_create(&n->thread, NULL, progress_main, n) != 0) {
        kc_error_set(err, KC_EIO, "pd: cannot start the progress thread");
        goto fail;
    }
    n->started = true;
    *out = n;
    return KC_OK;
fail:
    sch_pd_net_free(n);
    return rc;
}

/* Resolves host:port into addr (host NULL/"": the wildcard, for listening). */
static int resolve(const char *host, int port, bool passive, struct sockaddr_storage *addr,
                   socklen_t *len, struct kc_error *err) {
    if (port < 0 || port > 65535) {
        return kc_error_set(err, KC_ERANGE, "pd: port %d out of range", port);
    }
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    struct addrinfo *res = NULL;
    const int g = getaddrinfo(host != NULL && host[0] != '\0' ? host : NULL, ps, &hints, &res);
    if (g != 0 || res == NULL) {
        return kc_error_set(err, KC_ENOTFOUND, "pd: cannot resolve %s: %s",
                            host != NULL ? host : "*", gai_strerror(g));
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return KC_OK;
}

/* Listens on host:port before the progress thread starts (invariant 1). */
static int net_listen(struct sch_pd_net *n, const char *host, int port, struct kc_error *err) {
    struct sockaddr_storage addr;
    socklen_t len;
    int rc = resolve(host, port, true, &addr, &len, err);
    if (rc != KC_OK) {
        return rc;
    }
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&addr, .addrlen = len},
        .conn_handler = {.cb = conn_req_cb, .arg = n},
    };
    ucs_status_t st = ucp_listener_create(n->worker, &lp, &n->listener);
    if (st != UCS_OK) {
        n->listener = NULL;
        return kc_error_set(err, KC_EIO, "pd: cannot listen on %s:%d: %s",
                            host != NULL && host[0] ? host : "*", port, ucs_status_string(st));
    }
    ucp_listener_attr_t attr = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    st = ucp_listener_query(n->listener, &attr);
    if (st != UCS_OK) {
        return kc_error_set(err, KC_EIO, "pd: listener query: %s", ucs_status_string(st));
    }
    const struct sockaddr *sa = (const struct sockaddr *)&attr.sockaddr;
    n->port = sa->sa_family == AF_INET6
                  ? ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port)
                  : ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    return KC_OK;
}

int sch_pd_net_port(const struct sch_pd_net *n) {
    return n->port;
}

static void push_cmd(struct sch_pd_net *n, struct cmd *k) { /* net.lock held */
    k->next = NULL;
    if (n->cmd_tail != NULL) {
        n->cmd_tail->next = k;
    } else {
        n->cmd_head = k;
    }
    n->cmd_tail = k;
}

int sch_pd_net_connect(struct sch_pd_net *n, const char *host, int port, uint64_t *conn,
                       struct kc_error *err) {
    struct cmd *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return kc_error_set(err, KC_ENOMEM, "pd: out of memory");
    }
    int rc = resolve(host, port, false, &k->addr, &k->addr_len, err);
    if (rc != KC_OK) {
        free(k);
        return rc;
    }
    k->type = CMD_CONNECT;
    pthread_mutex_lock(&n->lock);
    struct conn *c = conn_add(n);
    if (c == NULL) {
        pthread_mutex_unlock(&n->lock);
        free(k);
        return kc_error_set(err, KC_ENOMEM, "pd: out of memory");
    }
    c->closed = true; /* no endpoint yet: nothing to close until ep_open */
    k->conn = c->id;
    *conn = c->id;
    push_cmd(n, k);
    pthread_mutex_unlock(&n->lock);
    wake(n);
    return KC_OK;
}

/* Frames above this may be left half-written in the transport when posted in place: the
 * progress thread is woken to push them (UCX's TCP transport raises no event for the rest). */
#define PD_IN_PLACE_QUIET_BYTES ((size_t)64 << 10)

/* Posts k's frame on c from a thread other than the progress thread, net.io held (invariant 1).
 * Returns whether the progress thread must be woken: the send is still under way or large,
 * or it failed (the progress thread fails the connection: peer_err). */
static bool post_in_place(struct sch_pd_net *n, struct conn *c, struct cmd *k) {
    KC_DEBUG("pd trace post type=%d req=%llu len=%zu queued_us=%llu posted_us=%llu", k->msg_type,
             (unsigned long long)k->req_id, k->len, (unsigned long long)(k->t_queued / 1000),
             (unsigned long long)(kc_now_ns() / 1000));
    struct send_item *it = malloc(sizeof(*it));
    ucs_status_t st = UCS_ERR_NO_MEMORY;
    bool pending = false;
    if (it != NULL) {
        *it = (struct send_item){n, k->buf, k->len, k->cap};
        ucp_request_param_t prm = {.op_attr_mask =
                                       UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                                   .cb.send = send_cb,
                                   .user_data = it};
        void *req = ucp_stream_send_nbx(c->ep, k->buf, k->len, &prm);
        st = UCS_PTR_IS_ERR(req) ? UCS_PTR_STATUS(req) : UCS_OK;
        pending = req != NULL && st == UCS_OK;
        if (req == NULL) {
            send_done(n, it, true);
        } else if (st != UCS_OK) {
            send_done(n, it, false);
        }
    } else {
        pthread_mutex_lock(&n->lock);
        n->queued_bytes -= k->len;
        pthread_mutex_unlock(&n->lock);
        buf_recycle(n, k->buf, k->cap);
    }
    if (st != UCS_OK) {
        pthread_mutex_lock(&n->lock);
        if (c->peer_err == UCS_OK) {
            c->peer_err = st;
        }
        pthread_mutex_unlock(&n->lock);
    }
    return pending || st != UCS_OK || k->len > PD_IN_PLACE_QUIET_BYTES;
}

int sch_pd_net_send(struct sch_pd_net *n, uint64_t conn, const struct sch_pd_msg *m) {
    struct cmd *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return KC_ENOMEM;
    }
    int rc = frame_of(n, m, &k->buf, &k->len, &k->cap);
    if (rc != KC_OK) {
        free(k);
        return rc;
    }
    k->type = CMD_SEND;
    k->conn = conn;
    k->msg_type = (int)m->type;
    k->req_id = m->req_id;
    k->t_queued = kc_now_ns();
    /* In place when net.io is free now (invariant 1); never on the progress thread, whose
     * callbacks send while it holds net.io. */
    const bool io = (!n->started || !pthread_equal(pthread_self(), n->thread)) &&
                    pthread_mutex_trylock(&n->io) == 0;
    bool in_place = false, wake_up = true;
    pthread_mutex_lock(&n->lock);
    struct conn *c = conn_find(n, conn);
    if (c == NULL || c->state == CONN_DEAD) {
        rc = KC_ENOTFOUND;
    } else if (n->queued_bytes + k->len > n->p.max_queued_bytes) {
        rc = KC_EBUSY;
    } else {
        n->queued_bytes += k->len;
        /* Queued commands go first (frame order); so do connections not up yet. */
        in_place = io && n->started && !n->stop && n->cmd_head == NULL && c->state == CONN_UP &&
                   c->ep != NULL && c->peer_err == UCS_OK;
        if (!in_place) {
            push_cmd(n, k);
        }
    }
    pthread_mutex_unlock(&n->lock);
    if (in_place) {
        wake_up = post_in_place(n, c, k); /* c stays: slots are freed under net.io */
        free(k);
    }
    if (io) {
        pthread_mutex_unlock(&n->io);
    }
    if (rc != KC_OK) {
        buf_recycle(n, k->buf, k->cap);
        free(k);
        return rc;
    }
    if (wake_up) {
        wake(n);
    }
    return KC_OK;
}

void sch_pd_net_close(struct sch_pd_net *n, uint64_t conn) {
    struct cmd *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return; /* TODO: a close lost to ENOMEM leaves the peer to time out; no better option */
    }
    k->type = CMD_CLOSE;
    k->conn = conn;
    pthread_mutex_lock(&n->lock);
    push_cmd(n, k);
    pthread_mutex_unlock(&n->lock);
    wake(n);
}

void sch_pd_net_bytes(struct sch_pd_net *n, uint64_t *sent, uint64_t *received) {
    pthread_mutex_lock(&n->lock);
    *sent = n->bytes_sent;
    *received = n->bytes_received;
    pthread_mutex_unlock(&n->lock);
}

void sch_pd_net_free(struct sch_pd_net *n) {
    if (n == NULL) {
        return;
    }
    pthread_mutex_lock(&n->lock);
    n->stop = true; /* conn_req_cb rejects from now on */
    pthread_mutex_unlock(&n->lock);
    if (n->started) {
        wake(n);
        pthread_join(n->thread, NULL);
    }
    /* No progress thread now: this thread drives the worker (invariant 1; net.io against a
     * late sender, which sch__pd_stop's order rules out anyway). No callbacks. */
    pthread_mutex_lock(&n->io);
    n->p.on_conn = NULL;
    n->p.on_msg = NULL;
    for (struct cmd *k = n->cmd_head, *next; k != NULL; k = next) {
        next = k->next;
        free(k->buf);
        free(k);
    }
    /* Shutdown order (a prefill host crashed in ucp_worker_destroy when its decode host was
     * stopped at the same moment, its endpoint failing mid-close):
     *  - the listener stays until the closes are done: a connection request that arrives
     *    meanwhile is rejected through it (conn_req_cb; n->stop is set), never through a
     *    destroyed one;
     *  - the closes get a bounded time, not a spin count;
     *  - ucp_worker_destroy may still call ep_err_cb and send_cb for endpoints whose close has
     *    not completed: the connection table and the spare buffers they touch stay valid
     *    until it returns, and are freed after it. */
    for (int i = 0; i < n->n_conns; i++) {
        n->conns[i]->state = CONN_DEAD;
        n->conns[i]->linger_ns = 0;
        ep_close(n->conns[i]);
    }
    /* Let the forced closes (and the sends they cancel) complete. */
    const uint64_t close_deadline = kc_now_ns() + PD_CLOSE_NS;
    while (n->n_conns > 0 && n->worker != NULL && kc_now_ns() < close_deadline) {
        ucp_worker_progress(n->worker);
        reap_conns(n);
    }
    if (n->listener != NULL) {
        ucp_listener_destroy(n->listener);
        n->listener = NULL;
    }
    for (int i = 0; i < n->n_conns; i++) {
        struct conn *c = n->conns[i];
        if (c->close_req != NULL) {
            ucp_request_free(c->close_req); /* released by UCX when it completes */
            c->close_req = NULL;
        }
    }
    if (n->worker != NULL) {
        ucp_worker_destroy(n->worker);
        n->worker = NULL;
    }
    for (int i = 0; i < n->n_conns; i++) {
        free(n->conns[i]->rx);
        free(n->conns[i]);
    }
    free(n->conns);
    n->conns = NULL;
    n->n_conns = 0;
    for (int i = 0; i < n->n_spare; i++) {
        free(n->spare[i].p);
    }
    n->n_spare = 0;
    if (n->ctx != NULL) {
        ucp_cleanup(n->ctx);
    }
    if (n->wake_fd >= 0) {
        close(n->wake_fd);
    }
    pthread_mutex_unlock(&n->io);
    pthread_mutex_destroy(&n->io);
    pthread_mutex_destroy(&n->lock);
    free(n);
}
