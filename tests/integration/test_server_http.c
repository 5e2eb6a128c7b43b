/* Integration tests of `kvcast serve`: start the real binary on 127.0.0.1 with --port 0, read
 * the printed port, and speak HTTP/1.1 over plain sockets: completions (plain and SSE), every
 * error row of RELIABILITY section C that HTTP can reach, auth, CORS, concurrent clients,
 * client disconnects (KV blocks back in the pool), and SIGTERM drain. Every wait is bounded.
 *
 * Model: tests/golden/llama_gqa (vocab 128, 128 positions) with the fixture tokenizer
 * tests/fixtures/tiny_tokenizer. The server binary is $KC_BUILD_DIR/tools/kvcast. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

extern char **environ;

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static const char *ci_find(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        if (strncasecmp(p, needle, n) == 0) {
            return p;
        }
    }
    return NULL;
}

/* ---- server process ---- */

struct server {
    pid_t pid;
    int port;
    char log[64];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void server_wait_ready(struct server *s);

/* Starts kvcast serve with the default test model plus extra args; fails the test if the
 * "listening on" line does not show up within 60 s, or /health is not 200 60 s later (the
 * port is bound before the models load). */
static void server_start(struct server *s, const char *const *extra) {
    const char *bdir = getenv("KC_BUILD_DIR");
    char bin[1024];
    snprintf(bin, sizeof(bin), "%s/tools/kvcast", bdir ? bdir : "build/ci");
    const char *argv[64] = {bin,
                            "serve",
                            "--model",
                            "tests/golden/llama_gqa",
                            "--tokenizer",
                            "tests/fixtures/tiny_tokenizer",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            "0",
                            "--base-kv-mib",
                            "1",
                            "--served-model-name",
                            "tiny"};
    int argc = 14;
    for (int i = 0; extra != NULL && extra[i] != NULL && argc < 62; i++) {
        argv[argc++] = extra[i];
    }
    argv[argc] = NULL;
    int out[2];
    assert_int_equal(pipe(out), 0);
    snprintf(s->log, sizeof(s->log), "/tmp/kc_it_XXXXXX");
    int logfd = mkstemp(s->log);
    assert_true(logfd >= 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, logfd, 2);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    int rc = posix_spawn(&s->pid, bin, &fa, NULL, (char *const *)(uintptr_t)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(logfd);
    assert_int_equal(rc, 0);
    char buf[512];
    size_t len = 0;
    double t0 = now_s();
    s->port = 0;
    while (s->port == 0 && now_s() - t0 < 60.0) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (poll(&p, 1, 500) <= 0) {
            continue;
        }
        ssize_t n = read(out[0], buf + len, sizeof(buf) - 1 - len);
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
        buf[len] = '\0';
        char *p2 = strstr(buf, "listening on http://127.0.0.1:");
        if (p2 != NULL && strchr(p2, '\n') != NULL) {
            s->port = atoi(p2 + strlen("listening on http://127.0.0.1:"));
        }
    }
    close(out[0]);
    if (s->port == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        fail_msg("server did not start; see %s", s->log);
    }
    server_wait_ready(s);
}

/* Sends sig (0: none) and waits up to timeout_s for exit; returns the exit status or -1. */
static int server_wait(struct server *s, int sig, double timeout_s) {
    if (sig != 0) {
        kill(s->pid, sig);
    }
    double t0 = now_s();
    int st = 0;
    while (now_s() - t0 < timeout_s) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) {
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        sleep_ms(20);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    return -1;
}

/* Stops the server and checks a clean exit (0: no LeakSanitizer report either). */
static void server_stop(struct server *s) {
    int rc = server_wait(s, SIGTERM, 30.0);
    if (rc != 0) {
        fail_msg("server exited with %d; log in %s", rc, s->log);
    }
    unlink(s->log);
}

/* ---- HTTP client over plain sockets ---- */

struct resp {
    int status; /* 0: connection closed without a status line */
    char head[8192];
    char *body; /* de-chunked, NUL-terminated */
    size_t body_len;
};

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 20, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            return; /* the server may close early (413, 400): not an error here */
        }
        p += w;
        n -= (size_t)w;
    }
}

static void dechunk(struct resp *r) {
    char *in = r->body;
    size_t n = r->body_len;
    char *out = malloc(n + 1);
    size_t o = 0;
    size_t i = 0;
    while (i < n) {
        char *end = NULL;
        unsigned long sz = strtoul(in + i, &end, 16);
        char *crlf = strstr(in + i, "\r\n");
        if (crlf == NULL || sz == 0) {
            break;
        }
        i = (size_t)(crlf - in) + 2;
        if (i + sz > n) {
            sz = n - i;
        }
        memcpy(out + o, in + i, sz);
        o += sz;
        i += sz + 2;
    }
    out[o] = '\0';
    free(r->body);
    r->body = out;
    r->body_len = o;
}

