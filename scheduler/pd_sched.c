/*
 * pd_sched.c — disaggregated serving in the scheduler (issue 20; docs/disaggregated.md): the
 * remote-prefill paths beside the local prefill workers. The local path is unchanged; this
 * file adds, behind the seam in sched_internal.h:
 *
 *  - prefill host: SUBMITs from decode hosts become requests in the ordinary wait queue
 *    (sch__submit_remote); the prefill worker runs them as any other, then, at the point where
 *    it would hand a local request to the decode worker, calls sch__pd_ship: FIRST (first
 *    token, its logprobs, the sampler's PRNG state, the load) and the prompt's K/V in chunks go
 *    to the decode host, and the request ends here (its blocks go back to the pool). CANCEL
 *    and a lost decode host cancel its requests.
 *  - decode host: no prefill workers; a dispatcher thread admits the head of the wait queue
 *    into this host's own pool (sch__remote_admit: same FIFO and block reservation as local
 *    prefill), picks a prefill host (fewest queued + in flight by the last load report, at most
 *    pd_max_inflight each) and sends SUBMIT. FIRST is emitted as the first token; KV chunks are
 *    written into the reserved blocks; when all bytes are in, the request is handed to the
 *    decode worker exactly as a local prefill would (sch__remote_handoff).
 *
 * DESIGN invariants:
 *  1. Lock order: pd.lock, then sch.lock (taken inside the sch__remote_* calls). pd.lock guards
 *     the peers, the pending list (decode), the served list (prefill) and the counters. A
 *     pending request's blocks are written only while it is on the pending list and pd.lock is
 *     held, so whoever takes it off the list (completion, cancel, timeout, peer loss) owns it.
 *  2. A remote prefill is retried at most once, on another prefill host, and only before its
 *     FIRST arrived (after it, the client has seen a token): else it fails with KC_EBUSY (the
 *     server answers 503) or, mid-transfer, KC_EIO. Its blocks go back either way.
 *  3. Peers are addresses: every name of --prefill-peers is resolved every pd_resolve_ms, on
 *     a resolver thread so that a slow DNS never holds up the dispatcher (a Kubernetes
 *     headless Service lists one address per ready pod). An address that appears gets a
 *     connection; one that disappeared gets no new request while a listed peer is up (it
 *     drains), and once none of its requests is left and a listed peer is up, its connection
 *     is closed and its slot freed. A name that does not resolve at the moment leaves its
 *     peers as they were (a DNS outage must not drain the pool).
 *  4. Peer slots are indices (pending entries and the progress thread's callbacks refer to
 *     peers by index across unlocked stretches), so slots never move: a freed slot is reused.
 *     A slot is freed only when its conn is 0, and conn goes to 0 only on the progress thread
 *     (peer_down, after the connection's last callback) or when it never had one, so an index
 *     that a callback holds always still names its peer.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

#include "engine/io/dtype.h"
#include "engine/kv_cache.h"
#include "scheduler/pd_msg.h"
#include "scheduler/pd_ucx.h"
#include "scheduler/request.h"
#include "scheduler/sched_internal.h"

#define PD_RESOLVE_MS 5000 /* default of pd_resolve_ms */
#define PD_MAX_PEERS 64
#define PD_TICK_MS 20

struct pd_peer {
    char name[80]; /* the --prefill-peers entry it came from */
    char host[64]; /* numeric address; "" for a free slot (invariant 4) */
    int port;
    uint64_t conn; /* 0: none */
    bool up;
    bool seen;    /* in the last resolution; not seen: draining, picked no more */
    bool closing; /* drained: we closed its connection (not an error) */
    struct sch_pd_load load;
    int in_flight;
    uint64_t errors;
};

/* Decode host: a request prefilled remotely. */
struct pd_pending {
    struct sch_req *r;
    int peer; /* index in peers */
    uint64_t t_sent, t_last;
    bool got_first;
    uint64_t kv_got, kv_want;
    int n_kv_tokens;
    bool retried;
    struct pd_pending *next;
};

/* Prefill host: a decode host's request being served here. */
struct pd_served {
    uint64_t conn, peer_req, id;
    struct pd_served *next;
};

struct sch_pd {
    struct sch *s;
    enum sch_role role;
    struct sch_pd_shape shape;
    int max_inflight;
    uint64_t timeout_ns;
    struct sch_pd_net *net;
    size_t kvd;           /* Hkv * D */
    float *row_k, *row_v; /* [kvd] conversion rows: pd.lock (decode: progress thread) */

    pthread_mutex_t lock; /* invariant 1 */
    pthread_cond_t cv;    /* dispatcher: a peer changed, stop */
    struct pd_peer peers[PD_MAX_PEERS];
    int n_peers;
    char names[1024]; /* --prefill-peers */
    uint64_t resolved_ns;
    uint64_t resolve_ns; /* --pd-resolve-ms */
    pthread_t resolver;  /* decode: resolve_main */
    bool resolver_started;
    struct pd_pending *pending;
    struct pd_served *served;
    int n_served;
    bool stop;
    pthread_t thread;
    bool started;
    uint64_t transfers, retries, failures;
    double transfer_s;
    uint64_t firsts;         /* FIRSTs of requests sent once (sch_stats.pd_firsts) */
    double first_overhead_s; /* their SUBMIT -> FIRST less the remote prefill time */
};

/* ---- shared ---- */

static struct sch_pd_load load_now(struct sch_pd *pd) {
    struct sch_stats st;
    sch_stats_get(pd->s, &st);
    pthread_mutex_lock(&pd->lock);
    const int served = pd->n_served;
    pthread_mutex_unlock(&pd->lock);
    return (struct sch_pd_load){(uint32_t)st.queued, (uint32_t)served,
                                (uint32_t)st.base_blocks_free, (uint32_t)st.base_blocks_total};
}

/* ---- prefill host ---- */

static void send_error(struct sch_pd *pd, uint64_t conn, uint64_t peer_req, int code,
                       bool retryable, const char *text) {
    struct sch_pd_msg e = {.type = SCH_PD_ERROR, .req_id = peer_req};
    e.u.error.load = load_now(pd);
    e.u.error.code = code < KC_EBACKEND || code > KC_EINVAL ? KC_EBACKEND : code;
    e.u.error.retryable = retryable;
    size_t i = 0;
    for (; text != NULL && text[i] != '\0' && i < SCH_PD_MAX_ERROR_TEXT; i++) {
        const unsigned char ch = (unsigned char)text[i];
        e.u.error.text[i] = ch >= 0x20 && ch <= 0x7e ? (char)ch : '?';
    }
    e.u.error.text[i] = '\0';
    (void)sch_pd_net_send(pd->net, conn, &e); /* a gone decode host needs no answer */
}

