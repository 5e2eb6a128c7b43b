/*
 * pd_ucx.h — the transport between prefill and decode hosts (issue 20; docs/disaggregated.md):
 * UCX endpoints over a sockaddr listener, one progress thread per host, framed pd_msg.h
 * messages in both directions. UCX itself stays behind this header (tests/check_layering.sh).
 *
 * Place in the data flow: a prefill host listens (params.listen) and accepts connections
 * from decode hosts (sch_pd_net_connect). Each side opens a connection with HELLO (role + model
 * shape); a connection whose peer serves another model shape is closed before any request,
 * with the reason. Then any thread may send (sch_pd_net_send: the frame is copied and queued);
 * received messages and connection changes are delivered on the progress thread.
 *
 * Wire choice: UCP stream messages carry every frame, the K/V chunks included; measured
 * against tagged messages in tests/unit/bench_pd_wire.c (the figures and the reasons are at
 * the top of pd_ucx.c).
 *
 * Threads: sch_pd_net_* may be called from any thread except sch_pd_net_free (one owner, not
 * from a callback). Callbacks run on the progress thread, must not block and must not call
 * sch_pd_net_free; they may call sch_pd_net_send and sch_pd_net_close.
 *
 * Connection ids are > 0 and never reused by one net.
 */
#ifndef SCH_PD_UCX_H
#define SCH_PD_UCX_H

#include <stdbool.h>
#include <stdint.h>

#include "common/kc.h"
#include "scheduler/pd_msg.h"

struct sch_pd_net;

/* A message arrived on connection conn (decoded and checked; valid during the call only). */
typedef void (*sch_pd_msg_cb)(void *ud, uint64_t conn, const struct sch_pd_msg *m);
/* Connection conn changed: status KC_OK once both HELLOs were exchanged and accepted; a
 * negative KC_E* when it failed or closed (peer gone: KC_EIO; bad frame or model shape: the
 * decoder's code), with the reason in why. After a negative status the id is dead. */
typedef void (*sch_pd_conn_cb)(void *ud, uint64_t conn, int status, const char *why);

struct sch_pd_net_params {
    enum sch_pd_role role;     /* sent in HELLO */
    struct sch_pd_shape shape; /* the local model: bounds every decoded length */
    sch_pd_msg_cb on_msg;
    sch_pd_conn_cb on_conn;
    void *ud;
    size_t max_queued_bytes; /* sends refused (KC_EBUSY) above this; 0: 1 GiB */
    bool listen;             /* prefill hosts: accept connections on listen_host:listen_port */
    const char *listen_host; /* NULL or "": every address */
    int listen_port;         /* 0: any (sch_pd_net_port tells) */
};

/* Creates the UCX context and worker, the listener when asked, and starts the progress
 * thread. KC_EIO (with UCX's reason) when UCX cannot start or listen. */
int sch_pd_net_create(const struct sch_pd_net_params *p, struct sch_pd_net **out,
                      struct kc_error *err);

/* The port the listener bound (params.listen), else 0. */
int sch_pd_net_port(const struct sch_pd_net *n);

/* Starts a connection to a numeric address host:port (resolve names first); *conn gets its id
 * at once, on_conn reports when it is up or failed. */
int sch_pd_net_connect(struct sch_pd_net *n, const char *host, int port, uint64_t *conn,
                       struct kc_error *err);

/* Queues m's frame (copied, a KV chunk's data included) for conn. KC_ENOTFOUND for a dead
 * or unknown conn, KC_EBUSY above max_queued_bytes, KC_ENOMEM. */
int sch_pd_net_send(struct sch_pd_net *n, uint64_t conn, const struct sch_pd_msg *m);

/* Closes conn (queued sends may be dropped); on_conn reports it closed (KC_ECANCELED). */
void sch_pd_net_close(struct sch_pd_net *n, uint64_t conn);

/* Bytes sent and received so far (frames, headers included). */
void sch_pd_net_bytes(struct sch_pd_net *n, uint64_t *sent, uint64_t *received);

/* Stops the progress thread, closes every connection (no callbacks after it returns), frees. */
void sch_pd_net_free(struct sch_pd_net *n);

#endif /* SCH_PD_UCX_H */