/* Reads a whole response (the request asked for Connection: close). */
static void read_resp(int fd, struct resp *r) {
    size_t cap = 1 << 16;
    size_t len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    memset(r, 0, sizeof(*r));
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) == 0 && sep != NULL) {
        r->status = atoi(buf + 9);
        size_t hl = (size_t)(sep - buf);
        if (hl >= sizeof(r->head)) {
            hl = sizeof(r->head) - 1;
        }
        memcpy(r->head, buf, hl);
        r->body_len = len - (size_t)(sep + 4 - buf);
        r->body = malloc(r->body_len + 1);
        memcpy(r->body, sep + 4, r->body_len);
        r->body[r->body_len] = '\0';
        if (ci_find(r->head, "Transfer-Encoding: chunked") != NULL) {
            dechunk(r);
        }
    } else {
        r->body = calloc(1, 1);
    }
    free(buf);
}

static void raw(int port, const char *req, size_t len, struct resp *r) {
    int fd = dial(port);
    send_all(fd, req, len);
    read_resp(fd, r);
    close(fd);
}

static void request(int port, const char *method, const char *path, const char *body,
                    const char *extra_headers, struct resp *r) {
    size_t blen = body ? strlen(body) : 0;
    size_t cap = blen + 1024 + (extra_headers ? strlen(extra_headers) : 0);
    char *req = malloc(cap);
    int n = snprintf(req, cap,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, extra_headers ? extra_headers : "",
                     body ? "Content-Type: application/json\r\n" : "", blen);
    memcpy(req + n, body ? body : "", blen);
    raw(port, req, (size_t)n + blen, r);
    free(req);
}

static void post(int port, const char *path, const char *body, struct resp *r) {
    request(port, "POST", path, body, NULL, r);
}

static void resp_free(struct resp *r) {
    free(r->body);
    r->body = NULL;
}

/* Polls /health until 200 ("loading" answers 503 until the models are in). */
static void server_wait_ready(struct server *s) {
    const double t0 = now_s();
    for (;;) {
        struct resp r;
        request(s->port, "GET", "/health", NULL, NULL, &r);
        const int st = r.status;
        resp_free(&r);
        if (st == 200) {
            return;
        }
        if (st != 503 || now_s() - t0 > 60.0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            fail_msg("server not ready (/health %d); see %s", st, s->log);
        }
        sleep_ms(20);
    }
}

static json_t *body_json(const struct resp *r) {
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    if (j == NULL) {
        fail_msg("response is not JSON (%s): %.300s", e.text, r->body);
    }
    return j;
}

/* Checks the OpenAI error shape and status; returns the error's code (static) or "". */
static const char *expect_error(const struct resp *r, int status) {
    static char code[64];
    if (r->status != status) {
        fail_msg("status %d, want %d: %.300s", r->status, status, r->body);
    }
    json_t *j = body_json(r);
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(json_is_string(json_object_get(e, "type")));
    assert_non_null(json_object_get(e, "param"));
    json_t *c = json_object_get(e, "code");
    assert_non_null(c);
    snprintf(code, sizeof(code), "%s", json_is_string(c) ? json_string_value(c) : "");
    json_decref(j);
    return code;
}