static void on_submit(struct sch_pd *pd, uint64_t conn, const struct sch_pd_msg *m) {
    const struct sch_pd_submit *q = &m->u.submit;
    struct sch_request_params p = {
        .prompt = q->prompt,
        .n_prompt = q->n_prompt,
        .max_tokens = q->max_tokens,
        .sampling = q->sampling,
        .ignore_eos = q->ignore_eos,
        .n_logprobs = q->n_logprobs,
        .mode = q->mode,
        .stop_token_ids = q->stop_token_ids,
        .n_stop_token_ids = q->n_stop_token_ids,
        .min_tokens = q->min_tokens,
        .logit_bias = q->logit_bias,
        .n_logit_bias = q->n_logit_bias,
        .refine = SCH_REFINE_OFF, /* the K/V leaves this host with the first token */
    };
    struct pd_served *sv = calloc(1, sizeof(*sv));
    if (sv == NULL) {
        send_error(pd, conn, m->req_id, KC_ENOMEM, true, "prefill host out of memory");
        return;
    }
    sv->conn = conn;
    sv->peer_req = m->req_id;
    /* Listed before the submit: its terminal event (even an immediate one) finds it. */
    pthread_mutex_lock(&pd->lock);
    sv->next = pd->served;
    pd->served = sv;
    pd->n_served++;
    pthread_mutex_unlock(&pd->lock);
    struct kc_error err = {0};
    uint64_t id = 0;
    const int rc = sch__submit_remote(pd->s, &p, conn, m->req_id, (int)q->wire_dtype, &id, &err);
    pthread_mutex_lock(&pd->lock);
    if (rc == KC_OK) {
        sv->id = id;
    } else {
        for (struct pd_served **pp = &pd->served; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == sv) {
                *pp = sv->next;
                pd->n_served--;
                free(sv);
                break;
            }
        }
    }
    pthread_mutex_unlock(&pd->lock);
    if (rc != KC_OK) {
        send_error(pd, conn, m->req_id, rc, rc == KC_EBUSY, err.msg);
    }
}

/* Cancels the requests of conn (peer_req 0: all of them). */
static void cancel_served(struct sch_pd *pd, uint64_t conn, uint64_t peer_req) {
    uint64_t ids[256];
    int n = 0;
    pthread_mutex_lock(&pd->lock);
    for (struct pd_served *sv = pd->served; sv != NULL && n < 256; sv = sv->next) {
        if (sv->conn == conn && (peer_req == 0 || sv->peer_req == peer_req) && sv->id != 0) {
            ids[n++] = sv->id;
        }
    }
    pthread_mutex_unlock(&pd->lock);
    for (int i = 0; i < n; i++) {
        sch_cancel(pd->s, ids[i], SCH_FINISH_ABORT);
    }
    /* A queued one went to the reap list: end it now (this host has no decode worker), not
     * after the prefill in flight. A running one ends within its prefill chunk. */
    sch__reap(pd->s);
}

/* Chunking of n_tok positions x L layers under SCH_PD_MAX_KV_CHUNK_BYTES: tok_per positions
 * of layers_per layers each. */
static void kv_chunking(const struct sch_pd_shape *sh, int n_tok, enum sch_pd_dtype d, int *tok_per,
                        int *layers_per, uint32_t *n_chunks) {
    const uint64_t row = sch_pd_kv_bytes(sh, 1, 1, d); /* one position of one layer, K+V */
    const uint64_t max_tok = SCH_PD_MAX_KV_CHUNK_BYTES / row;
    *tok_per = (uint64_t)n_tok <= max_tok ? n_tok : (int)max_tok;
    *layers_per = 1;
    if (*tok_per == n_tok && n_tok > 0) {
        const uint64_t per = SCH_PD_MAX_KV_CHUNK_BYTES / (row * (uint64_t)n_tok);
        *layers_per = per >= (uint64_t)sh->n_layers ? sh->n_layers : (int)per;
    }
    if (n_tok == 0) {
        *n_chunks = 0;
        return;
    }
    const uint32_t tok_chunks = (uint32_t)((n_tok + *tok_per - 1) / *tok_per);
    const uint32_t layer_chunks = (uint32_t)((sh->n_layers + *layers_per - 1) / *layers_per);
    *n_chunks = tok_chunks * layer_chunks;
}

static void put_row(void *dst, const float *src, size_t n, enum sch_pd_dtype d) {
    if (d == SCH_PD_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++) {
        h[i] = eng_f32_to_bf16(src[i]);
    }
}

static void get_row(float *dst, const void *src, size_t n, enum sch_pd_dtype d) {
    if (d == SCH_PD_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    const uint8_t *b = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, b + 2 * i, sizeof(h));
        dst[i] = eng_bf16_to_f32(h);
    }
}

