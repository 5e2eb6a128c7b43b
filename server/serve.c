/*
 * serve.c — `kvcast serve`: settings, model loading, the scheduler, the HTTP front, signals
 * and the drain on shutdown.
 *
 * Lifecycle (loop thread):
 *   start     settings -> listen (a busy port fails here, before any model is read); prints
 *             "kvcast: listening on http://HOST:PORT" to stdout -> LOADING
 *   LOADING   models load on a libuv worker (load_work_cb: bundle, or --model [+ --aux
 *             --predictor], tokenizer, their fit checks, then the scheduler) while the loop
 *             answers /health with 503 {"status":"loading"} and every other route with 503 +
 *             Retry-After. Then load_done_cb (loop thread) -> SERVING; a load failure exits 1
 *             with the message. SIGTERM/SIGINT here cancel the load (the loader checks between
 *             layers) -> STOPPING, exit 0.
 *   SERVING   requests; SIGTERM/SIGINT -> DRAINING
 *   DRAINING  /health answers 503 and new completions 503 + Retry-After (the listener stays
 *             open so probes and clients get an answer rather than a refused connection);
 *             running requests finish, up to --shutdown-timeout-s; then (or on a second
 *             signal) the rest are cancelled -> STOPPING
 *   STOPPING  once every choice got its terminal event and streams are flushed (bounded),
 *             MHD is stopped with no connection suspended, the scheduler destroyed, exit 0.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/serve.h"
#include "server/server_internal.h"
#include "server/settings.h"

extern char **environ;

/* ---- scheduler -> loop thread ---- */

static void on_sch_event(void *ud, const struct sch_event *ev) {
    struct srv *s = ud;
    pthread_mutex_lock(&s->ev_lock);
    if (s->evq_len == s->evq_cap) {
        size_t cap = s->evq_cap ? s->evq_cap * 2 : 64;
        struct sch_event *q = realloc(s->evq, cap * sizeof(*q));
        KC_ASSERT(q != NULL); /* an event can never be dropped: its request would hang */
        s->evq = q;
        s->evq_cap = cap;
    }
    s->evq[s->evq_len++] = *ev;
    pthread_mutex_unlock(&s->ev_lock);
    uv_async_send(&s->wake);
}

/* Drains the whole queue: uv_async_send coalesces several sends into one callback. */
static void drain_events(struct srv *s) {
    for (;;) {
        pthread_mutex_lock(&s->ev_lock);
        struct sch_event *q = s->evq;
        size_t n = s->evq_len;
        s->evq = NULL;
        s->evq_len = s->evq_cap = 0;
        pthread_mutex_unlock(&s->ev_lock);
        if (n == 0) {
            free(q);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            srv_completions_on_event(s, &q[i]);
        }
        free(q);
    }
}

static void maybe_finish_stop(struct srv *s);

static void on_wake(uv_async_t *a) {
    struct srv *s = a->data;
    drain_events(s);
    maybe_finish_stop(s);
}

/* ---- shutdown ---- */

static void close_cb(uv_handle_t *h) {
    (void)h;
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, close_cb);
    }
}

static double stop_started;

static void begin_stopping(struct srv *s) {
    if (s->state == SRV_STOPPING) {
        return;
    }
    KC_INFO("cancelling %d running request(s)", srv_completions_live(s));
    s->state = SRV_STOPPING;
    stop_started = kc_now_s();
    srv_completions_cancel_all(s);
    maybe_finish_stop(s);
}