/* Value of a metric line "name{labels} value" (first match of prefix), or -1. */
static double metric(int port, const char *prefix) {
    struct resp r;
    request(port, "GET", "/metrics", NULL, NULL, &r);
    double v = -1;
    const char *p = r.body;
    while (p != NULL && *p) {
        if (strncmp(p, prefix, strlen(prefix)) == 0) {
            const char *sp = strchr(p, ' ');
            v = sp ? atof(sp + 1) : -1;
            break;
        }
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    resp_free(&r);
    return v;
}

/* Concatenated text of an SSE body; checks every event is JSON and it ends with [DONE]. */
static void sse_text(const struct resp *r, char *text, size_t cap, char *finish, size_t fcap,
                     int *n_events, json_t **usage) {
    text[0] = '\0';
    finish[0] = '\0';
    *n_events = 0;
    bool done = false;
    char *copy = strdup(r->body);
    char *save = NULL;
    for (char *ev = strtok_r(copy, "\n", &save); ev != NULL; ev = strtok_r(NULL, "\n", &save)) {
        if (ev[0] == ':') {
            continue; /* heartbeat comment */
        }
        assert_int_equal(strncmp(ev, "data: ", 6), 0);
        assert_false(done);
        if (strcmp(ev + 6, "[DONE]") == 0) {
            done = true;
            continue;
        }
        json_error_t e;
        json_t *j = json_loads(ev + 6, 0, &e);
        if (j == NULL) {
            fail_msg("SSE event is not JSON: %s", ev);
        }
        (*n_events)++;
        assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
        json_t *choices = json_object_get(j, "choices");
        if (json_array_size(choices) == 0 && usage != NULL) {
            *usage = json_incref(json_object_get(j, "usage"));
        }
        for (size_t i = 0; i < json_array_size(choices); i++) {
            json_t *c = json_array_get(choices, i);
            strncat(text, json_string_value(json_object_get(c, "text")), cap - strlen(text) - 1);
            json_t *f = json_object_get(c, "finish_reason");
            if (json_is_string(f)) {
                snprintf(finish, fcap, "%s", json_string_value(f));
            }
        }
        json_decref(j);
    }
    free(copy);
    assert_true(done);
}

/* ---- tests ---- */

static struct server g_srv; /* shared by the tests that do not need special settings */

static int setup_server(void **state) {
    (void)state;
    static const char *const extra[] = {"--max-body-bytes",
                                        "65536",
                                        "--heartbeat-ms",
                                        "200",
                                        "--disconnect-check-ms",
                                        "50",
                                        "--cors-allow-origins",
                                        "https://ok.example",
                                        NULL};
    server_start(&g_srv, extra);
    return 0;
}

static int teardown_server(void **state) {
    (void)state;
    server_stop(&g_srv);
    return 0;
}

static void test_health_models_metrics(void **state) {
    (void)state;
    struct resp r;
    request(g_srv.port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    request(g_srv.port, "GET", "/v1/models", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "id")), "tiny");
    assert_int_equal(json_integer_value(json_object_get(m, "max_model_len")), 128);
    assert_string_equal(json_string_value(json_object_get(m, "owned_by")), "kvcast");
    assert_true(json_is_string(json_object_get(m, "root")));
    json_decref(j);
    resp_free(&r);
    request(g_srv.port, "GET", "/metrics", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "# TYPE kvcast:time_to_first_token_seconds histogram"));
    assert_non_null(strstr(r.body, "kvcast:kv_cache_usage_perc{"));
    resp_free(&r);
}

static void test_completion_non_stream_shape_and_usage(void **state) {
    (void)state;
    struct resp r;
    post(g_srv.port, "/v1/completions",
         "{\"model\":\"tiny\",\"prompt\":\"the cat\",\"max_tokens\":6,\"temperature\":0,"
         "\"ignore_eos\":true}",
         &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_int_equal(strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5), 0);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "tiny");
    assert_true(json_is_integer(json_object_get(j, "created")));
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), 0);
    assert_true(json_is_string(json_object_get(c, "text")));
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 6);
    int pt = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    assert_true(pt > 0);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), pt + 6);
    json_t *t = json_object_get(j, "timings");
    assert_true(json_is_number(json_object_get(t, "ttft_ms")));
    assert_true(json_is_string(json_object_get(t, "prefill_mode")));
    json_decref(j);
    resp_free(&r);
}