void sch__pd_ship(struct sch_pd *pd, struct sch_req *r, enum sch_finish fin) {
    const enum sch_pd_dtype d = (enum sch_pd_dtype)r->pd_wire_dtype;
    const int n_kv = fin == SCH_FINISH_NONE ? r->seq.n_tokens : 0;
    struct sch_pd_msg f = {.type = SCH_PD_FIRST, .req_id = r->pd_peer_req};
    struct sch_pd_first *o = &f.u.first;
    o->load = load_now(pd);
    o->token = r->pd_first.token;
    o->finish = fin;
    o->mode_used = r->mode;
    o->has_logprob = r->pd_first.has_logprob;
    o->logprob = r->pd_first.has_logprob ? r->pd_first.logprob : 0.0f;
    o->n_top = r->pd_first.n_top;
    memcpy(o->top_ids, r->pd_first.top_ids, sizeof(o->top_ids));
    memcpy(o->top_logprobs, r->pd_first.top_logprobs, sizeof(o->top_logprobs));
    for (int i = o->n_top; i < SCH_MAX_LOGPROBS; i++) {
        o->top_ids[i] = 0;
        o->top_logprobs[i] = 0.0f;
    }
    o->n_prompt = r->n_prompt;
    o->cached_tokens = r->cached_tokens;
    o->aux_ms = (float)r->aux_ms;
    o->predict_ms = (float)r->predict_ms;
    o->base_first_step_ms = (float)r->base_first_step_ms;
    o->prefill_ms = (float)((double)(kc_now_ns() - r->t_state[SCH_REQ_PREFILLING]) / 1e6);
    o->rng[0] = r->sampler.rng[0];
    o->rng[1] = r->sampler.rng[1];
    o->wire_dtype = d;
    o->kv_shape =
        (struct sch_pd_shape){pd->shape.n_layers, pd->shape.n_kv_heads, pd->shape.head_dim, 0, 0};
    o->n_kv_tokens = n_kv;
    o->kv_bytes = sch_pd_kv_bytes(&pd->shape, pd->shape.n_layers, n_kv, d);
    KC_DEBUG("pd trace ship req=%llu peer_req=%llu queued_us=%llu prefilling_us=%llu "
             "ship_us=%llu",
             (unsigned long long)r->id, (unsigned long long)r->pd_peer_req,
             (unsigned long long)(r->t_state[SCH_REQ_QUEUED] / 1000),
             (unsigned long long)(r->t_state[SCH_REQ_PREFILLING] / 1000),
             (unsigned long long)(kc_now_ns() / 1000));
    int tok_per, layers_per;
    kv_chunking(&pd->shape, n_kv, d, &tok_per, &layers_per, &o->n_chunks);
    int rc = sch_pd_net_send(pd->net, r->pd_conn, &f);
    if (rc != KC_OK || n_kv == 0) {
        return; /* a gone decode host: nothing to ship to; the request ends anyway */
    }
    const struct eng_kv_pool *pool = sch__pool(pd->s);
    const size_t esz = sch_pd_dtype_size(d);
    const size_t kvd = pd->kvd;
    /* The largest chunk, not the bound: a small prompt's K/V touches a few pages only. */
    uint8_t *buf = malloc((size_t)sch_pd_kv_bytes(&pd->shape, layers_per, tok_per, d));
    float *k = malloc(2 * kvd * sizeof(float));
    if (buf == NULL || k == NULL) {
        free(buf);
        free(k);
        send_error(pd, r->pd_conn, r->pd_peer_req, KC_ENOMEM, true, "prefill host out of memory");
        return;
    }
    float *v = k + kvd;
    for (int t0 = 0; rc == KC_OK && t0 < n_kv; t0 += tok_per) {
        const int nt = n_kv - t0 < tok_per ? n_kv - t0 : tok_per;
        for (int l0 = 0; rc == KC_OK && l0 < pd->shape.n_layers; l0 += layers_per) {
            const int nl =
                pd->shape.n_layers - l0 < layers_per ? pd->shape.n_layers - l0 : layers_per;
            /* Per layer: K [nt, Hkv, D] then V [nt, Hkv, D]. */
            for (int l = 0; l < nl; l++) {
                uint8_t *kb = buf + (size_t)l * 2 * (size_t)nt * kvd * esz;
                uint8_t *vb = kb + (size_t)nt * kvd * esz;
                for (int t = 0; t < nt; t++) {
                    eng_kv_row_get(pool, &r->seq, l0 + l, t0 + t, k, v);
                    put_row(kb + (size_t)t * kvd * esz, k, kvd, d);
                    put_row(vb + (size_t)t * kvd * esz, v, kvd, d);
                }
            }
            struct sch_pd_msg c = {.type = SCH_PD_KV, .req_id = r->pd_peer_req};
            c.u.kv = (struct sch_pd_kv){
                l0, nl, t0, nt, d, buf, (size_t)sch_pd_kv_bytes(&pd->shape, nl, nt, d)};
            rc = sch_pd_net_send(pd->net, r->pd_conn, &c);
        }
    }
    free(buf);
    free(k);
}

void sch__pd_ended(struct sch_pd *pd, struct sch_req *r, const struct sch_event *ev) {
    bool found = false;
    pthread_mutex_lock(&pd->lock);
    for (struct pd_served **pp = &pd->served; *pp != NULL; pp = &(*pp)->next) {
        struct pd_served *sv = *pp;
        if (sv->conn == r->pd_conn && sv->peer_req == r->pd_peer_req) {
            *pp = sv->next;
            pd->n_served--;
            free(sv);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&pd->lock);
    /* Finished: FIRST went out (sch__pd_ship). Failed or cancelled before it: say so. */
    if (found && ev->type == SCH_EV_ERROR) {
        send_error(pd, r->pd_conn, r->pd_peer_req, ev->error, ev->error == KC_EBUSY, ev->message);
    } else if (found && ev->type == SCH_EV_DONE && r->n_generated == 0 && r->max_tokens > 0) {
        /* Cancelled here before its first token: by its decode host (which no longer waits
         * for it), or because this host is stopping (a rolling update): then the decode host
         * may retry it on another prefill host. */
        send_error(pd, r->pd_conn, r->pd_peer_req, KC_EBUSY, true,
                   "cancelled on the prefill host (stopping, or cancelled by the decode host)");
    }
}

/* ---- decode host ---- */

/* Takes r's pending entry off the list (pd.lock held); NULL if someone else did. */
static struct pd_pending *pending_take(struct sch_pd *pd, uint64_t req_id) {
    for (struct pd_pending **pp = &pd->pending; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->r->id == req_id) {
            struct pd_pending *e = *pp;
            *pp = e->next;
            if (e->peer >= 0 && e->peer < pd->n_peers) {
                pd->peers[e->peer].in_flight--;
            }
            return e;
        }
    }
    return NULL;
}

static struct pd_pending *pending_find(struct sch_pd *pd, uint64_t req_id) {
    for (struct pd_pending *e = pd->pending; e != NULL; e = e->next) {
        if (e->r->id == req_id) {
            return e;
        }
    }
    return NULL;
}

/* Whether a peer still listed by DNS is up (pd.lock held). */
static bool any_seen_up(const struct sch_pd *pd) {
    for (int i = 0; i < pd->n_peers; i++) {
        if (pd->peers[i].up && pd->peers[i].seen && !pd->peers[i].closing) {
            return true;
        }
    }
    return false;
}

/* The up peer with capacity and the fewest queued + in flight, not `avoid`; -1 if none
 * (pd.lock held). A peer that DNS no longer lists (draining, invariant 3) is picked only
 * while no listed one is up: a name moved to a new address keeps the old one serving until
 * the new one is connected. */
static int peer_pick(struct sch_pd *pd, int avoid) {
    int best = -1;
    long best_cost = 0;
    const bool listed_up = any_seen_up(pd);
    for (int i = 0; i < pd->n_peers; i++) {
        const struct pd_peer *p = &pd->peers[i];
        if (!p->up || p->closing || (listed_up && !p->seen) || i == avoid ||
            p->in_flight >= pd->max_inflight) {
            continue;
        }
        const long cost = (long)p->load.queued + p->in_flight;
        if (best < 0 || cost < best_cost) {
            best = i;
            best_cost = cost;
        }
    }
    return best;
}