static void maybe_finish_stop(struct srv *s) {
    if (s->state == SRV_DRAINING && srv_completions_live(s) == 0) {
        begin_stopping(s);
        return;
    }
    if (s->state != SRV_STOPPING) {
        return;
    }
    /* Wait for terminal events, and give streams up to 2 s to flush their last bytes. */
    if (srv_completions_live(s) > 0 || (s->n_active > 0 && kc_now_s() - stop_started < 2.0)) {
        return;
    }
    srv_http_stop(s);
    uv_timer_stop(&s->watchdog);
    uv_timer_stop(&s->drain_timer);
    uv_signal_stop(&s->sig_term);
    uv_signal_stop(&s->sig_int);
    /* libuv puts back the default action, which would kill the process (status 143, no
     * clean exit) if a late signal arrives during teardown, e.g. the second copy that
     * `timeout` or a process-group kill delivers. We are stopping anyway: ignore them. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    uv_close((uv_handle_t *)&s->watchdog, close_cb);
    uv_close((uv_handle_t *)&s->drain_timer, close_cb);
    uv_close((uv_handle_t *)&s->mhd_timer, close_cb);
    uv_close((uv_handle_t *)&s->mhd_poll, close_cb);
    uv_close((uv_handle_t *)&s->sig_term, close_cb);
    uv_close((uv_handle_t *)&s->sig_int, close_cb);
    uv_close((uv_handle_t *)&s->wake, close_cb);
}

static void on_drain_timeout(uv_timer_t *t) {
    struct srv *s = t->data;
    KC_WARN("shutdown timeout reached");
    begin_stopping(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct srv *s = h->data;
    s->signals_seen++;
    if (s->state == SRV_LOADING) {
        /* The loader cannot be interrupted from here: it polls the flag between layers, and
         * load_done_cb then stops the loop (exit 0). */
        KC_INFO("signal %d while loading: stopping", signum);
        atomic_store(&s->load_cancel, 1);
    } else if (s->state == SRV_SERVING) {
        KC_INFO("signal %d: draining (up to %d s); send it again to stop at once", signum,
                s->cfg.shutdown_timeout_s);
        s->state = SRV_DRAINING;
        uv_timer_start(&s->drain_timer, on_drain_timeout,
                       (uint64_t)s->cfg.shutdown_timeout_s * 1000, 0);
        maybe_finish_stop(s);
    } else {
        begin_stopping(s);
    }
}

static void on_watchdog(uv_timer_t *t) {
    struct srv *s = t->data;
    srv_completions_tick(s);
    maybe_finish_stop(s);
}

/* ---- loading (on a libuv worker thread) ---- */

/* eng_model_params.progress_cb: a log line per 10 % of a file's tensors, but only once the
 * load has taken a second, so small models load quietly. Non-zero stops the load. */
static int on_load_progress(void *ud, const char *path, size_t done, size_t total) {
    struct srv *s = ud;
    if (atomic_load(&s->load_cancel)) {
        return 1;
    }
    if (strcmp(s->load_file, path) != 0) { /* by content: a freed path's address recurs */
        snprintf(s->load_file, sizeof(s->load_file), "%s", path);
        s->load_next_pct = 10;
    }
    const int pct = total > 0 ? (int)((double)done * 100.0 / (double)total) : 100;
    const double dt = kc_now_s() - s->load_t0;
    if (pct >= s->load_next_pct && dt >= 1.0) {
        KC_INFO("loading %s: %d%% (%.1f of %.1f MiB) after %.1f s", path, pct,
                (double)done / 1048576.0, (double)total / 1048576.0, dt);
        s->load_next_pct = pct / 10 * 10 + 10;
    }
    return 0;
}

