/*
 * routes.c — the route table and the handlers that answer on the loop thread: GET /health,
 * GET /ready, GET /metrics, GET /v1/models and POST /detokenize. POST /v1/completions, POST
 * /v1/chat/completions and POST /tokenize only start their work here (completions.c). The
 * connection machinery that decides whether a request reaches a route at all (limits, Host,
 * framing, auth, method, content type, body) is http.c; 404 and 405 are answered there from
 * this table (srv_route_find, srv_route_get).
 *
 * Thread rules: everything here runs on the loop thread, inside MHD's access handler.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/server_internal.h"

static const struct srv_route_def routes[] = {
    {"/health", SRV_ROUTE_HEALTH, "GET", false},
    {"/ready", SRV_ROUTE_READY, "GET", false},
    {"/metrics", SRV_ROUTE_METRICS, "GET", false},
    {"/v1/models", SRV_ROUTE_MODELS, "GET", true},
    {"/v1/completions", SRV_ROUTE_COMPLETIONS, "POST", true},
    {"/v1/chat/completions", SRV_ROUTE_CHAT, "POST", true},
    {"/tokenize", SRV_ROUTE_TOKENIZE, "POST", true},
    {"/detokenize", SRV_ROUTE_DETOKENIZE, "POST", true},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

const struct srv_route_def *srv_route_find(const char *path) {
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (strcmp(path, routes[i].path) == 0) {
            return &routes[i];
        }
    }
    return NULL;
}

const struct srv_route_def *srv_route_get(enum srv_route route) {
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (routes[i].route == route) {
            return &routes[i];
        }
    }
    return NULL;
}

static enum srv_http_rc send_json(struct srv_conn *c, int status, json_t *o) {
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (txt == NULL) {
        return SRV_HTTP_CLOSE;
    }
    enum srv_http_rc ret = srv_send(c, status, "application/json", txt, strlen(txt));
    free(txt);
    return ret;
}

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
    g->conns_dispatched = s->n_socks_dispatched;
    g->conns_waiting = s->n_socks_live - s->n_socks_dispatched;
    g->sch = st;
    if (s->sch != NULL && strcmp(s->cfg.role, "all") != 0) {
        g->pd_role = strcmp(s->cfg.role, "prefill") == 0 ? SCH_ROLE_PREFILL : SCH_ROLE_DECODE;
        const int n = sch_pd_peers(s->sch, g->peers, 16);
        g->n_peers = n < 16 ? n : 16;
    }
}

static enum srv_http_rc route_health(struct srv_conn *c) {
    struct srv *s = c->srv;
    if (s->state == SRV_LOADING) {
        /* What the README, Dockerfile and k8s probes expect while the models load. */
        return srv_send(c, 503, "application/json", "{\"status\":\"loading\"}", 20);
    }
    if (s->state != SRV_SERVING) {
        return srv_send_http_error(c, 503, "the server is shutting down");
    }
    if (s->sch == NULL || strcmp(s->cfg.role, "all") == 0) {
        return srv_send(c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    }
    /* Disaggregated serving (docs/disaggregated.md): the role, and on a decode host its
     * prefill peers. Still 200 with every peer down (a liveness probe must not restart decode
     * pods for the prefill pool's sake); completions then get 503. */
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ok"));
    json_object_set_new(o, "role", json_string(s->cfg.role));
    /* What this host loaded: a decode host holds the base model only. */
    const bool has_aux = s->models.bundle != NULL && s->models.bundle->aux != NULL;
    const bool has_pred = s->models.bundle != NULL && s->models.bundle->pred != NULL;
    json_object_set_new(o, "aux_loaded", json_boolean(has_aux));
    json_object_set_new(o, "predictor_loaded", json_boolean(has_pred));
    if (strcmp(s->cfg.role, "prefill") == 0) {
        json_object_set_new(o, "pd_port", json_integer(sch_pd_port(s->sch)));
    } else {
        struct sch_pd_peer_info peers[64];
        const int n = sch_pd_peers(s->sch, peers, 64);
        json_t *a = json_array();
        int up = 0;
        for (int i = 0; i < n && i < 64; i++) {
            json_t *p = json_object();
            json_object_set_new(p, "addr", json_string(peers[i].addr));
            json_object_set_new(p, "up", json_boolean(peers[i].up));
            json_object_set_new(p, "queued", json_integer(peers[i].queued));
            json_object_set_new(p, "free_blocks", json_integer(peers[i].free_blocks));
            json_object_set_new(p, "in_flight", json_integer(peers[i].in_flight));
            json_object_set_new(p, "errors", json_integer((json_int_t)peers[i].errors));
            json_array_append_new(a, p);
            up += peers[i].up;
        }
        json_object_set_new(o, "prefill_peers_up", json_integer(up));
        json_object_set_new(o, "prefill_peers", a);
    }
    return send_json(c, 200, o);
}