static bool any_up(struct sch_pd *pd) {
    for (int i = 0; i < pd->n_peers; i++) {
        if (pd->peers[i].up) {
            return true;
        }
    }
    return false;
}

static int send_submit(struct sch_pd *pd, const struct pd_pending *e) {
    const struct sch_req *r = e->r;
    struct sch_pd_msg m = {.type = SCH_PD_SUBMIT, .req_id = r->id};
    struct sch_pd_submit *q = &m.u.submit;
    q->mode = r->requested_mode;
    q->wire_dtype =
        sch__pool(pd->s)->dtype == ENG_DTYPE_BF16 ? SCH_PD_DTYPE_BF16 : SCH_PD_DTYPE_F32;
    q->ignore_eos = r->ignore_eos;
    q->n_logprobs = r->n_logprobs;
    q->max_tokens = r->max_tokens;
    q->min_tokens = r->min_tokens;
    q->sampling = r->sampler.params;
    q->n_prompt = r->n_prompt;
    q->prompt = r->tokens;
    q->n_stop_token_ids = r->n_stop_token_ids;
    q->stop_token_ids = r->stop_token_ids;
    q->n_logit_bias = r->n_logit_bias;
    q->logit_bias = r->logit_bias;
    return sch_pd_net_send(pd->net, pd->peers[e->peer].conn, &m);
}

/* e is off the list: retry it once on another peer (invariant 2) or end it (pd.lock held;
 * returns the entry to end with *code set, or NULL when it went out again). */
static struct pd_pending *retry_or_fail(struct sch_pd *pd, struct pd_pending *e, int *code) {
    if (!e->got_first && !e->retried) {
        const int p = peer_pick(pd, e->peer);
        if (p >= 0) {
            e->retried = true;
            e->peer = p;
            e->t_last = kc_now_ns();
            if (send_submit(pd, e) == KC_OK) {
                pd->peers[p].in_flight++;
                e->next = pd->pending;
                pd->pending = e;
                pd->retries++;
                KC_INFO("req=%llu remote prefill retried on %s:%d", (unsigned long long)e->r->id,
                        pd->peers[p].host, pd->peers[p].port);
                return NULL;
            }
        }
    }
    *code = e->got_first ? KC_EIO : KC_EBUSY;
    pd->failures++;
    return e;
}

static void end_failed(struct sch_pd *pd, struct pd_pending *e, int code, const char *why) {
    char msg[256];
    snprintf(msg, sizeof(msg), "remote prefill failed: %s", why);
    KC_WARN("req=%llu %s", (unsigned long long)e->r->id, msg);
    sch__remote_end(pd->s, e->r, SCH_REQ_FAILED, SCH_FINISH_NONE, code, msg);
    free(e);
}

static void on_first(struct sch_pd *pd, int peer, const struct sch_pd_msg *m) {
    pthread_mutex_lock(&pd->lock);
    pd->peers[peer].load = m->u.first.load;
    struct pd_pending *e = pending_find(pd, m->req_id);
    if (e == NULL || e->peer != peer || e->got_first) {
        pthread_mutex_unlock(&pd->lock);
        return; /* cancelled or timed out meanwhile, or a late answer of a retried one */
    }
    const struct sch_pd_first *f = &m->u.first;
    if (f->n_prompt != e->r->n_prompt ||
        (f->finish == SCH_FINISH_NONE && f->n_kv_tokens != e->r->n_prompt)) {
        pending_take(pd, m->req_id);
        pd->peers[peer].errors++;
        int code;
        e = retry_or_fail(pd, e, &code);
        pthread_mutex_unlock(&pd->lock);
        if (e != NULL) {
            end_failed(pd, e, code, "the prefill host's FIRST does not match the request");
        }
        return;
    }
    e->got_first = true;
    e->t_last = kc_now_ns();
    if (!e->retried) {
        const double ov = (double)(e->t_last - e->t_sent) / 1e9 - (double)f->prefill_ms / 1e3;
        pd->firsts++;
        pd->first_overhead_s += ov > 0.0 ? ov : 0.0;
    }
    e->kv_want = f->kv_bytes;
    e->n_kv_tokens = f->n_kv_tokens;
    sch__remote_first(pd->s, e->r, f);
    KC_DEBUG("pd trace first req=%llu queued_us=%llu admitted_us=%llu sent_us=%llu "
             "first_us=%llu emitted_us=%llu prefill_ms=%.3f",
             (unsigned long long)e->r->id,
             (unsigned long long)(e->r->t_state[SCH_REQ_QUEUED] / 1000),
             (unsigned long long)(e->r->t_state[SCH_REQ_PREFILLING] / 1000),
             (unsigned long long)(e->t_sent / 1000), (unsigned long long)(e->t_last / 1000),
             (unsigned long long)(kc_now_ns() / 1000), (double)f->prefill_ms);
    if (f->finish != SCH_FINISH_NONE) {
        pending_take(pd, m->req_id);
        pthread_mutex_unlock(&pd->lock);
        sch__remote_end(pd->s, e->r, SCH_REQ_FINISHED, f->finish, 0, NULL);
        free(e);
        return;
    }
    pthread_mutex_unlock(&pd->lock);
}

static void on_kv(struct sch_pd *pd, int peer, const struct sch_pd_msg *m) {
    const struct sch_pd_kv *k = &m->u.kv;
    pthread_mutex_lock(&pd->lock);
    struct pd_pending *e = pending_find(pd, m->req_id);
    if (e == NULL || e->peer != peer) {
        pthread_mutex_unlock(&pd->lock);
        return;
    }
    if (!e->got_first || k->tok_first + k->n_tok > e->n_kv_tokens ||
        e->kv_got + k->data_bytes > e->kv_want) {
        pending_take(pd, m->req_id);
        pd->peers[peer].errors++;
        pd->failures++;
        pthread_mutex_unlock(&pd->lock);
        end_failed(pd, e, KC_EIO, "K/V chunk outside what FIRST announced");
        return;
    }
    /* Blocks of a pending request are ours while it is listed (invariant 1). */
    const struct eng_kv_pool *pool = sch__pool(pd->s);
    const size_t esz = sch_pd_dtype_size(k->dtype), kvd = pd->kvd;
    const uint8_t *d = k->data;
    for (int l = 0; l < k->n_layers; l++) {
        const uint8_t *kb = d + (size_t)l * 2 * (size_t)k->n_tok * kvd * esz;
        const uint8_t *vb = kb + (size_t)k->n_tok * kvd * esz;
        for (int t = 0; t < k->n_tok; t++) {
            get_row(pd->row_k, kb + (size_t)t * kvd * esz, kvd, k->dtype);
            get_row(pd->row_v, vb + (size_t)t * kvd * esz, kvd, k->dtype);
            eng_kv_row_put(pool, &e->r->seq, k->layer_first + l, k->tok_first + t, pd->row_k,
                           pd->row_v);
        }
    }
    e->kv_got += k->data_bytes;
    e->t_last = kc_now_ns();
    if (e->kv_got < e->kv_want) {
        pthread_mutex_unlock(&pd->lock);
        return;
    }
    pending_take(pd, m->req_id);
    pd->transfers++;
    pd->transfer_s += (double)(kc_now_ns() - e->t_sent) / 1e9;
    pthread_mutex_unlock(&pd->lock);
    sch__remote_handoff(pd->s, e->r, e->n_kv_tokens);
    free(e);
}