/* --debug-load-delay-ms: a slow load for tests of the LOADING state; a signal cuts it short. */
static int debug_load_delay(struct srv *s, struct kc_error *err) {
    for (int left = s->cfg.debug_load_delay_ms; left > 0; left -= 10) {
        if (atomic_load(&s->load_cancel)) {
            return kc_error_set(err, KC_ECANCELED, "loading cancelled");
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (left < 10 ? left : 10) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return KC_OK;
}

static void set_model_id(struct srv *s, const char *bundle_name, const char *base_dir) {
    if (s->cfg.served_model_name[0] != '\0') {
        snprintf(s->models.id, sizeof(s->models.id), "%s", s->cfg.served_model_name);
    } else if (bundle_name != NULL) {
        snprintf(s->models.id, sizeof(s->models.id), "%s", bundle_name);
    } else {
        char tmp[CFG_PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s", base_dir);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/') {
            tmp[--n] = '\0';
        }
        snprintf(s->models.id, sizeof(s->models.id), "%s", basename(tmp));
    }
}

/* Frees what load_models and load_tokenizer loaded (all of it optional). */
static void models_free(struct srv_models *m) {
    eng_chat_free(m->chat);
    eng_tok_free(m->tok);
    eng_kvp_bundle_free(m->bundle);
    eng_model_free(m->base_owned);
    memset(m, 0, sizeof(*m));
}

/* Loads the tokenizer (explicit, else the base dir's tokenizer.json when there is one) and
 * checks it against the model's vocabulary now rather than at the first request. */
static int load_tokenizer(struct srv *s, const char *base_dir, struct kc_error *err) {
    const struct cfg_settings *c = &s->cfg;
    char path[CFG_PATH_MAX + 32];
    if (c->tokenizer[0] != '\0') {
        snprintf(path, sizeof(path), "%s", c->tokenizer);
    } else {
        kc_path_join(path, sizeof(path), base_dir, "tokenizer.json");
        if (access(path, R_OK) != 0) {
            KC_WARN("%s has no tokenizer.json: prompts must be token ids and text is empty",
                    base_dir);
            if (c->chat_template[0] != '\0') {
                return kc_error_set(err, KC_EINVAL,
                                    "--chat-template needs a tokenizer (--tokenizer)");
            }
            return KC_OK;
        }
    }
    KC_INFO("tokenizer %s", path);
    int rc = eng_tok_load(path, &s->models.tok, err);
    if (rc != KC_OK) {
        return rc;
    }
    const int32_t vocab = eng_model_config_of(s->models.base)->vocab_size;
    if ((rc = eng_tok_check_vocab(s->models.tok, vocab, err)) != KC_OK) {
        kc_error_prefix(err, "tokenizer %s does not fit model %s", path, base_dir);
        return rc;
    }
    s->tok_buf_cap = eng_tok_stream_bound(s->models.tok);
    s->tok_buf = malloc(s->tok_buf_cap);
    if (s->tok_buf == NULL) {
        return kc_error_set(err, KC_ENOMEM, "out of memory");
    }
    return srv_chat_load(s, path, err); /* the template beside the tokenizer (chat.c) */
}

/* Resolves what to load: --model [+ --aux + --predictor] as given, else the bundle with
 * --aux and/or --predictor replacing its own. Runs on the loader thread: it only writes the
 * model fields of s, which the loop thread reads after load_done_cb. */
static int load_models(struct srv *s, struct kc_error *err) {
    const struct cfg_settings *c = &s->cfg;
    struct eng_model_params mp = eng_model_default_params();
    struct eng_kvp_bundle_spec spec = {NULL, NULL, NULL, NULL};
    int rc;
    /* auto prefill: eng_prefill_wtype_auto (bf16 where the CPU has native bf16 dot products);
     * auto decode: eng_model_default_params' choice (bf16 where oneDNN has bf16 products). */
    const bool dtype_auto = strcmp(c->prefill_dtype, "auto") == 0;
    mp.prefill_wtype = eng_prefill_wtype_auto();
    if ((!dtype_auto && (rc = eng_wtype_parse(c->prefill_dtype, &mp.prefill_wtype)) != KC_OK) ||
        (strcmp(c->decode_dtype, "auto") != 0 &&
         (rc = eng_wtype_parse(c->decode_dtype, &mp.decode_wtype)) != KC_OK)) {
        return kc_error_set(err, KC_EINVAL, "bad --prefill-dtype / --decode-dtype");
    }
    mp.progress_cb = on_load_progress;
    mp.progress_ud = s;
    if ((rc = debug_load_delay(s, err)) != KC_OK) {
        return rc;
    }
    const char *base_dir = c->model, *aux = c->aux, *pred = c->predictor;
    const bool from_bundle = c->model[0] == '\0';
    if (from_bundle) {
        if ((rc = eng_kvp_bundle_read(c->bundle, &spec, err)) != KC_OK) {
            return rc;
        }
        base_dir = spec.base_dir;
        aux = aux[0] != '\0' ? aux : spec.aux_dir;
        pred = pred[0] != '\0' ? pred : spec.predictor_path;
    }
    if (strcmp(c->role, "decode") == 0 && (aux[0] != '\0' || pred[0] != '\0')) {
        /* A decode host never prefills (its prefill hosts run the auxiliary model and the
         * predictor): its memory holds the base model alone (docs/disaggregated.md). */
        KC_INFO("models: --role decode: the auxiliary model and the predictor are not loaded "
                "(the prefill hosts run them)");
        aux = "";
        pred = "";
    }
    char threads[64];
    if (c->prefill_threads == 0 && c->decode_threads == 0) {
        snprintf(threads, sizeof(threads), "elastic over %d cores", sch_cpu_count());
    } else {
        snprintf(threads, sizeof(threads), "prefill %d decode %d (0: all cores)",
                 c->prefill_threads, c->decode_threads);
    }
    KC_INFO("models: %s%s: base %s, aux %s%s, predictor %s%s; weights prefill %s%s decode %s; "
            "threads %s",
            from_bundle ? "bundle " : "", from_bundle ? c->bundle : "--model", base_dir,
            aux[0] ? aux : "(none)", from_bundle && c->aux[0] ? " (--aux)" : "",
            pred[0] ? pred : "(none)", from_bundle && c->predictor[0] ? " (--predictor)" : "",
            eng_wtype_name(mp.prefill_wtype), dtype_auto ? " (auto)" : "",
            eng_wtype_name(mp.decode_wtype), threads);
    if (aux[0] != '\0') {
        rc = eng_kvp_bundle_open(base_dir, aux, pred[0] ? pred : NULL, &mp, &s->models.bundle, err);
        if (rc != KC_OK && from_bundle && rc != KC_ECANCELED) {
            kc_error_prefix(err, "bundle %s", c->bundle);
        }
    } else {
        rc = eng_model_load(base_dir, &mp, &s->models.base_owned, err);
    }
    if (rc == KC_OK) {
        s->models.base = s->models.bundle != NULL ? s->models.bundle->base : s->models.base_owned;
        snprintf(s->models.root, sizeof(s->models.root), "%s", base_dir);
        set_model_id(s, spec.name, base_dir);
        rc = load_tokenizer(s, base_dir, err);
    }
    eng_kvp_bundle_spec_free(&spec);
    return rc;
}

static int start_scheduler(struct srv *s, struct kc_error *err) {
    const struct sch_config sc =
        srv_sch_config(&s->cfg, eng_model_config_of(s->models.base)->max_position_embeddings);
    s->models.max_model_len = sc.max_context;
    const struct eng_model *aux = s->models.bundle ? s->models.bundle->aux : NULL;
    const struct eng_kvp *pred = s->models.bundle ? s->models.bundle->pred : NULL;
    int rc = sch_create(&sc, s->models.base, aux, pred, on_sch_event, s, &s->sch, err);
    if (rc == KC_OK && s->cfg.debug_step_delay_ms > 0) {
        KC_WARN("--debug-step-delay-ms %d: generation is slowed down on purpose",
                s->cfg.debug_step_delay_ms);
    }
    return rc;
}

static uint64_t random_salt(void) {
    uint64_t x = kc_now_ns() ^ ((uint64_t)getpid() << 32);
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        uint64_t r = 0;
        if (read(fd, &r, sizeof(r)) == (ssize_t)sizeof(r)) {
            x ^= r;
        }
        close(fd);
    }
    return x;
}

/* http://HOST:PORT, with an IPv6 literal in brackets (RFC 3986). */
static void server_url(const struct srv *s, char *out, size_t cap) {
    const bool v6 = strchr(s->cfg.host, ':') != NULL;
    snprintf(out, cap, "http://%s%s%s:%d", v6 ? "[" : "", s->cfg.host, v6 ? "]" : "", s->port);
}

/* The scheduler is created here too: sizing and zeroing the KV slabs takes a while, and the
 * loop must keep answering meanwhile. Its events reach the loop through uv_async_send, which
 * any thread may call. */
static void load_work_cb(uv_work_t *w) {
    struct srv *s = w->data;
    s->load_rc = load_models(s, &s->load_err);
    if (s->load_rc == KC_OK && !atomic_load(&s->load_cancel)) {
        s->load_rc = start_scheduler(s, &s->load_err);
    }
}

/* Loop thread, once the loader returned: scheduler, limits, metrics label -> SERVING; or
 * stop (exit 1 on a failed load, 0 when a signal cancelled it). */
static void load_done_cb(uv_work_t *w, int status) {
    struct srv *s = w->data;
    (void)status; /* never uv_cancel()ed */
    const int rc = s->load_rc;
    if (atomic_load(&s->load_cancel)) {
        KC_INFO("stopped while loading");
        begin_stopping(s);
        return;
    }
    if (rc != KC_OK) {
        fprintf(stderr, "kvcast serve: %s\n", s->load_err.msg);
        s->exit_code = 1;
        begin_stopping(s);
        return;
    }
    s->lim = srv_limits_of(&s->cfg, s->models.id, eng_model_config_of(s->models.base)->vocab_size,
                           eng_model_config_of(s->models.base)->max_position_embeddings);
    /* Counters kept since the bind (503s while loading) stay; only the label changes. */
    struct srv_metrics named;
    srv_metrics_init(&named, s->models.id, strcmp(s->cfg.metric_names, "prometheus") == 0);
    memcpy(s->metrics.model_name, named.model_name, sizeof(named.model_name));
    s->state = SRV_SERVING;
    char url[CFG_STR_MAX + 32];
    server_url(s, url, sizeof(url));
    KC_INFO("model %s (max_model_len %d, vocab %d%s) loaded in %.1f s; serving on %s", s->models.id,
            s->models.max_model_len, s->lim.vocab_size, s->models.tok ? "" : ", no tokenizer",
            kc_now_s() - s->load_t0, url);
}

int srv_serve_main(int argc, char **argv) {
    struct srv *s = calloc(1, sizeof(*s));
    struct kc_error err = {0};
    bool help = false;
    int exit_code = 1;
    bool loop_ok = false;
    if (s == NULL) {
        fprintf(stderr, "kvcast serve: out of memory\n");
        return 1;
    }
    if (cfg_settings_load(argc, argv, environ, &s->cfg, &help, &err) != KC_OK) {
        fprintf(stderr, "kvcast serve: %s\n", err.msg);
        free(s);
        return 2;
    }
    if (help) {
        cfg_print_help(stdout);
        free(s);
        return 0;
    }
    kc_log_level = kc_log_level_parse(s->cfg.log_level);
    kc_log_format = kc_log_format_parse(s->cfg.log_format);
    /* A client that hangs up must not kill the process through SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    char desc[8192];
    cfg_settings_describe(&s->cfg, desc, sizeof(desc));
    KC_DEBUG("settings: %s", desc);
    s->id_salt = random_salt();
    s->host_loopback = cfg_host_is_loopback(s->cfg.host);
    atomic_init(&s->load_cancel, 0);
    pthread_mutex_init(&s->ev_lock, NULL);
    if (uv_loop_init(&s->loop) != 0) {
        fprintf(stderr, "kvcast serve: cannot create the event loop\n");
        goto done;
    }
    loop_ok = true;
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    uv_timer_init(&s->loop, &s->watchdog);
    s->watchdog.data = s;
    uv_timer_init(&s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_signal_init(&s->loop, &s->sig_term);
    s->sig_term.data = s;
    uv_signal_init(&s->loop, &s->sig_int);
    s->sig_int.data = s;

    /* Listen first: a busy port fails now, not after minutes of loading, and probes get
     * "loading" rather than a refused connection while the models load. */
    srv_metrics_init(&s->metrics, s->cfg.served_model_name,
                     strcmp(s->cfg.metric_names, "prometheus") == 0);
    if (srv_http_start(s, &err) != KC_OK) {
        fprintf(stderr, "kvcast serve: %s\n", err.msg);
        goto done;
    }
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_timer_start(&s->watchdog, on_watchdog, (uint64_t)s->cfg.disconnect_check_ms,
                   (uint64_t)s->cfg.disconnect_check_ms);
    if (!s->host_loopback && s->cfg.api_key[0] == '\0') {
        KC_WARN("listening on %s WITHOUT an API key (--insecure-public)", s->cfg.host);
    }
    char url[CFG_STR_MAX + 32];
    server_url(s, url, sizeof(url));
    KC_INFO("listening on %s; loading models (/health answers 503 until ready)", url);
    /* The line scripts and tests read the port from; readiness is /health answering 200. */
    printf("kvcast: listening on %s\n", url);
    fflush(stdout);
    s->state = SRV_LOADING;
    s->load_t0 = kc_now_s();
    s->load_req.data = s;
    if (uv_queue_work(&s->loop, &s->load_req, load_work_cb, load_done_cb) != 0) {
        fprintf(stderr, "kvcast serve: cannot start the loader thread\n");
        goto done;
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
    KC_INFO("stopped");
    exit_code = s->exit_code;
done:
    if (s->mhd != NULL) {
        srv_http_stop(s);
    }
    if (s->sch != NULL) {
        sch_free(s->sch); /* emits terminal events for anything still alive */
        s->sch = NULL;
    }
    drain_events(s);
    if (loop_ok) {
        /* Close whatever is still open (failure paths) and let libuv finish. */
        uv_walk(&s->loop, close_walk, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
    }
    free(s->evq);
    pthread_mutex_destroy(&s->ev_lock);
    models_free(&s->models);
    free(s->tok_buf);
    free(s);
    return exit_code;
}