static void test_stream_matches_non_stream_text(void **state) {
    (void)state;
    const char *base = "{\"prompt\":[5,6,7,8],\"max_tokens\":20,\"temperature\":0,"
                       "\"ignore_eos\":true";
    char body[512];
    struct resp r;
    snprintf(body, sizeof(body), "%s}", base);
    post(g_srv.port, "/v1/completions", body, &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    char want[4096];
    snprintf(want, sizeof(want), "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    resp_free(&r);
    snprintf(body, sizeof(body), "%s,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             base);
    post(g_srv.port, "/v1/completions", body, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(ci_find(r.head, "Content-Type: text/event-stream"));
    char text[4096];
    char finish[32];
    int n_events = 0;
    json_t *usage = NULL;
    sse_text(&r, text, sizeof(text), finish, sizeof(finish), &n_events, &usage);
    assert_string_equal(text, want);
    assert_string_equal(finish, "length");
    assert_non_null(usage);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 20);
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 4);
    json_decref(usage);
    resp_free(&r);
}

static void test_stop_string_cuts_text(void **state) {
    (void)state;
    /* Learn what greedy decoding produces, then stop on a piece of it. */
    struct resp r;
    const char *body = "{\"prompt\":\"the cat\",\"max_tokens\":24,\"temperature\":0,"
                       "\"ignore_eos\":true}";
    post(g_srv.port, "/v1/completions", body, &r);
    json_t *j = body_json(&r);
    char full[4096];
    snprintf(full, sizeof(full), "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    resp_free(&r);
    size_t n = strlen(full);
    if (n < 6) {
        skip();
    }
    char stop[8];
    memcpy(stop, full + n / 2, 2);
    stop[2] = '\0';
    json_t *req = json_pack("{s:s,s:i,s:i,s:b,s:s,s:b}", "prompt", "the cat", "max_tokens", 24,
                            "temperature", 0, "ignore_eos", 1, "stop", stop, "stream", 0);
    for (int stream = 0; stream < 2; stream++) {
        json_object_set_new(req, "stream", json_boolean(stream));
        char *b = json_dumps(req, JSON_COMPACT);
        post(g_srv.port, "/v1/completions", b, &r);
        free(b);
        assert_int_equal(r.status, 200);
        const char *cut = strstr(full, stop);
        char want[4096];
        snprintf(want, sizeof(want), "%.*s", (int)(cut - full), full);
        if (stream) {
            char text[4096];
            char finish[32];
            int ne = 0;
            sse_text(&r, text, sizeof(text), finish, sizeof(finish), &ne, NULL);
            assert_string_equal(text, want);
            assert_string_equal(finish, "stop");
        } else {
            json_t *o = body_json(&r);
            json_t *c = json_array_get(json_object_get(o, "choices"), 0);
            assert_string_equal(json_string_value(json_object_get(c, "text")), want);
            assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
            assert_string_equal(json_string_value(json_object_get(c, "stop_reason")), stop);
            json_decref(o);
        }
        resp_free(&r);
    }
    json_decref(req);
}

static void test_n_and_prompt_arrays_give_all_choices(void **state) {
    (void)state;
    struct resp r;
    post(g_srv.port, "/v1/completions",
         "{\"prompt\":[[1,2],[3,4,5]],\"n\":2,\"max_tokens\":3,\"ignore_eos\":true,\"seed\":7,"
         "\"logprobs\":2}",
         &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *ch = json_object_get(j, "choices");
    assert_int_equal(json_array_size(ch), 4);
    for (size_t i = 0; i < 4; i++) {
        json_t *c = json_array_get(ch, i);
        assert_int_equal(json_integer_value(json_object_get(c, "index")), (json_int_t)i);
        json_t *lp = json_object_get(c, "logprobs");
        assert_int_equal(json_array_size(json_object_get(lp, "token_logprobs")), 3);
        assert_int_equal(json_array_size(json_object_get(lp, "top_logprobs")), 3);
    }
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 5);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 12);
    json_decref(j);
    resp_free(&r);
}

static void test_tokenize_detokenize_roundtrip(void **state) {
    (void)state;
    struct resp r;
    post(g_srv.port, "/tokenize", "{\"prompt\":\"the mat\"}", &r);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *toks = json_object_get(j, "tokens");
    assert_true(json_array_size(toks) > 0);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), json_array_size(toks));
    json_t *req = json_pack("{s:O}", "tokens", toks);
    char *b = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    json_decref(j);
    resp_free(&r);
    post(g_srv.port, "/detokenize", b, &r);
    free(b);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "prompt")), "the mat");
    json_decref(j);
    resp_free(&r);
}

struct raw_case {
    const char *name;
    const char *req; /* a whole raw request, or NULL: POST body to /v1/completions */
    const char *body;
    int status; /* 0: the server may also just close the connection */
    const char *code;
};