static void on_error(struct sch_pd *pd, int peer, const struct sch_pd_msg *m) {
    pthread_mutex_lock(&pd->lock);
    pd->peers[peer].load = m->u.error.load;
    pd->peers[peer].errors++;
    struct pd_pending *e = pending_find(pd, m->req_id);
    if (e == NULL || e->peer != peer) {
        pthread_mutex_unlock(&pd->lock);
        return;
    }
    pending_take(pd, m->req_id);
    int code = KC_EBUSY;
    if (m->u.error.retryable) {
        e = retry_or_fail(pd, e, &code);
    } else {
        pd->failures++;
        code = m->u.error.code;
    }
    pthread_mutex_unlock(&pd->lock);
    if (e != NULL) {
        end_failed(pd, e, code, m->u.error.text);
    }
}

/* A peer's connection went down: its requests are retried or fail (invariant 2). */
static void peer_down(struct sch_pd *pd, int peer, const char *why) {
    struct pd_pending *fail = NULL;
    int codes[1024];
    int n = 0;
    pthread_mutex_lock(&pd->lock);
    pd->peers[peer].up = false;
    pd->peers[peer].conn = 0; /* the slot may be freed from now on (invariant 4) */
    if (!pd->peers[peer].closing) {
        pd->peers[peer].errors++;
    }
    for (;;) {
        struct pd_pending *e = pd->pending;
        while (e != NULL && e->peer != peer) {
            e = e->next;
        }
        if (e == NULL || n == 1024) {
            break;
        }
        pending_take(pd, e->r->id);
        int code;
        e = retry_or_fail(pd, e, &code);
        if (e != NULL) {
            codes[n++] = code;
            e->next = fail;
            fail = e;
        }
    }
    pthread_cond_broadcast(&pd->cv);
    pthread_mutex_unlock(&pd->lock);
    for (int i = n - 1; fail != NULL; i--) {
        struct pd_pending *next = fail->next;
        end_failed(pd, fail, codes[i], why);
        fail = next;
    }
}

static int peer_of_conn(struct sch_pd *pd, uint64_t conn) { /* pd.lock held */
    for (int i = 0; i < pd->n_peers; i++) {
        if (pd->peers[i].conn == conn && conn != 0) {
            return i;
        }
    }
    return -1;
}

/* ---- net callbacks (progress thread) ---- */

static void on_msg(void *ud, uint64_t conn, const struct sch_pd_msg *m) {
    struct sch_pd *pd = ud;
    if (pd->role == SCH_ROLE_PREFILL) {
        if (m->type == SCH_PD_SUBMIT) {
            on_submit(pd, conn, m);
        } else if (m->type == SCH_PD_CANCEL) {
            cancel_served(pd, conn, m->req_id);
        }
        return;
    }
    pthread_mutex_lock(&pd->lock);
    const int peer = peer_of_conn(pd, conn);
    if (peer >= 0 && m->type == SCH_PD_LOAD) {
        pd->peers[peer].load = m->u.load;
    }
    pthread_mutex_unlock(&pd->lock);
    if (peer < 0) {
        return;
    }
    if (m->type == SCH_PD_FIRST) {
        on_first(pd, peer, m);
    } else if (m->type == SCH_PD_KV) {
        on_kv(pd, peer, m);
    } else if (m->type == SCH_PD_ERROR) {
        on_error(pd, peer, m);
    }
}

static void on_conn(void *ud, uint64_t conn, int status, const char *why) {
    struct sch_pd *pd = ud;
    if (pd->role == SCH_ROLE_PREFILL) {
        if (status != KC_OK) {
            cancel_served(pd, conn, 0); /* a lost decode host: free everything for it */
        }
        return;
    }
    pthread_mutex_lock(&pd->lock);
    const int peer = peer_of_conn(pd, conn);
    if (peer >= 0 && status == KC_OK) {
        pd->peers[peer].up = true;
        pthread_cond_broadcast(&pd->cv);
    }
    const bool closing = peer >= 0 && pd->peers[peer].closing;
    pthread_mutex_unlock(&pd->lock);
    if (peer >= 0 && status != KC_OK) {
        if (closing) {
            KC_INFO("pd: prefill host %s:%d dropped (no longer in DNS)", pd->peers[peer].host,
                    pd->peers[peer].port);
        } else {
            KC_WARN("pd: prefill host %s:%d down: %s", pd->peers[peer].host, pd->peers[peer].port,
                    why);
        }
        peer_down(pd, peer, why);
    }
}

/* ---- decode host: peers and the dispatcher ---- */

/* Resolves every --prefill-peers name; connects new addresses, drains vanished ones and frees
 * their slots once drained (invariants 3, 4). Called without pd.lock, by sch__pd_create and
 * then by the resolver thread only. */