/* Readiness (what a Kubernetes readinessProbe asks; /health stays liveness): 200 while the
 * server serves and can serve a completion end to end. A decode host cannot prefill: it is
 * ready only while at least one prefill peer is up, so that a Service does not send clients
 * to it in vain (they would all get 503). Loading answers 503 in http.c. */
static enum srv_http_rc route_ready(struct srv_conn *c) {
    struct srv *s = c->srv;
    if (s->state != SRV_SERVING) {
        return srv_send_http_error(c, 503, "the server is not serving (loading or draining)");
    }
    if (s->sch != NULL && strcmp(s->cfg.role, "decode") == 0) {
        struct sch_pd_peer_info peers[64];
        const int n = sch_pd_peers(s->sch, peers, 64);
        int up = 0;
        for (int i = 0; i < n && i < 64; i++) {
            up += peers[i].up;
        }
        if (up == 0) {
            return srv_send_http_error(c, 503,
                                       "no prefill peer is up: this decode host cannot serve "
                                       "completions yet (see /health)");
        }
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("ready"));
        json_object_set_new(o, "prefill_peers_up", json_integer(up));
        return send_json(c, 200, o);
    }
    return srv_send(c, 200, "application/json", "{\"status\":\"ready\"}", 18);
}

/* A prefill host serves decode hosts over UCX only: a client's completion sent to it is
 * misdirected (421), not served locally, so that the pools stay sized to their own load. */
static enum srv_http_rc refuse_on_prefill(struct srv_conn *c) {
    struct srv_error e;
    srv_error_http(&e, 421, "this host runs --role prefill; send completions to a decode host");
    e.code = "wrong_role";
    return srv_send_error(c, &e);
}

static bool is_prefill_host(const struct srv *s) {
    return s->sch != NULL && strcmp(s->cfg.role, "prefill") == 0;
}

static enum srv_http_rc route_metrics(struct srv_conn *c) {
    struct srv_gauges g;
    gauges_of(c->srv, &g);
    struct srv_buf o = {0};
    if (srv_metrics_render(&c->srv->metrics, &g, &o) != KC_OK) {
        srv_buf_free(&o);
        return SRV_HTTP_CLOSE;
    }
    enum srv_http_rc ret = srv_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", o.p, o.len);
    srv_buf_free(&o);
    return ret;
}

static enum srv_http_rc route_models(struct srv_conn *c) {
    struct srv *s = c->srv;
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->models.id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(0));
    json_object_set_new(m, "owned_by", json_string("kvcast"));
    json_t *root = json_stringn(s->models.root, strlen(s->models.root));
    json_object_set_new(m, "root", root ? root : json_string(s->models.id));
    json_object_set_new(m, "parent", json_null());
    json_object_set_new(m, "max_model_len", json_integer(s->models.max_model_len));
    json_object_set_new(m, "permission", json_array());
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_object_set_new(o, "data", data);
    return send_json(c, 200, o);
}

static enum srv_http_rc route_tokenize(struct srv_conn *c) {
    return srv_tokenize_start(c); /* off the loop thread: completions.c */
}

static enum srv_http_rc route_detokenize(struct srv_conn *c) {
    struct srv *s = c->srv;
    struct srv_error e;
    int32_t *ids = NULL;
    int n = 0;
    if (srv_detokenize_parse(c->body.p, c->body.len, &s->lim, &ids, &n, &e) != KC_OK) {
        return srv_send_error(c, &e);
    }
    if (s->models.tok == NULL) {
        free(ids);
        srv_error_kc(&e, KC_EUNSUPPORTED, NULL, "this model has no tokenizer");
        return srv_send_error(c, &e);
    }
    char *text = NULL;
    size_t len = 0;
    struct kc_error kerr = {0};
    int rc = eng_tok_decode(s->models.tok, ids, (size_t)n, 0, &text, &len, &kerr);
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

enum srv_http_rc srv_route_run(struct srv_conn *c) {
    switch (c->route) {
    case SRV_ROUTE_HEALTH:
        return route_health(c);
    case SRV_ROUTE_READY:
        return route_ready(c);
    case SRV_ROUTE_METRICS:
        return route_metrics(c);
    case SRV_ROUTE_MODELS:
        return route_models(c);
    case SRV_ROUTE_COMPLETIONS:
        if (is_prefill_host(c->srv)) {
            return refuse_on_prefill(c);
        }
        return srv_completions_start(c);
    case SRV_ROUTE_CHAT:
        if (is_prefill_host(c->srv)) {
            return refuse_on_prefill(c);
        }
        return srv_chat_start(c); /* off the loop thread: completions.c, chat.c */
    case SRV_ROUTE_TOKENIZE:
        return route_tokenize(c);
    case SRV_ROUTE_DETOKENIZE:
        return route_detokenize(c);
    case SRV_ROUTE_NONE:
        break;
    }
    return srv_send_http_error(c, 404, "Not found");
}