static void test_error_rows_over_http(void **state) {
    (void)state;
#define JSON_HDR "Host: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
    static const struct raw_case cases[] = {
        {"C4 malformed", NULL, "{", 400, NULL},
        {"C4 empty", NULL, "", 400, NULL},
        {"C4 trailing garbage", NULL, "{\"prompt\":[1]} x", 400, NULL},
        {"C4 root array", NULL, "[1]", 400, NULL},
        {"C5 invalid utf8", NULL, "{\"prompt\":\"\xff\"}", 400, NULL},
        {"C5 lone surrogate", NULL, "{\"prompt\":\"\\ud800\"}", 400, NULL},
        {"C5 NUL escape", NULL, "{\"prompt\":\"a\\u0000\"}", 400, NULL},
        {"C6 duplicate", NULL, "{\"prompt\":[1],\"prompt\":[2]}", 400, NULL},
        {"C8 max_tokens", NULL, "{\"prompt\":[1],\"max_tokens\":-1}", 400, NULL},
        {"C9 NaN", NULL, "{\"prompt\":[1],\"temperature\":NaN}", 400, NULL},
        {"C10 n", NULL, "{\"prompt\":[1],\"n\":1000000}", 400, NULL},
        {"C12 stop", NULL, "{\"prompt\":[1],\"stop\":\"\"}", 400, NULL},
        {"C13 token id", NULL, "{\"prompt\":[128]}", 400, NULL},
        {"C14 context", NULL, "{\"prompt\":[1,2,3],\"max_tokens\":126}", 400,
         "context_length_exceeded"},
        {"C14 context text", NULL, "{\"prompt\":\"the cat sat on the mat\",\"max_tokens\":120}",
         400, "context_length_exceeded"},
        {"C15 empty prompt", NULL, "{\"prompt\":\"\"}", 400, NULL},
        /* Unknown fields are ignored by default (test_server_request_http.py); a field that
         * would change the output contract is still refused. */
        {"C16 unsupported field", NULL, "{\"prompt\":[1],\"guided_choice\":[\"a\"]}", 400, NULL},
        {"model unknown", NULL, "{\"prompt\":[1],\"model\":\"gpt-4\"}", 404, "model_not_found"},
        {"C17 GET completions",
         "GET /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", NULL, 405,
         NULL},
        {"C17 unknown path", "GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
         NULL, 404, NULL},
        {"C17 content type",
         "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
         "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
         NULL, 415, NULL},
        {"C1 body over limit",
         "POST /v1/completions HTTP/1.1\r\n" JSON_HDR "Content-Length: 10485760\r\n\r\n", NULL, 413,
         NULL},
        {"C3 CL+TE",
         "POST /v1/completions HTTP/1.1\r\n" JSON_HDR
         "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         NULL, 400, NULL},
        {"C3 TE gzip",
         "POST /v1/completions HTTP/1.1\r\n" JSON_HDR "Transfer-Encoding: gzip\r\n\r\n", NULL, 400,
         NULL},
        {"C3 TE chunked,gzip",
         "POST /v1/completions HTTP/1.1\r\n" JSON_HDR "Transfer-Encoding: chunked, gzip\r\n\r\n",
         NULL, 400, NULL},
        {"D5 Host rebinding",
         "GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", NULL, 403,
         NULL},
        {"chat without messages",
         "POST /v1/chat/completions HTTP/1.1\r\n" JSON_HDR "Content-Length: 2\r\n\r\n{}", NULL, 400,
         NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct resp r;
        if (cases[i].req != NULL) {
            raw(g_srv.port, cases[i].req, strlen(cases[i].req), &r);
        } else {
            post(g_srv.port, "/v1/completions", cases[i].body, &r);
        }
        if (r.status != cases[i].status) {
            fail_msg("%s: status %d, want %d: %.200s", cases[i].name, r.status, cases[i].status,
                     r.body);
        }
        const char *code = expect_error(&r, cases[i].status);
        if (cases[i].code != NULL) {
            assert_string_equal(code, cases[i].code);
        }
        if (cases[i].status == 405) {
            assert_non_null(ci_find(r.head, "Allow: POST"));
        }
        if (cases[i].status == 413 || strncmp(cases[i].name, "C3", 2) == 0) {
            assert_non_null(ci_find(r.head, "Connection: close"));
        }
        resp_free(&r);
    }
    /* The server keeps serving after the sweep. */
    struct resp r;
    request(g_srv.port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_hostile_bodies_get_4xx_and_server_survives(void **state) {
    (void)state;
    /* C7: 10k-deep nesting (100k would exceed the 64 KiB body cap of this server). */
    size_t depth = 60000;
    char *deep = malloc(depth + 1);
    memset(deep, '[', depth);
    deep[depth] = '\0';
    struct resp r;
    double t0 = now_s();
    post(g_srv.port, "/v1/completions", deep, &r);
    expect_error(&r, 400);
    assert_true(now_s() - t0 < 5.0);
    resp_free(&r);
    free(deep);
    /* C2: a chunked body growing past the cap is cut off (413 or a dropped connection). */
    int fd = dial(g_srv.port);
    const char *head =
        "POST /v1/completions HTTP/1.1\r\n" JSON_HDR "Transfer-Encoding: chunked\r\n\r\n";
    send_all(fd, head, strlen(head));
    char chunk[4096 + 16];
    int hl = snprintf(chunk, sizeof(chunk), "1000\r\n");
    memset(chunk + hl, ' ', 4096);
    memcpy(chunk + hl + 4096, "\r\n", 2);
    for (int i = 0; i < 40; i++) {
        send_all(fd, chunk, (size_t)hl + 4098);
    }
    read_resp(fd, &r);
    close(fd);
    assert_true(r.status == 0 || r.status == 413);
    resp_free(&r);
    /* C18: huge header -> 431 (or a close) from libmicrohttpd. */
    size_t hsz = 100 * 1024;
    char *big = malloc(hsz + 256);
    int n = snprintf(big, 256, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ");
    memset(big + n, 'a', hsz);
    memcpy(big + n + hsz, "\r\n\r\n", 5);
    raw(g_srv.port, big, (size_t)n + hsz + 4, &r);
    assert_true(r.status == 0 || r.status == 431);
    resp_free(&r);
    free(big);
    /* Wrong types and extreme numbers for every numeric field. */
    static const char *const fields[] = {"max_tokens",
                                         "temperature",
                                         "top_p",
                                         "top_k",
                                         "min_p",
                                         "n",
                                         "logprobs",
                                         "presence_penalty",
                                         "frequency_penalty",
                                         "repetition_penalty"};
    static const char *const vals[] = {"-3", "1e308", "\"x\"", "[]", "null2", "9e999"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        for (size_t k = 0; k < sizeof(vals) / sizeof(vals[0]); k++) {
            char body[256];
            snprintf(body, sizeof(body), "{\"prompt\":[1],\"%s\":%s}", fields[i], vals[k]);
            post(g_srv.port, "/v1/completions", body, &r);
            if (!(r.status >= 400 && r.status < 500)) {
                fail_msg("%s -> %d", body, r.status);
            }
            resp_free(&r);
        }
    }
    request(g_srv.port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_cors_only_for_allowed_origins(void **state) {
    (void)state;
    struct resp r;
    request(g_srv.port, "GET", "/v1/models", NULL, "Origin: https://evil.example\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_null(ci_find(r.head, "Access-Control-Allow-Origin"));
    resp_free(&r);
    request(g_srv.port, "GET", "/v1/models", NULL, "Origin: https://ok.example\r\n", &r);
    assert_non_null(ci_find(r.head, "Access-Control-Allow-Origin: https://ok.example"));
    resp_free(&r);
    request(g_srv.port, "OPTIONS", "/v1/completions", NULL,
            "Origin: https://ok.example\r\nAccess-Control-Request-Method: POST\r\n", &r);
    assert_int_equal(r.status, 204);
    assert_non_null(ci_find(r.head, "Access-Control-Allow-Methods: POST"));
    assert_null(strstr(r.head, "Access-Control-Allow-Origin: *"));
    resp_free(&r);
}

struct client_arg {
    int port;
    int status;
    int done_ok;
};

static void *client_main(void *p) {
    struct client_arg *a = p;
    struct resp r;
    post(a->port, "/v1/completions",
         "{\"prompt\":[1,2,3,4],\"max_tokens\":16,\"ignore_eos\":true,\"stream\":true}", &r);
    a->status = r.status;
    a->done_ok = strstr(r.body, "data: [DONE]") != NULL;
    resp_free(&r);
    return NULL;
}

static void test_concurrent_clients_all_finish(void **state) {
    (void)state;
    enum { N = 12 };
    pthread_t th[N];
    struct client_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct client_arg){.port = g_srv.port};
        pthread_create(&th[i], NULL, client_main, &args[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].status, 200);
        assert_true(args[i].done_ok);
    }
}

/* Waits until the base KV pool is empty and nothing runs (bounded). */
static void wait_kv_free(int port, double timeout_s) {
    double t0 = now_s();
    double kv = -1;
    double running = -1;
    while (now_s() - t0 < timeout_s) {
        kv = metric(port, "kvcast:kv_cache_usage_perc{model_name=\"tiny\",pool=\"base\"}");
        running = metric(port, "kvcast:num_requests_running");
        if (kv == 0.0 && running == 0.0) {
            return;
        }
        sleep_ms(50);
    }
    fail_msg("KV not returned: usage %g running %g", kv, running);
}

static void test_client_disconnect_cancels_and_frees_kv(void **state) {
    (void)state;
    static const char *const extra[] = {"--debug-step-delay-ms",
                                        "20",
                                        "--heartbeat-ms",
                                        "100",
                                        "--disconnect-check-ms",
                                        "20",
                                        NULL};
    struct server s;
    server_start(&s, extra);
    const char *abort_metric =
        "kvcast:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}";
    for (int stream = 1; stream >= 0; stream--) {
        double aborts = metric(s.port, abort_metric);
        int fd = dial(s.port);
        char req[512];
        const char *body = stream ? "{\"prompt\":[1,2,3],\"max_tokens\":100,\"ignore_eos\":true,"
                                    "\"stream\":true}"
                                  : "{\"prompt\":[1,2,3],\"max_tokens\":100,\"ignore_eos\":true}";
        int n =
            snprintf(req, sizeof(req),
                     "POST /v1/completions HTTP/1.1\r\n" JSON_HDR "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
        send_all(fd, req, (size_t)n);
        if (stream) {
            /* Read until the first token arrived, then hang up mid-stream. */
            char buf[4096];
            size_t got = 0;
            while (got < sizeof(buf) - 1) {
                ssize_t k = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
                assert_true(k > 0);
                got += (size_t)k;
                buf[got] = '\0';
                if (strstr(buf, "data: {") != NULL) {
                    break;
                }
            }
        } else {
            sleep_ms(300);
        }
        assert_true(
            metric(s.port, "kvcast:kv_cache_usage_perc{model_name=\"tiny\",pool=\"base\"}") > 0.0);
        double t_close = now_s();
        close(fd);
        wait_kv_free(s.port, 2.0);
        /* 100 tokens x 20 ms = 2 s if nothing cancelled; the cancel must come much sooner. */
        assert_true(now_s() - t_close < 1.0);
        assert_true(metric(s.port, abort_metric) >= aborts + 1);
    }
    server_stop(&s);
}

struct drain_arg {
    int port;
    char finish[32];
    int status;
};

static void *drain_client(void *p) {
    struct drain_arg *a = p;
    struct resp r;
    post(a->port, "/v1/completions",
         "{\"prompt\":[1,2,3],\"max_tokens\":40,\"ignore_eos\":true,\"stream\":true}", &r);
    a->status = r.status;
    char text[8192];
    int ne = 0;
    if (r.status == 200) {
        sse_text(&r, text, sizeof(text), a->finish, sizeof(a->finish), &ne, NULL);
    }
    resp_free(&r);
    return NULL;
}

static void test_sigterm_drains_running_streams(void **state) {
    (void)state;
    static const char *const extra[] = {"--debug-step-delay-ms", "15", "--shutdown-timeout-s", "20",
                                        NULL};
    struct server s;
    server_start(&s, extra);
    enum { N = 3 };
    pthread_t th[N];
    struct drain_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct drain_arg){.port = s.port};
        pthread_create(&th[i], NULL, drain_client, &args[i]);
    }
    /* Wait until all three are running. */
    double t0 = now_s();
    while (metric(s.port, "kvcast:num_requests_running") < N && now_s() - t0 < 5.0) {
        sleep_ms(20);
    }
    kill(s.pid, SIGTERM);
    sleep_ms(100);
    struct resp r;
    request(s.port, "GET", "/health", NULL, NULL, &r);
    assert_int_equal(r.status, 503);
    resp_free(&r);
    post(s.port, "/v1/completions", "{\"prompt\":[1],\"max_tokens\":2}", &r);
    expect_error(&r, 503);
    assert_non_null(ci_find(r.head, "Retry-After:"));
    resp_free(&r);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].status, 200);
        assert_string_equal(args[i].finish, "length");
    }
    int rc = server_wait(&s, 0, 20.0);
    if (rc != 0) {
        fail_msg("exit %d after drain; log %s", rc, s.log);
    }
    unlink(s.log);
}

static void test_second_sigterm_stops_at_once(void **state) {
    (void)state;
    static const char *const extra[] = {"--debug-step-delay-ms", "30", NULL};
    struct server s;
    server_start(&s, extra);
    pthread_t th;
    struct drain_arg a = {.port = s.port};
    pthread_create(&th, NULL, drain_client, &a);
    double t0 = now_s();
    while (metric(s.port, "kvcast:num_requests_running") < 1 && now_s() - t0 < 5.0) {
        sleep_ms(20);
    }
    kill(s.pid, SIGTERM);
    /* Standard signals do not queue: a second SIGTERM sent before the first is handled
     * merges with it. Send it once the server shows it is draining (/health 503). */
    t0 = now_s();
    for (;;) {
        struct resp h;
        request(s.port, "GET", "/health", NULL, NULL, &h);
        const int st = h.status;
        resp_free(&h);
        if (st == 503 || now_s() - t0 > 20.0) {
            break;
        }
        sleep_ms(10);
    }
    kill(s.pid, SIGTERM);
    int rc = server_wait(&s, 0, 30.0);
    pthread_join(th, NULL);
    if (rc != 0) {
        fail_msg("exit %d; log %s", rc, s.log);
    }
    /* 40 tokens x 30 ms would take 1.2 s: the second signal cut it short. */
    assert_true(strcmp(a.finish, "abort") == 0 || a.status != 200 || a.finish[0] == '\0');
    unlink(s.log);
}

static void test_api_key_required_and_never_logged(void **state) {
    (void)state;
    static const char *const extra[] = {"--api-key", "s3cret-key-XYZ", NULL};
    struct server s;
    server_start(&s, extra);
    struct resp r1;
    struct resp r2;
    request(s.port, "GET", "/v1/models", NULL, NULL, &r1);
    request(s.port, "GET", "/v1/models", NULL, "Authorization: Bearer wrong\r\n", &r2);
    expect_error(&r1, 401);
    expect_error(&r2, 401);
    assert_string_equal(r1.body, r2.body); /* D1: identical bodies */
    resp_free(&r1);
    resp_free(&r2);
    static const char *const bad[] = {"Authorization: Basic czNjcmV0LWtleS1YWVo=\r\n",
                                      "Authorization: Bearer s3cret-key-XY\r\n",
                                      "Authorization: Bearer s3cret-key-XYZZ\r\n"};
    for (size_t i = 0; i < 3; i++) {
        request(s.port, "POST", "/v1/completions", "{\"prompt\":[1]}", bad[i], &r1);
        expect_error(&r1, 401);
        resp_free(&r1);
    }
    request(s.port, "GET", "/v1/models", NULL, "Authorization: bearer s3cret-key-XYZ\r\n", &r1);
    assert_int_equal(r1.status, 200);
    resp_free(&r1);
    request(s.port, "POST", "/tokenize", "{\"prompt\":\"a\"}", NULL, &r1);
    expect_error(&r1, 401);
    resp_free(&r1);
    request(s.port, "GET", "/health", NULL, NULL, &r1);
    assert_int_equal(r1.status, 200);
    resp_free(&r1);
    char log[64];
    snprintf(log, sizeof(log), "%s", s.log);
    int rc = server_wait(&s, SIGTERM, 20.0);
    assert_int_equal(rc, 0);
    /* D6: the key is in no log line. */
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        assert_null(strstr(line, "s3cret"));
    }
    fclose(f);
    unlink(log);
}

static void test_queue_full_gets_503_with_retry_after(void **state) {
    (void)state;
    static const char *const extra[] = {"--debug-step-delay-ms", "10", "--max-queue", "1",
                                        "--max-running",         "1",  NULL};
    struct server s;
    server_start(&s, extra);
    enum { N = 8 };
    pthread_t th[N];
    struct client_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct client_arg){.port = s.port};
        pthread_create(&th[i], NULL, client_main, &args[i]);
    }
    int ok = 0;
    int busy = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].status == 200;
        busy += args[i].status == 503;
    }
    assert_int_equal(ok + busy, N);
    assert_true(ok >= 1);
    assert_true(busy >= 1);
    server_stop(&s);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_health_models_metrics),
        cmocka_unit_test(test_completion_non_stream_shape_and_usage),
        cmocka_unit_test(test_stream_matches_non_stream_text),
        cmocka_unit_test(test_stop_string_cuts_text),
        cmocka_unit_test(test_n_and_prompt_arrays_give_all_choices),
        cmocka_unit_test(test_tokenize_detokenize_roundtrip),
        cmocka_unit_test(test_error_rows_over_http),
        cmocka_unit_test(test_hostile_bodies_get_4xx_and_server_survives),
        cmocka_unit_test(test_cors_only_for_allowed_origins),
        cmocka_unit_test(test_concurrent_clients_all_finish),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_client_disconnect_cancels_and_frees_kv),
        cmocka_unit_test(test_sigterm_drains_running_streams),
        cmocka_unit_test(test_second_sigterm_stops_at_once),
        cmocka_unit_test(test_api_key_required_and_never_logged),
        cmocka_unit_test(test_queue_full_gets_503_with_retry_after),
    };
    int rc = cmocka_run_group_tests_name("shared server", shared, setup_server, teardown_server);
    rc |= cmocka_run_group_tests_name("own server", own, NULL, NULL);
    return rc;
}