static void peers_refresh(struct sch_pd *pd) {
    struct {
        char name[80], host[64];
        int port;
    } found[PD_MAX_PEERS];
    int n = 0;
    char failed[PD_MAX_PEERS][80]; /* names that did not resolve this time */
    int n_failed = 0;
    char list[1024];
    snprintf(list, sizeof(list), "%s", pd->names);
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') {
            tok++;
        }
        char *colon = strrchr(tok, ':');
        if (colon == NULL) {
            continue; /* checked at create */
        }
        *colon = '\0';
        const char *port = colon + 1;
        const char *host = tok;
        char name[80];
        snprintf(name, sizeof(name), "%s:%s", tok, port);
        char h6[64];
        if (host[0] == '[') { /* [v6]:port */
            snprintf(h6, sizeof(h6), "%s", host + 1);
            char *rb = strchr(h6, ']');
            if (rb != NULL) {
                *rb = '\0';
            }
            host = h6;
        }
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        const int g = getaddrinfo(host, port, &hints, &res);
        if (g != 0) {
            /* Not resolvable now (NXDOMAIN included: a headless Service with no ready pod has
             * no record): its peers stay as they are until it is (invariant 3). */
            KC_DEBUG("pd: cannot resolve %s: %s", name, gai_strerror(g));
            if (n_failed < PD_MAX_PEERS) {
                snprintf(failed[n_failed++], sizeof(failed[0]), "%s", name);
            }
            continue;
        }
        for (struct addrinfo *a = res; a != NULL && n < PD_MAX_PEERS; a = a->ai_next) {
            char num[64];
            const void *src =
                a->ai_family == AF_INET6
                    ? (const void *)&((struct sockaddr_in6 *)(void *)a->ai_addr)->sin6_addr
                    : (const void *)&((struct sockaddr_in *)(void *)a->ai_addr)->sin_addr;
            if (inet_ntop(a->ai_family, src, num, sizeof(num)) == NULL) {
                continue;
            }
            bool dup = false;
            for (int i = 0; i < n; i++) {
                dup = dup || (strcmp(found[i].host, num) == 0 && found[i].port == atoi(port));
            }
            if (!dup) {
                snprintf(found[n].name, sizeof(found[n].name), "%s", name);
                snprintf(found[n].host, sizeof(found[n].host), "%s", num);
                found[n].port = atoi(port);
                n++;
            }
        }
        freeaddrinfo(res);
    }
    pthread_mutex_lock(&pd->lock);
    bool was_seen[PD_MAX_PEERS];
    for (int i = 0; i < pd->n_peers; i++) {
        struct pd_peer *p = &pd->peers[i];
        was_seen[i] = p->seen;
        bool keep = false;
        for (int f = 0; f < n_failed && !keep; f++) {
            keep = strcmp(p->name, failed[f]) == 0;
        }
        p->seen = keep && p->seen;
    }
    for (int j = 0; j < n; j++) {
        int i = 0, free_slot = -1;
        for (; i < pd->n_peers; i++) {
            const struct pd_peer *p = &pd->peers[i];
            if (p->host[0] == '\0') {
                free_slot = free_slot < 0 ? i : free_slot;
            } else if (strcmp(p->host, found[j].host) == 0 && p->port == found[j].port) {
                break;
            }
        }
        if (i == pd->n_peers) { /* a new address: a free slot (invariant 4), else a new one */
            i = free_slot >= 0 ? free_slot : pd->n_peers < PD_MAX_PEERS ? pd->n_peers++ : -1;
            if (i < 0) {
                KC_WARN("pd: more than %d prefill peers; %s:%d ignored", PD_MAX_PEERS,
                        found[j].host, found[j].port);
                continue;
            }
            struct pd_peer *p = &pd->peers[i];
            memset(p, 0, sizeof(*p));
            snprintf(p->name, sizeof(p->name), "%s", found[j].name);
            snprintf(p->host, sizeof(p->host), "%s", found[j].host);
            p->port = found[j].port;
            KC_INFO("pd: prefill peer %s:%d (from %s) added", p->host, p->port, p->name);
            was_seen[i] = true;
        } else if (!was_seen[i]) {
            KC_INFO("pd: prefill peer %s:%d is back in %s", pd->peers[i].host, pd->peers[i].port,
                    found[j].name);
        }
        pd->peers[i].seen = true;
    }
    /* Vanished: drain, then close (not an error: on_conn sees closing) once a listed peer
     * is up to take its place, then free the slot once its conn is 0 (invariant 4) and no
     * pending request names it. */
    const bool listed_up = any_seen_up(pd);
    for (int i = 0; i < pd->n_peers; i++) {
        struct pd_peer *p = &pd->peers[i];
        if (p->host[0] == '\0' || p->seen) {
            continue;
        }
        int refs = 0;
        for (const struct pd_pending *e = pd->pending; e != NULL; e = e->next) {
            refs += e->peer == i;
        }
        if (refs > 0) {
            continue; /* draining: its requests finish (or fail over) as usual */
        }
        if (p->conn != 0) {
            if (!p->closing && listed_up) {
                KC_INFO("pd: prefill peer %s:%d no longer in %s: closing", p->host, p->port,
                        p->name);
                p->closing = true;
                sch_pd_net_close(pd->net, p->conn);
            }
            continue;
        }
        KC_INFO("pd: prefill peer %s:%d dropped", p->host, p->port);
        memset(p, 0, sizeof(*p));
    }
    while (pd->n_peers > 0 && pd->peers[pd->n_peers - 1].host[0] == '\0') {
        pd->n_peers--;
    }
    /* Connect the ones without a connection. */
    for (int i = 0; i < pd->n_peers; i++) {
        struct pd_peer *p = &pd->peers[i];
        if (p->conn == 0 && p->seen) {
            struct kc_error err = {0};
            uint64_t c = 0;
            p->closing = false;
            if (sch_pd_net_connect(pd->net, p->host, p->port, &c, &err) == KC_OK) {
                p->conn = c;
            } else {
                p->errors++;
            }
        }
    }
    pd->resolved_ns = kc_now_ns();
    pthread_mutex_unlock(&pd->lock);
}

/* Cancelled and timed-out remote prefills (dispatcher). */
static void pending_sweep(struct sch_pd *pd) {
    const uint64_t now = kc_now_ns();
    for (;;) {
        pthread_mutex_lock(&pd->lock);
        struct pd_pending *e = pd->pending;
        while (e != NULL && sch_req_cancelled(e->r) == SCH_FINISH_NONE &&
               now - e->t_last < pd->timeout_ns) {
            e = e->next;
        }
        if (e == NULL) {
            pthread_mutex_unlock(&pd->lock);
            return;
        }
        const bool cancelled = sch_req_cancelled(e->r) != SCH_FINISH_NONE;
        const int peer = e->peer;
        pending_take(pd, e->r->id);
        struct sch_pd_msg c = {.type = SCH_PD_CANCEL, .req_id = e->r->id};
        c.u.cancel.finish = SCH_FINISH_ABORT;
        (void)sch_pd_net_send(pd->net, pd->peers[peer].conn, &c);
        int code = KC_EBUSY;
        if (!cancelled) {
            pd->peers[peer].errors++;
            KC_WARN("req=%llu remote prefill on %s:%d silent for %llu ms",
                    (unsigned long long)e->r->id, pd->peers[peer].host, pd->peers[peer].port,
                    (unsigned long long)(pd->timeout_ns / 1000000));
            e = retry_or_fail(pd, e, &code);
        }
        pthread_mutex_unlock(&pd->lock);
        if (e == NULL) {
            continue;
        }
        if (cancelled) {
            sch__remote_end(pd->s, e->r, SCH_REQ_CANCELLED, SCH_FINISH_ABORT, 0, NULL);
            free(e);
        } else {
            end_failed(pd, e, code, "the prefill host stalled");
        }
    }
}

