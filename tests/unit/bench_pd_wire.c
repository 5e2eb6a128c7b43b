/*
 * bench_pd_wire.c — which UCX primitive moves a prompt's K/V between hosts (issue 20 item 2):
 * UCP stream messages (what scheduler/pd_ucx.c uses: ordered bytes, the receiver copies from
 * UCX's buffer into the pool) against tagged messages (received straight into the destination
 * buffer, eager or rendezvous as UCX chooses). Both move a TinyLlama-sized prompt's K/V
 * (22 layers x 512 positions x 4 KV heads x 64, f32: 23 MB) in chunks of at most 16 MiB
 * (SCH_PD_MAX_KV_CHUNK_BYTES), between two workers in two threads on loopback. Prints the best
 * of REPS transfers of each; asserts nothing about speed (label bench). Run it under the
 * transports to compare, e.g. UCX_TLS=tcp (what crosses hosts here) and the default.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ucp/api/ucp.h>

#define KV_BYTES ((size_t)22 * 2 * 512 * 4 * 64 * 4)
#define CHUNK ((size_t)16 << 20)
#define REPS 8

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "bench_pd_wire: %s:%d: %s\n", __FILE__, __LINE__, #c);                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

struct peer {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;
};

static ucp_listener_h listener;
static _Atomic(ucp_conn_request_h) pending;

static void peer_init(struct peer *p) {
    ucp_config_t *cfg;
    CHECK(ucp_config_read(NULL, NULL, &cfg) == UCS_OK);
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                       .features = UCP_FEATURE_STREAM | UCP_FEATURE_TAG};
    CHECK(ucp_init(&up, cfg, &p->ctx) == UCS_OK);
    ucp_config_release(cfg);
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    CHECK(ucp_worker_create(p->ctx, &wp, &p->worker) == UCS_OK);
}

static void wait_req(ucp_worker_h w, void *req) {
    if (req == NULL) {
        return;
    }
    CHECK(!UCS_PTR_IS_ERR(req));
    while (ucp_request_check_status(req) == UCS_INPROGRESS) {
        ucp_worker_progress(w);
    }
    ucp_request_free(req);
}

static void close_ep(ucp_worker_h w, void *req) {
    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS) {
            ucp_worker_progress(w);
        }
        ucp_request_free(req);
    }
}

static void conn_cb(ucp_conn_request_h req, void *arg) {
    (void)arg;
    atomic_store(&pending, req);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static struct peer server, client;
static uint8_t *src, *dst, *scratch;

/* The receiver: for each rep, either the stream way (copy out of UCX buffers into dst) or the
 * tag way (receive into dst); acknowledges with one stream byte. */
static void *server_main(void *arg) {
    (void)arg;
    while (atomic_load(&pending) == NULL) {
        ucp_worker_progress(server.worker);
    }
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST,
                          .conn_request = atomic_load(&pending)};
    CHECK(ucp_ep_create(server.worker, &ep, &server.ep) == UCS_OK);
    for (int mode = 0; mode < 2; mode++) {
        for (int r = 0; r < REPS; r++) {
            if (mode == 0) {
                size_t got = 0;
                while (got < KV_BYTES) {
                    size_t len;
                    void *d = ucp_stream_recv_data_nb(server.ep, &len);
                    if (d == NULL) {
                        ucp_worker_progress(server.worker);
                        continue;
                    }
                    CHECK(!UCS_PTR_IS_ERR(d));
                    memcpy(dst + got, d, len);
                    got += len;
                    ucp_stream_data_release(server.ep, d);
                }
            } else {
                for (size_t off = 0; off < KV_BYTES; off += CHUNK) {
                    const size_t n = KV_BYTES - off < CHUNK ? KV_BYTES - off : CHUNK;
                    ucp_request_param_t prm = {0};
                    wait_req(server.worker,
                             ucp_tag_recv_nbx(server.worker, dst + off, n, 7, ~(ucp_tag_t)0, &prm));
                }
            }
            CHECK(memcmp(dst, src, KV_BYTES) == 0);
            memset(dst, 0, KV_BYTES);
            static uint8_t ack = 1;
            ucp_request_param_t prm = {0};
            wait_req(server.worker, ucp_stream_send_nbx(server.ep, &ack, 1, &prm));
        }
    }
    return NULL;
}

int main(void) {
    src = malloc(KV_BYTES);
    dst = calloc(1, KV_BYTES);
    scratch = malloc(16);
    CHECK(src != NULL && dst != NULL && scratch != NULL);
    for (size_t i = 0; i < KV_BYTES; i++) {
        src[i] = (uint8_t)(i * 131u + (i >> 11));
    }
    peer_init(&server);
    peer_init(&client);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&sa, .addrlen = sizeof(sa)},
        .conn_handler = {.cb = conn_cb, .arg = NULL}};
    CHECK(ucp_listener_create(server.worker, &lp, &listener) == UCS_OK);
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    CHECK(ucp_listener_query(listener, &la) == UCS_OK);
    sa.sin_port = ((struct sockaddr_in *)&la.sockaddr)->sin_port;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, server_main, NULL) == 0);
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR,
        .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
        .sockaddr = {.addr = (const struct sockaddr *)&sa, .addrlen = sizeof(sa)}};
    CHECK(ucp_ep_create(client.worker, &ep, &client.ep) == UCS_OK);
    static const char *names[2] = {"stream", "tag"};
    double best[2] = {1e30, 1e30};
    for (int mode = 0; mode < 2; mode++) {
        for (int r = 0; r < REPS; r++) {
            const double t0 = now_ms();
            for (size_t off = 0; off < KV_BYTES; off += CHUNK) {
                const size_t n = KV_BYTES - off < CHUNK ? KV_BYTES - off : CHUNK;
                ucp_request_param_t prm = {0};
                void *req = mode == 0 ? ucp_stream_send_nbx(client.ep, src + off, n, &prm)
                                      : ucp_tag_send_nbx(client.ep, src + off, n, 7, &prm);
                wait_req(client.worker, req);
            }
            size_t len = 0;
            ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                       .flags = UCP_STREAM_RECV_FLAG_WAITALL};
            wait_req(client.worker, ucp_stream_recv_nbx(client.ep, scratch, 1, &len, &prm));
            const double ms = now_ms() - t0;
            best[mode] = ms < best[mode] ? ms : best[mode];
        }
    }
    pthread_join(th, NULL);
    const char *tls = getenv("UCX_TLS");
    for (int mode = 0; mode < 2; mode++) {
        printf("bench_pd_wire: UCX_TLS=%s %s: %.1f MB in %.2f ms (%.0f MB/s, best of %d)\n",
               tls != NULL ? tls : "(default)", names[mode], (double)KV_BYTES / 1e6, best[mode],
               (double)KV_BYTES / 1e3 / best[mode], REPS);
    }
    ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                              .flags = UCP_EP_CLOSE_FLAG_FORCE};
    /* A forced close may report the peer's reset; nothing to check there. */
    close_ep(client.worker, ucp_ep_close_nbx(client.ep, &cp));
    close_ep(server.worker, ucp_ep_close_nbx(server.ep, &cp));
    ucp_listener_destroy(listener);
    ucp_worker_destroy(client.worker);
    ucp_worker_destroy(server.worker);
    ucp_cleanup(client.ctx);
    ucp_cleanup(server.ctx);
    free(src);
    free(dst);
    free(scratch);
    return 0;
}