/* Sends the admitted request r (PREFILLING, ours) to the prefill host with the most room and
 * lists it pending, or ends it: 503 when no host is reachable, cancelled when stopping. */
static void dispatch_one(struct sch_pd *pd, struct sch_req *r) {
    struct pd_pending *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        sch__remote_end(pd->s, r, SCH_REQ_FAILED, SCH_FINISH_NONE, KC_ENOMEM, "out of memory");
        return;
    }
    e->r = r;
    e->t_sent = e->t_last = kc_now_ns();
    pthread_mutex_lock(&pd->lock);
    if (pd->stop) { /* sch__pd_stop has swept the pending list: end it here */
        pthread_mutex_unlock(&pd->lock);
        sch__remote_end(pd->s, r, SCH_REQ_CANCELLED, SCH_FINISH_ABORT, 0, NULL);
        free(e);
        return;
    }
    e->peer = peer_pick(pd, -1);
    if (e->peer < 0 || send_submit(pd, e) != KC_OK) {
        pd->failures++;
        pthread_mutex_unlock(&pd->lock);
        sch__remote_end(pd->s, r, SCH_REQ_FAILED, SCH_FINISH_NONE, KC_EBUSY,
                        "no prefill host is reachable");
        free(e);
        return;
    }
    pd->peers[e->peer].in_flight++;
    e->next = pd->pending;
    pd->pending = e;
    pthread_mutex_unlock(&pd->lock);
}

/* Decode host: peers_refresh every resolve_ns on a thread of its own. getaddrinfo blocks for
 * as long as the system resolver waits (seconds per try when a DNS server does not answer);
 * on the dispatcher that stalled every admission and every timeout sweep behind it. */
static void *resolve_main(void *arg) {
    struct sch_pd *pd = arg;
    (void)prctl(PR_SET_NAME, (unsigned long)"kc-pd-resolve", 0UL, 0UL, 0UL); /* top -H */
    pthread_mutex_lock(&pd->lock);
    while (!pd->stop) {
        const uint64_t due = pd->resolved_ns + pd->resolve_ns, now = kc_now_ns();
        if (now < due) { /* pd.cv also wakes on peer changes: wait out the period */
            struct timespec rt;
            clock_gettime(CLOCK_REALTIME, &rt);
            const uint64_t ns = (uint64_t)rt.tv_nsec + (due - now);
            rt.tv_sec += (time_t)(ns / 1000000000ull);
            rt.tv_nsec = (long)(ns % 1000000000ull);
            pthread_cond_timedwait(&pd->cv, &pd->lock, &rt);
            continue;
        }
        pthread_mutex_unlock(&pd->lock);
        peers_refresh(pd);
        pthread_mutex_lock(&pd->lock);
    }
    pthread_mutex_unlock(&pd->lock);
    return NULL;
}

static void *dispatch_main(void *arg) {
    struct sch_pd *pd = arg;
    (void)prctl(PR_SET_NAME, (unsigned long)"kc-pd-dispatch", 0UL, 0UL, 0UL); /* top -H */
    for (;;) {
        pthread_mutex_lock(&pd->lock);
        const bool stop = pd->stop;
        pthread_mutex_unlock(&pd->lock);
        if (stop) {
            break;
        }
        pending_sweep(pd);
        pthread_mutex_lock(&pd->lock);
        const int peer = peer_pick(pd, -1);
        const bool none_up = !any_up(pd);
        pthread_mutex_unlock(&pd->lock);
        if (peer < 0 && !none_up) {
            /* Every prefill host is at its in-flight bound: wait for an answer. */
            pthread_mutex_lock(&pd->lock);
            struct timespec rt;
            clock_gettime(CLOCK_REALTIME, &rt);
            rt.tv_nsec += PD_TICK_MS * 1000000L;
            rt.tv_sec += rt.tv_nsec / 1000000000L;
            rt.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&pd->cv, &pd->lock, &rt);
            pthread_mutex_unlock(&pd->lock);
            continue;
        }
        struct sch_req *r = sch__remote_admit(pd->s, PD_TICK_MS);
        if (r != NULL) {
            dispatch_one(pd, r);
        }
    }
    return NULL;
}

bool sch__pd_dispatch_now(struct sch_pd *pd) {
    pthread_mutex_lock(&pd->lock);
    const bool room = !pd->stop && peer_pick(pd, -1) >= 0;
    pthread_mutex_unlock(&pd->lock);
    if (!room) {
        return false; /* the dispatcher waits for room, or fails the request (none up) */
    }
    struct sch_req *r = sch__remote_admit(pd->s, 0);
    if (r == NULL) {
        return false; /* waiting for blocks, or another thread took it */
    }
    dispatch_one(pd, r);
    return true;
}

/* ---- lifecycle ---- */

int sch__pd_create(struct sch *s, const struct sch_config *c, struct sch_pd **out,
                   struct kc_error *err) {
    *out = NULL;
    if (c->role == SCH_ROLE_ALL) {
        return KC_OK;
    }
    if (c->role == SCH_ROLE_DECODE) {
        if (c->prefill_peers == NULL || c->prefill_peers[0] == '\0') {
            return kc_error_set(err, KC_EINVAL,
                                "--role decode needs --prefill-peers host:port,...");
        }
        if (strlen(c->prefill_peers) >= sizeof(((struct sch_pd *)0)->names)) {
            return kc_error_set(err, KC_EINVAL, "--prefill-peers is longer than %zu bytes",
                                sizeof(((struct sch_pd *)0)->names) - 1);
        }
        /* Every entry needs a port. */
        char list[1024];
        snprintf(list, sizeof(list), "%s", c->prefill_peers);
        char *save = NULL;
        for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
            const char *colon = strrchr(t, ':');
            char *end = NULL;
            const long port = colon != NULL ? strtol(colon + 1, &end, 10) : -1;
            if (colon == NULL || end == colon + 1 || *end != '\0' || port < 1 || port > 65535) {
                return kc_error_set(err, KC_EINVAL,
                                    "--prefill-peers: '%s' is not host:port (port 1-65535)", t);
            }
        }
    }
    struct sch_pd *pd = calloc(1, sizeof(*pd));
    if (pd == NULL) {
        return kc_error_set(err, KC_ENOMEM, "pd: out of memory");
    }
    const struct eng_kv_pool *pool = sch__pool(s);
    pd->s = s;
    pd->role = c->role;
    pd->max_inflight = c->pd_max_inflight > 0 ? c->pd_max_inflight : 4;
    pd->timeout_ns = (uint64_t)(c->pd_timeout_ms > 0 ? c->pd_timeout_ms : 30000) * 1000000ull;
    pd->resolve_ns =
        (uint64_t)(c->pd_resolve_ms > 0 ? c->pd_resolve_ms : PD_RESOLVE_MS) * 1000000ull;
    pd->shape = sch_pd_shape_of(pool->n_layers, pool->n_kv_heads, pool->head_dim,
                                sch__vocab_size(s), c->max_context);
    pd->kvd = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    if (c->prefill_peers != NULL) {
        snprintf(pd->names, sizeof(pd->names), "%s", c->prefill_peers);
    }
    pthread_mutex_init(&pd->lock, NULL);
    pthread_cond_init(&pd->cv, NULL);
    pd->row_k = malloc(2 * pd->kvd * sizeof(float));
    if (pd->row_k == NULL) {
        sch__pd_free(pd);
        return kc_error_set(err, KC_ENOMEM, "pd: out of memory");
    }
    pd->row_v = pd->row_k + pd->kvd;
    struct sch_pd_net_params np = {
        .role = c->role == SCH_ROLE_PREFILL ? SCH_PD_ROLE_PREFILL : SCH_PD_ROLE_DECODE,
        .shape = pd->shape,
        .on_msg = on_msg,
        .on_conn = on_conn,
        .ud = pd,
        .listen = c->role == SCH_ROLE_PREFILL,
        .listen_host = c->pd_host,
        .listen_port = c->pd_port,
    };
    int rc = sch_pd_net_create(&np, &pd->net, err);
    if (rc != KC_OK) {
        sch__pd_free(pd);
        return rc;
    }
    if (c->role == SCH_ROLE_PREFILL) {
        KC_INFO("pd: prefill host, UCX listening on %s:%d",
                c->pd_host != NULL && c->pd_host[0] ? c->pd_host : "*", sch_pd_net_port(pd->net));
    } else {
        peers_refresh(pd);
        if (pthread_create(&pd->thread, NULL, dispatch_main, pd) != 0) {
            sch__pd_free(pd);
            return kc_error_set(err, KC_ENOMEM, "pd: cannot start the dispatcher");
        }
        pd->started = true;
        if (pthread_create(&pd->resolver, NULL, resolve_main, pd) != 0) {
            sch__pd_free(pd);
            return kc_error_set(err, KC_ENOMEM, "pd: cannot start the peer resolver");
        }
        pd->resolver_started = true;
        KC_INFO("pd: decode host, prefill peers %s (resolved every %llu ms)", pd->names,
                (unsigned long long)(pd->resolve_ns / 1000000));
    }
    *out = pd;
    return KC_OK;
}

void sch__pd_stop(struct sch_pd *pd) {
    pthread_mutex_lock(&pd->lock);
    pd->stop = true;
    pthread_cond_broadcast(&pd->cv);
    pthread_mutex_unlock(&pd->lock);
    if (pd->started) {
        pthread_join(pd->thread, NULL);
        pd->started = false;
    }
    if (pd->resolver_started) { /* before the transport: peers_refresh connects through it */
        pthread_join(pd->resolver, NULL);
        pd->resolver_started = false;
    }
    /* A decode host's transport goes now: no answer can hand a request off behind the
     * workers' backs once they stop. (A prefill host's stays until its workers are joined:
     * they ship through it.) */
    if (pd->role == SCH_ROLE_DECODE) {
        sch_pd_net_free(pd->net);
        pd->net = NULL;
    }
    pthread_mutex_lock(&pd->lock);
    struct pd_pending *e = pd->pending;
    pd->pending = NULL;
    pthread_mutex_unlock(&pd->lock);
    while (e != NULL) {
        struct pd_pending *next = e->next;
        sch__remote_end(pd->s, e->r, SCH_REQ_CANCELLED, SCH_FINISH_ABORT, 0, NULL);
        free(e);
        e = next;
    }
}

void sch__pd_free(struct sch_pd *pd) {
    if (pd == NULL) {
        return;
    }
    sch__pd_stop(pd);
    sch_pd_net_free(pd->net);
    for (struct pd_served *sv = pd->served, *n; sv != NULL; sv = n) {
        n = sv->next;
        free(sv);
    }
    free(pd->row_k);
    pthread_cond_destroy(&pd->cv);
    pthread_mutex_destroy(&pd->lock);
    free(pd);
}

void sch__pd_stats(struct sch_pd *pd, struct sch_stats *st) {
    if (pd->net != NULL) {
        sch_pd_net_bytes(pd->net, &st->pd_bytes_sent, &st->pd_bytes_received);
    }
    pthread_mutex_lock(&pd->lock);
    st->pd_transfers = pd->transfers;
    st->pd_transfer_seconds = pd->transfer_s;
    st->pd_retries = pd->retries;
    st->pd_failures = pd->failures;
    st->pd_firsts = pd->firsts;
    st->pd_first_overhead_seconds = pd->first_overhead_s;
    st->pd_in_flight = pd->n_served;
    for (const struct pd_pending *e = pd->pending; e != NULL; e = e->next) {
        st->pd_in_flight++;
    }
    pthread_mutex_unlock(&pd->lock);
}

int sch__pd_peers(struct sch_pd *pd, struct sch_pd_peer_info *out, int max) {
    pthread_mutex_lock(&pd->lock);
    int n = 0;
    for (int i = 0; i < pd->n_peers; i++) {
        const struct pd_peer *p = &pd->peers[i];
        if (p->host[0] == '\0') {
            continue; /* a free slot */
        }
        if (n < max) {
            snprintf(out[n].addr, sizeof(out[n].addr), "%s:%d", p->host, p->port);
            out[n].up = p->up;
            out[n].queued = (int)p->load.queued;
            out[n].free_blocks = (int)p->load.free_blocks;
            out[n].in_flight = p->in_flight;
            out[n].errors = p->errors;
        }
        n++;
    }
    pthread_mutex_unlock(&pd->lock);
    return n;
}

int sch__pd_port(struct sch_pd *pd) {
    return pd->role == SCH_ROLE_PREFILL ? sch_pd_net_port(pd->net) : 0;
}
