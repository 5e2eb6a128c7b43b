/*
 * completions.c — POST /v1/completions and POST /v1/chat/completions: validate, tokenize (a
 * chat renders its messages first: server/chat.c), submit one scheduler request per choice
 * (prompts x n), and turn the scheduler's events into OpenAI/vLLM-shaped output: SSE chunks
 * (`data: {...}\n\n` ... `data: [DONE]\n\n`) or one JSON body. Both routes share everything
 * from the prepare job on; only the JSON shapes differ (DESIGN 9).
 *
 * Thread rules: loop thread only (see server_internal.h), except prep_work, which parses the
 * body and tokenizes the prompts on libuv's threadpool (uv_queue_work) so that a 4 MiB
 * prompt never stalls the loop (/health, streams, other requests). While that job runs the
 * completion is PREPARING: the connection is suspended, the job owns cmp->body and cmp->req,
 * and the loop thread touches neither; the job only reads `struct srv` fields that are
 * immutable while serving (lim, tok) and checks the atomic `abandon` between prompts.
 * The encode path is safe to run on several threads at once: eng_tok_encode keeps all its
 * scratch in the call (tokenizer/tokenizer.h). Scheduler events reach this file through
 * srv_completions_on_event after the async drain.
 *
 * Lifecycle of one completion:
 *   PREPARING (job queued or running; counts as live for shutdown) -> prep_done on the loop:
 *   READY (resume the connection) -> the handler runs again (srv_completions_resumed):
 *   validate the result, submit, answer -> RUNNING. A client that goes away or a shutdown
 *   while PREPARING sets `abandon` (the job stops before its next prompt; uv_cancel drops a
 *   job not yet started) and the completion is freed in prep_done, never before.
 *
 * DESIGN
 *   1. Stop strings are matched on detokenized text (server/util.h srv_stop): text that could
 *      still start a stop string is held back; a match cuts the text, finishes the choice
 *      with finish_reason "stop" and stop_reason = the string, and sch_cancel(id, STOP) ends
 *      the generation. Tokens arriving after that are ignored.
 *   2. A streaming response is queued at once (200, text/event-stream); its content reader
 *      copies from `out`, suspends the connection when `out` is empty, and is resumed when
 *      an event adds bytes, when a heartbeat is due, or when the client is gone.
 *   3. A non-streaming request keeps its connection suspended until every choice finished;
 *      the body is then built and the handler (called again after the resume) queues it.
 *   4. Usage counts the tokens each choice produced up to and including the one that
 *      completed a stop string; prompt tokens count once per prompt.
 *   5. Text prompts are encoded with a token limit (prompt + max_tokens must fit the context),
 *      so an oversized prompt fails with 400 context_length_exceeded after encoding at most
 *      max_context tokens of it, not after encoding all of it.
 *   6. stop_token_ids and min_tokens are enforced by the scheduler (finish STOP); stop
 *      strings are ignored until min_tokens tokens were generated, as vLLM does.
 *   7. `timings` are the scheduler's (scheduler.h states their relations), plus
 *      tokenize_ms: from the whole body being received to the end of its prepare job
 *      (queueing on the threadpool, JSON parse, tokenization); it ends before the
 *      scheduler's clock starts, so it is not part of queue_ms or ttft_ms. The prefix cache
 *      and refinement add cached_tokens, base_cached_tokens, refine, refined_at_token (null
 *      unless swapped) and refine_ms; usage.prompt_tokens_details.cached_tokens sums the
 *      cached tokens once per prompt, like prompt_tokens (DESIGN 4).
 *   8. This file speaks OpenAI semantics only: HTTP goes through http.c's seam
 *      (server_internal.h: srv_send*, srv_http_suspend/resume, srv_http_stream_begin,
 *      srv_http_peer_check), which alone calls libmicrohttpd and adds CORS headers.
 *   9. Chat (req.chat) differs from /v1/completions in shapes only: object "chat.completion"
 *      / "chat.completion.chunk", id "chatcmpl-...", choices[].message {role, content} or
 *      delta; logprobs {"content": [{token, logprob, bytes, top_logprobs: [top n]}]}. A chat
 *      stream sends per choice a first delta {role: "assistant", content: ""}, content
 *      deltas, then a last chunk whose delta is empty and which carries finish_reason (text
 *      still held back by the stop matcher goes out in a content delta just before it); then
 *      the usage chunk (include_usage) and [DONE], as /v1/completions.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "server/server_internal.h"

_Static_assert(sizeof(struct srv_logit_bias) == sizeof(struct sch_logit_bias) &&
                   offsetof(struct srv_logit_bias, id) == offsetof(struct sch_logit_bias, id) &&
                   offsetof(struct srv_logit_bias, bias) == offsetof(struct sch_logit_bias, bias),
               "srv_logit_bias and sch_logit_bias must share one layout");

struct srv_choice {
    struct srv_completion *cmp;
    int index;  /* position in the response's choices */
    int prompt; /* index into req.prompts */
    uint64_t sch_id;
    bool submitted;
    bool terminal;  /* the scheduler's terminal event arrived */
    bool text_done; /* no more text: stop string matched, or terminal */
    struct eng_tok_stream ts;
    struct srv_stop stop;
    struct srv_buf text; /* non-stream: the whole text */
    int n_tokens;
    enum sch_finish finish; /* SCH_FINISH_NONE until the choice ends; named only in JSON */
    int stop_index;         /* matched stop string, -1 none */
    int32_t last_token;     /* for stop_reason when a stop_token_id ended the choice */
    int error;              /* KC_E* from SCH_EV_ERROR, 0 none */
    char errmsg[256];
    struct sch_timings timings;
    bool have_timings;
    double t_last_token;
    json_t *lp; /* non-stream logprobs object, NULL without logprobs; stream: the prompt's */
    size_t text_offset;
    size_t prompt_offset; /* echo + logprobs: text_offset of the next prompt token */
};

struct srv_completion {
    struct srv *srv;
    struct srv_conn *conn; /* NULL once the HTTP request ended */
    struct srv_completion *prev;
    struct srv_completion *next;
    struct srv_completion_req req;
    struct srv_choice *choices;
    int n_choices;
    int n_live; /* submitted choices still waiting for their terminal event */
    bool stream;
    bool prompt_lp; /* echo + logprobs: prompt logprobs lead each choice's logprobs */
    bool suspended;
    bool client_gone;
    bool timed_out;
    bool eof; /* stream: [DONE] is in out */
    bool resp_alive;
    bool result_built;
    struct srv_buf out; /* stream bytes not yet handed to MHD */
    double t_start;
    double t_last_write;
    char id[48];
    long long created;
    int prompt_tokens;
    /* PREPARING: the threadpool job (see the header comment) */
    uv_work_t work;
    bool preparing;                   /* the job is waiting, queued or running */
    bool work_queued;                 /* handed to uv_queue_work (else waiting in prep_wait) */
    bool prep_big;                    /* body over PREP_SMALL_BYTES: counts against prep_max */
    struct srv_completion *prep_next; /* prep_wait link */
    bool ready; /* the job finished; the handler has not started the request yet */
    atomic_bool abandon;
    struct srv_buf body; /* taken from the connection; the job frees it */
    int prep_rc;
    struct srv_error prep_err;
    bool tokenize_route; /* POST /tokenize: the job builds the whole answer into `out` */
    bool chat_route;     /* POST /v1/chat/completions: the job parses and renders a chat */
    double t_prep;       /* the prepare job was queued (whole body received) */
    double tokenize_ms;  /* t_prep -> the job's end, on the loop thread */
};

/* ---- lifetime ---- */

static void choice_free(struct srv_choice *ch) {
    srv_stop_free(&ch->stop);
    srv_buf_free(&ch->text);
    json_decref(ch->lp);
}

static void completion_free(struct srv_completion *cmp) {
    struct srv *s = cmp->srv;
    if (cmp->prev != NULL) {
        cmp->prev->next = cmp->next;
    } else if (s->active == cmp) {
        s->active = cmp->next;
    }
    if (cmp->next != NULL) {
        cmp->next->prev = cmp->prev;
    }
    s->n_active--;
    for (int i = 0; i < cmp->n_choices; i++) {
        choice_free(&cmp->choices[i]);
    }
    free(cmp->choices);
    srv_completion_req_free(&cmp->req);
    srv_buf_free(&cmp->out);
    srv_buf_free(&cmp->body);
    free(cmp);
}

/* Invariant 3 of server_internal.h. */
static void maybe_free(struct srv_completion *cmp) {
    if (cmp->n_live == 0 && cmp->conn == NULL && !cmp->resp_alive && !cmp->preparing) {
        completion_free(cmp);
    }
}

static void cancel_live(struct srv_completion *cmp, enum sch_finish finish) {
    if (cmp->preparing) {
        atomic_store(&cmp->abandon, true);
        if (cmp->work_queued) {
            uv_cancel((uv_req_t *)&cmp->work); /* fails harmlessly once the job runs */
        }
    }
    for (int i = 0; i < cmp->n_choices; i++) {
        struct srv_choice *ch = &cmp->choices[i];
        if (ch->submitted && !ch->terminal) {
            sch_cancel(cmp->srv->sch, ch->sch_id, finish);
        }
    }
}

/* Resumes cmp's connection if it is suspended (and still there). */
static void resume(struct srv_completion *cmp) {
    if (cmp->suspended && cmp->conn != NULL) {
        cmp->suspended = false;
        srv_http_resume(cmp->conn);
    }
}

/* Suspends cmp's connection until resume: a result or stream bytes to come. */
static void suspend(struct srv_completion *cmp) {
    srv_http_suspend(cmp->conn);
    cmp->suspended = true;
}

/* ---- JSON pieces ---- */

static json_t *json_text(const char *p, size_t n) {
    json_t *j = json_stringn(p ? p : "", p ? n : 0);
    /* Detokenized text is valid UTF-8 by construction; never send a NULL. */
    return j != NULL ? j : json_string("");
}

static json_t *json_num(double x) {
    /* json_real refuses NaN/Inf (RELIABILITY B4): clamp to a finite value. */
    if (!isfinite(x)) {
        x = x > 0 ? 3.0e38 : -9999.0;
    }
    return json_real(x);
}

static json_t *timings_json(const struct sch_timings *t, double tokenize_ms) {
    json_t *o = json_object();
    json_object_set_new(o, "tokenize_ms", json_num(tokenize_ms));
    json_object_set_new(o, "queue_ms", json_num(t->queue_ms));
    json_object_set_new(o, "prefill_ms", json_num(t->prefill_ms));
    json_object_set_new(o, "aux_ms", json_num(t->aux_ms));
    json_object_set_new(o, "predict_ms", json_num(t->predict_ms));
    json_object_set_new(o, "base_first_step_ms", json_num(t->base_first_step_ms));
    json_object_set_new(o, "ttft_ms", json_num(t->ttft_ms));
    json_object_set_new(o, "decode_ms", json_num(t->decode_ms));
    json_object_set_new(o, "prefill_mode", json_string(sch_mode_name(t->mode)));
    json_object_set_new(o, "prefill_threads", json_integer(t->prefill_threads));
    /* Prefix cache and refinement (scheduler.h states what each means). */
    json_object_set_new(o, "cached_tokens", json_integer(t->cached_tokens));
    json_object_set_new(o, "base_cached_tokens", json_integer(t->base_cached_tokens));
    json_object_set_new(o, "refine", json_string(sch_refine_result_name(t->refine_result)));
    /* null unless swapped: the scheduler's -1 is its "never" (scheduler.h). */
    const bool swapped = t->refine_result == SCH_REFINE_SWAPPED && t->refined_at_token >= 0;
    json_object_set_new(o, "refined_at_token",
                        swapped ? json_integer(t->refined_at_token) : json_null());
    json_object_set_new(o, "refine_ms", json_num(t->refine_ms));
    return o;
}

static json_t *usage_json(const struct srv_completion *cmp) {
    int gen = 0;
    json_int_t cached = 0;
    for (int i = 0; i < cmp->n_choices; i++) {
        const struct srv_choice *ch = &cmp->choices[i];
        gen += ch->n_tokens;
        /* prompt_tokens counts each prompt once (not once per choice), so do the cached ones:
         * the first choice of each prompt (choices of one prompt are consecutive). */
        if (ch->index % cmp->req.n == 0 && ch->have_timings) {
            cached += ch->timings.cached_tokens;
        }
    }
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(cmp->prompt_tokens));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)cmp->prompt_tokens + gen));
    json_object_set_new(u, "completion_tokens", json_integer(gen));
    /* OpenAI's prefix-cache report: prompt tokens whose prefill the cache saved. */
    json_t *details = json_object();
    json_object_set_new(details, "cached_tokens", json_integer(cached));
    json_object_set_new(u, "prompt_tokens_details", details);
    return u;
}

static json_t *envelope(const struct srv_completion *cmp) {
    json_t *o = json_object();
    const char *object = !cmp->req.chat ? "text_completion"
                         : cmp->stream  ? "chat.completion.chunk"
                                        : "chat.completion";
    json_object_set_new(o, "id", json_string(cmp->id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(cmp->created));
    json_object_set_new(o, "model", json_string(cmp->srv->models.id));
    return o;
}

static json_t *stop_reason_json(const struct srv_choice *ch) {
    if (ch->stop_index >= 0) {
        return json_string(ch->cmp->req.stop[ch->stop_index]);
    }
    const struct srv_completion_req *r = &ch->cmp->req;
    if (ch->finish == SCH_FINISH_STOP && ch->n_tokens > 0) {
        for (int i = 0; i < r->n_stop_token_ids; i++) {
            if (r->stop_token_ids[i] == ch->last_token) {
                return json_integer(ch->last_token); /* vLLM: the stop token's id */
            }
        }
    }
    return json_null();
}

/* Chat's message (a whole answer) or delta (a stream chunk): the assistant's text. A stream's
 * first delta of a choice carries the role, its last one nothing (DESIGN 9). */
static json_t *chat_message(const struct srv_completion *cmp, const char *text, size_t len,
                            bool final) {
    json_t *m = json_object();
    if (!cmp->stream) {
        json_object_set_new(m, "role", json_string("assistant"));
        json_object_set_new(m, "content", json_text(text, len));
    } else if (!final) {
        json_object_set_new(m, "content", json_text(text, len));
    }
    return m;
}

static json_t *choice_json(const struct srv_choice *ch, const char *text, size_t len,
                           json_t *logprobs, bool final) {
    json_t *c = json_object();
    json_object_set_new(c, "index", json_integer(ch->index));
    if (ch->cmp->req.chat) {
        json_object_set_new(c, ch->cmp->stream ? "delta" : "message",
                            chat_message(ch->cmp, text, len, final));
    } else {
        json_object_set_new(c, "text", json_text(text, len));
    }
    json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(c, "finish_reason",
                        final && ch->finish != SCH_FINISH_NONE
                            ? json_string(sch_finish_name(ch->finish))
                            : json_null());
    json_object_set_new(c, "stop_reason", final ? stop_reason_json(ch) : json_null());
    return c;
}

static json_t *logprobs_new(bool chat) {
    json_t *lp = json_object();
    if (chat) {
        json_object_set_new(lp, "content", json_array());
        return lp;
    }
    json_object_set_new(lp, "tokens", json_array());
    json_object_set_new(lp, "token_logprobs", json_array());
    json_object_set_new(lp, "top_logprobs", json_array());
    json_object_set_new(lp, "text_offset", json_array());
    return lp;
}

/* The piece of text one token decodes to on its own (for logprobs' "tokens"). */
static json_t *token_text(const struct srv *s, int32_t id, bool as_ids) {
    if (s->models.tok == NULL || as_ids) {
        char buf[32];
        snprintf(buf, sizeof(buf), "token_id:%d", id);
        return json_string(buf);
    }
    char *t = NULL;
    size_t n = 0;
    if (eng_tok_decode(s->models.tok, &id, 1, 0, &t, &n, NULL) != KC_OK) {
        return json_string("");
    }
    json_t *j = json_text(t, n);
    free(t);
    return j;
}

/* Chat's logprob of one token: {"token", "logprob", "bytes"} (bytes: the UTF-8 of token, as
 * vLLM gives them; a token that ends inside a character decodes to U+FFFD). */
static json_t *chat_logprob(json_t *token, double logprob) {
    json_t *o = json_object();
    json_t *bytes = json_array();
    const unsigned char *p = (const unsigned char *)json_string_value(token);
    for (size_t i = 0; i < json_string_length(token); i++) {
        json_array_append_new(bytes, json_integer(p[i]));
    }
    json_object_set_new(o, "token", token);
    json_object_set_new(o, "logprob", json_num(logprob));
    json_object_set_new(o, "bytes", bytes);
    return o;
}

/* Chat's logprobs of one generated token: the token's, and top_logprobs with the top n
 * alternatives, best first (OpenAI's shape: exactly n, which may or may not hold the token). */
static void chat_logprobs_add(const struct srv *s, json_t *lp, const struct sch_event *ev,
                              bool as_ids) {
    json_t *entry = chat_logprob(token_text(s, ev->token, as_ids), ev->logprob);
    json_t *top = json_array();
    for (int i = 0; i < ev->n_top && i < SCH_MAX_LOGPROBS; i++) {
        json_array_append_new(
            top, chat_logprob(token_text(s, ev->top_ids[i], as_ids), ev->top_logprobs[i]));
    }
    json_object_set_new(entry, "top_logprobs", top);
    json_array_append_new(json_object_get(lp, "content"), entry);
}

/* Appends one position (generated or prompt token) to a logprobs object and returns the
 * length of the token's text. As vLLM, top_logprobs holds the top n and the token itself (so
 * n + 1 entries at most; logprobs 0 gives just the token); the first prompt position, which
 * nothing predicts, has null for both. as_ids: return_tokens_as_token_ids. */
static size_t logprobs_add(const struct srv *s, json_t *lp, const struct sch_event *ev,
                           size_t offset, bool as_ids) {
    json_t *text = token_text(s, ev->token, as_ids);
    const size_t len = json_string_length(text);
    json_t *top = NULL;
    if (ev->has_logprob) {
        top = json_object();
        for (int i = 0; i < ev->n_top && i < SCH_MAX_LOGPROBS; i++) {
            json_t *k = token_text(s, ev->top_ids[i], as_ids);
            json_object_set_new(top, json_string_value(k), json_num(ev->top_logprobs[i]));
            json_decref(k);
        }
        json_object_set_new(top, json_string_value(text), json_num(ev->logprob));
    }
    json_array_append_new(json_object_get(lp, "tokens"), text);
    json_array_append_new(json_object_get(lp, "token_logprobs"),
                          ev->has_logprob ? json_num(ev->logprob) : json_null());
    json_array_append_new(json_object_get(lp, "top_logprobs"), top != NULL ? top : json_null());
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
    return len;
}

/* Appends `data: <json>\n\n` to the stream; takes the reference to o. */
static void sse_append(struct srv_completion *cmp, json_t *o) {
    char *txt = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (txt == NULL) {
        return;
    }
    srv_buf_printf(&cmp->out, "data: %s\n\n", txt);
    free(txt);
    resume(cmp);
}

static void sse_chunk(struct srv_completion *cmp, struct srv_choice *ch, const char *text,
                      size_t len, json_t *logprobs, bool final) {
    if (final && cmp->req.chat && len > 0) {
        /* Chat's last chunk has an empty delta: text still held back goes out before it. */
        sse_chunk(cmp, ch, text, len, logprobs, false);
        text = "";
        len = 0;
        logprobs = NULL;
    }
    json_t *o = envelope(cmp);
    json_t *arr = json_array();
    json_array_append_new(arr, choice_json(ch, text, len, logprobs, final));
    json_object_set_new(o, "choices", arr);
    if (cmp->req.include_usage) {
        json_object_set_new(o, "usage", json_null());
    }
    if (final && ch->have_timings) {
        json_object_set_new(o, "timings", timings_json(&ch->timings, cmp->tokenize_ms));
    }
    sse_append(cmp, o);
}

/* Chat streams open each choice with a delta that names the role (DESIGN 9). */
static void sse_role_chunk(struct srv_completion *cmp, const struct srv_choice *ch) {
    json_t *o = envelope(cmp);
    json_t *c = json_object();
    json_t *delta = json_object();
    json_object_set_new(delta, "role", json_string("assistant"));
    json_object_set_new(delta, "content", json_string(""));
    json_object_set_new(c, "index", json_integer(ch->index));
    json_object_set_new(c, "delta", delta);
    json_object_set_new(c, "logprobs", json_null());
    json_object_set_new(c, "finish_reason", json_null());
    json_t *arr = json_array();
    json_array_append_new(arr, c);
    json_object_set_new(o, "choices", arr);
    if (cmp->req.include_usage) {
        json_object_set_new(o, "usage", json_null());
    }
    sse_append(cmp, o);
}

/* ---- results ---- */

static void build_result(struct srv_completion *cmp) {
    struct srv *s = cmp->srv;
    struct srv_conn *c = cmp->conn;
    cmp->result_built = true;
    if (c == NULL) {
        return;
    }
    if (cmp->stream) {
        if (cmp->req.include_usage) {
            json_t *o = envelope(cmp);
            json_object_set_new(o, "choices", json_array());
            json_object_set_new(o, "usage", usage_json(cmp));
            sse_append(cmp, o);
        }
        srv_buf_printf(&cmp->out, "data: [DONE]\n\n");
        cmp->eof = true;
        resume(cmp);
        return;
    }
    /* Non-stream: a failed choice makes the whole request an error. */
    for (int i = 0; i < cmp->n_choices; i++) {
        const struct srv_choice *ch = &cmp->choices[i];
        if (ch->error != 0) {
            struct srv_error e;
            srv_error_kc(&e, ch->error, NULL, "%s", ch->errmsg);
            size_t len = 0;
            char *body = srv_error_body(&e, &len);
            if (body != NULL) {
                srv_buf_append(&c->pending_body, body, len);
                free(body);
            }
            c->pending_status = e.status;
            c->pending_ready = true;
            resume(cmp);
            return;
        }
    }
    json_t *o = envelope(cmp);
    json_t *arr = json_array();
    for (int i = 0; i < cmp->n_choices; i++) {
        struct srv_choice *ch = &cmp->choices[i];
        json_t *lp = ch->lp;
        ch->lp = NULL;
        json_array_append_new(arr, choice_json(ch, ch->text.p, ch->text.len, lp, true));
    }
    json_object_set_new(o, "choices", arr);
    json_object_set_new(o, "usage", usage_json(cmp));
    if (cmp->n_choices > 0 && cmp->choices[0].have_timings) {
        json_object_set_new(o, "timings", timings_json(&cmp->choices[0].timings, cmp->tokenize_ms));
    }
    char *txt = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (txt != NULL) {
        srv_buf_append(&c->pending_body, txt, strlen(txt));
        free(txt);
    }
    c->pending_status = txt != NULL ? 200 : 500;
    c->pending_ready = true;
    resume(cmp);
    (void)s;
}

/* Text of one event for one choice: detokenize, run the stop matcher, emit. */
static void choice_text(struct srv_completion *cmp, struct srv_choice *ch, const char *piece,
                        size_t n, json_t *chunk_lp) {
    struct srv *s = cmp->srv;
    struct srv_buf emit = {0};
    int m = srv_stop_feed(&ch->stop, piece, n, &emit);
    if (m >= 0) {
        ch->stop_index = m;
        ch->finish = SCH_FINISH_STOP;
        ch->text_done = true;
        sch_cancel(s->sch, ch->sch_id, SCH_FINISH_STOP);
    }
    if (cmp->stream) {
        if (emit.len > 0 || chunk_lp != NULL) {
            sse_chunk(cmp, ch, emit.p, emit.len, chunk_lp, false);
        }
    } else if (emit.len > 0) {
        srv_buf_append(&ch->text, emit.p, emit.len);
    }
    ch->text_offset += emit.len;
    srv_buf_free(&emit);
}

static void on_token(struct srv_completion *cmp, struct srv_choice *ch,
                     const struct sch_event *ev) {
    struct srv *s = cmp->srv;
    if (ch->text_done) {
        return;
    }
    double now = kc_now_s();
    if (ch->n_tokens > 0) {
        srv_hist_observe(&s->metrics.itl, now - ch->t_last_token);
    }
    ch->t_last_token = now;
    ch->n_tokens++;
    ch->last_token = ev->token;
    if (ch->n_tokens == cmp->req.min_tokens + 1 && cmp->req.min_tokens > 0) {
        ch->stop.n_stop = cmp->req.n_stop; /* min_tokens reached: stop strings count now */
    }
    json_t *chunk_lp = NULL;
    if (cmp->req.logprobs >= 0) {
        json_t *lp = cmp->stream ? (chunk_lp = logprobs_new(cmp->req.chat)) : ch->lp;
        if (cmp->req.chat) {
            chat_logprobs_add(s, lp, ev, cmp->req.return_tokens_as_token_ids);
        } else {
            logprobs_add(s, lp, ev, ch->text_offset, cmp->req.return_tokens_as_token_ids);
        }
    }
    size_t n = 0;
    if (s->models.tok != NULL &&
        eng_tok_stream_push(&ch->ts, ev->token, s->tok_buf, s->tok_buf_cap, &n, NULL) != KC_OK) {
        n = 0;
    }
    choice_text(cmp, ch, s->tok_buf, n, chunk_lp);
}

static void echo_text(struct srv *s, const struct srv_prompt *p, struct srv_buf *out);

/* echo + logprobs: one prompt position. A stream sends the echoed prompt with its logprobs in
 * one chunk once the last position arrived (they all come before the first token). */
static void on_prompt_token(struct srv_completion *cmp, struct srv_choice *ch,
                            const struct sch_event *ev) {
    const struct srv_prompt *p = &cmp->req.prompts[ch->prompt];
    if (!cmp->prompt_lp || ch->lp == NULL) {
        return; /* max_tokens 0 without logprobs: scored, nothing to show */
    }
    ch->prompt_offset +=
        logprobs_add(cmp->srv, ch->lp, ev, ch->prompt_offset, cmp->req.return_tokens_as_token_ids);
    if (cmp->stream && ev->position == p->n_ids - 1) {
        struct srv_buf t = {0};
        echo_text(cmp->srv, p, &t);
        json_t *lp = ch->lp;
        ch->lp = NULL;
        sse_chunk(cmp, ch, t.p, t.len, lp, false);
        srv_buf_free(&t);
    }
}

static void on_terminal(struct srv_completion *cmp, struct srv_choice *ch,
                        const struct sch_event *ev) {
    struct srv *s = cmp->srv;
    ch->terminal = true;
    cmp->n_live--;
    if (ev->type == SCH_EV_ERROR) {
        ch->error = ev->error != 0 ? ev->error : KC_EBACKEND;
        snprintf(ch->errmsg, sizeof(ch->errmsg), "%s", ev->message);
    }
    ch->timings = ev->timings;
    ch->have_timings = ev->type == SCH_EV_DONE;
    if (!ch->text_done) {
        ch->text_done = true;
        ch->finish = ev->finish == SCH_FINISH_LENGTH || ev->finish == SCH_FINISH_STOP
                         ? ev->finish
                         : SCH_FINISH_ABORT;
        if (ev->type == SCH_EV_ERROR || cmp->client_gone || cmp->timed_out) {
            ch->finish = SCH_FINISH_ABORT;
        }
        /* Flush the detokenizer's incomplete character, then the held-back text. */
        size_t n = 0;
        struct srv_buf rest = {0};
        if (s->models.tok != NULL &&
            eng_tok_stream_flush(&ch->ts, s->tok_buf, s->tok_buf_cap, &n) == KC_OK && n > 0) {
            int m = srv_stop_feed(&ch->stop, s->tok_buf, n, &rest);
            if (m >= 0) {
                ch->stop_index = m;
                ch->finish = SCH_FINISH_STOP;
            }
        }
        if (ch->stop_index < 0) {
            srv_stop_flush(&ch->stop, &rest);
        }
        if (cmp->stream) {
            if (ch->error != 0 && cmp->conn != NULL) {
                struct srv_error e;
                srv_error_kc(&e, ch->error, NULL, "%s", ch->errmsg);
                char *body = srv_error_body(&e, NULL);
                if (body != NULL) {
                    srv_buf_printf(&cmp->out, "data: %s\n\n", body);
                    free(body);
                }
            }
            sse_chunk(cmp, ch, rest.p, rest.len, NULL, true);
        } else {
            srv_buf_append(&ch->text, rest.p, rest.len);
        }
        srv_buf_free(&rest);
    } else if (cmp->stream) {
        sse_chunk(cmp, ch, "", 0, NULL, true);
    }
    /* Metrics: one finished request per choice, as vLLM counts sequences. */
    struct srv_metrics *m = &s->metrics;
    m->success[ch->finish != SCH_FINISH_NONE ? ch->finish : SCH_FINISH_ABORT]++;
    m->generation_tokens += (uint64_t)ch->n_tokens;
    m->prompt_tokens += (uint64_t)ev->n_prompt;
    if (ch->have_timings && ch->n_tokens > 0) {
        srv_hist_observe(&m->ttft, ch->timings.ttft_ms / 1000.0);
        srv_hist_observe(&m->queue, ch->timings.queue_ms / 1000.0);
        m->prefill_mode[ch->timings.mode == SCH_MODE_PREDICT ? SCH_MODE_PREDICT : SCH_MODE_FULL]++;
    }
    const enum sch_refine_result rr = ev->timings.refine_result;
    if (rr > SCH_REFINE_NONE && rr < SCH_REFINE_RESULT_COUNT) {
        m->refine[rr]++;
        if (rr == SCH_REFINE_SWAPPED) {
            srv_hist_observe(&m->refine_latency, ev->timings.refine_ms / 1000.0);
        }
    }
    srv_hist_observe(&m->e2e, kc_now_s() - cmp->t_start);
    if (cmp->conn != NULL) {
        cmp->conn->log_gen_tokens += ch->n_tokens;
        if (ch->index == 0 && ch->have_timings) {
            cmp->conn->log_ttft_ms = ch->timings.ttft_ms;
        }
    }
    if (cmp->n_live == 0) {
        build_result(cmp);
    }
}

void srv_completions_on_event(struct srv *s, const struct sch_event *ev) {
    struct srv_choice *ch = ev->user;
    (void)s;
    if (ch == NULL) {
        return;
    }
    struct srv_completion *cmp = ch->cmp;
    if (ev->type == SCH_EV_TOKEN) {
        on_token(cmp, ch, ev);
        return;
    }
    if (ev->type == SCH_EV_PROMPT_TOKEN) {
        on_prompt_token(cmp, ch, ev);
        return;
    }
    on_terminal(cmp, ch, ev);
    maybe_free(cmp);
}

/* ---- the stream's content reader (MHD calls it on the loop thread) ---- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    struct srv_completion *cmp = cls;
    (void)pos;
    if (cmp->client_gone || cmp->conn == NULL) {
        return SRV_STREAM_ERROR;
    }
    if (cmp->out.len > 0) {
        size_t n = cmp->out.len < max ? cmp->out.len : max;
        memcpy(buf, cmp->out.p, n);
        srv_buf_consume(&cmp->out, n);
        cmp->t_last_write = kc_now_s();
        return (ssize_t)n;
    }
    if (cmp->eof) {
        return SRV_STREAM_END;
    }
    double now = kc_now_s();
    static const char ping[] = ": ping\n\n";
    if (now - cmp->t_last_write >= cmp->srv->cfg.heartbeat_ms / 1000.0 && max >= sizeof(ping)) {
        memcpy(buf, ping, sizeof(ping) - 1);
        cmp->t_last_write = now;
        return (ssize_t)(sizeof(ping) - 1);
    }
    /* Nothing to send: 0 is only allowed together with a suspend (RELIABILITY 3.2). */
    suspend(cmp);
    return 0;
}

static void stream_free(void *cls) {
    struct srv_completion *cmp = cls;
    cmp->resp_alive = false;
    maybe_free(cmp);
}

/* ---- start ---- */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Runs on the threadpool (prep_work): no MHD, no scheduler, no metrics, no logging of
 * request data. Encodes with a token limit (DESIGN 5) and applies truncate_prompt_tokens. */
static int tokenize_prompts(const struct srv *s, struct srv_completion_req *r,
                            const atomic_bool *abandon, struct srv_error *e) {
    const size_t max_ids = srv_prompt_max_ids(r, &s->lim);
    for (int i = 0; i < r->n_prompts; i++) {
        if (atomic_load(abandon)) {
            return srv_error_kc(e, KC_ECANCELED, NULL, "the request was abandoned");
        }
        struct srv_prompt *p = &r->prompts[i];
        if (p->text != NULL) {
            if (s->models.tok == NULL) {
                return srv_error_kc(e, KC_EUNSUPPORTED, "prompt",
                                    "this model has no tokenizer: send the prompt as token "
                                    "ids");
            }
            struct kc_error kerr = {0};
            int32_t *ids = NULL;
            size_t n = 0;
            /* Chat: special-token text is the template's markup (tokenizer/chat_template.h). */
            int rc = r->chat ? eng_chat_encode(s->models.tok, p->text, p->text_len,
                                               r->add_special_tokens, max_ids, &ids, &n, &kerr)
                             : eng_tok_encode_max(s->models.tok, p->text, p->text_len,
                                                  r->add_special_tokens ? ENG_TOK_ADD_SPECIAL : 0,
                                                  max_ids, &ids, &n, &kerr);
            if (rc == KC_ECONTEXT) {
                return srv_error_kc(e, KC_ECONTEXT, "prompt",
                                    "This model's maximum context length is %d tokens. "
                                    "However, you requested more than %d tokens (more than "
                                    "%zu in prompt %d, %d in the completion). Please reduce "
                                    "the length of the prompt or completion.",
                                    s->lim.max_context, s->lim.max_context, max_ids, i,
                                    r->max_tokens);
            }
            if (rc != KC_OK) {
                return srv_error_kc(e, rc == KC_ENOMEM ? KC_ENOMEM : KC_EINVAL, "prompt",
                                    "prompt %d: %s", i, kerr.msg);
            }
            p->ids = ids;
            p->n_ids = (int)n;
            srv_prompt_truncate(p, r->truncate_prompt_tokens);
        }
        srv_prompt_fill_max_tokens(r, p, &s->lim);
        int rc = srv_prompt_check(p, i, r->max_tokens, &s->lim, e);
        if (rc != KC_OK) {
            return rc;
        }
    }
    return KC_OK;
}

/* Threadpool: POST /tokenize ({"prompt", "add_special_tokens", "model"}) -> the JSON answer
 * {"count", "max_model_len", "tokens"} in cmp->out, or an error in cmp->prep_err. */
static int tokenize_route_work(const struct srv *s, struct srv_completion *cmp) {
    struct srv_error *e = &cmp->prep_err;
    char *text = NULL;
    size_t len = 0;
    bool special = true;
    int rc = srv_tokenize_parse(cmp->body.p, cmp->body.len, &s->lim, &text, &len, &special, e);
    if (rc != KC_OK) {
        return rc;
    }
    if (s->models.tok == NULL) {
        free(text);
        return srv_error_kc(e, KC_EUNSUPPORTED, NULL, "this model has no tokenizer");
    }
    int32_t *ids = NULL;
    size_t n = 0;
    struct kc_error kerr = {0};
    rc = eng_tok_encode(s->models.tok, text, len, special ? ENG_TOK_ADD_SPECIAL : 0, &ids, &n,
                        &kerr);
    free(text);
    if (rc != KC_OK) {
        return srv_error_kc(e, rc == KC_ENOMEM ? rc : KC_EINVAL, "prompt", "%s", kerr.msg);
    }
    rc = srv_buf_printf(&cmp->out, "{\"count\":%zu,\"max_model_len\":%d,\"tokens\":[", n,
                        s->models.max_model_len);
    for (size_t i = 0; i < n && rc == KC_OK; i++) {
        rc = srv_buf_printf(&cmp->out, i ? ",%d" : "%d", ids[i]);
    }
    free(ids);
    if (rc == KC_OK) {
        rc = srv_buf_printf(&cmp->out, "]}");
    }
    return rc == KC_OK ? KC_OK : srv_error_kc(e, KC_ENOMEM, NULL, "out of memory");
}

/* Threadpool: parse the body (JSON parse of up to max-body-bytes is not free either) and
 * tokenize. Writes only cmp->req, cmp->prep_rc/prep_err and cmp->body. */
static void prep_work(uv_work_t *w) {
    struct srv_completion *cmp = w->data;
    const struct srv *s = cmp->srv;
    if (atomic_load(&cmp->abandon)) {
        srv_buf_free(&cmp->body);
        cmp->prep_rc =
            srv_error_kc(&cmp->prep_err, KC_ECANCELED, NULL, "the request was abandoned");
        return;
    }
    if (cmp->tokenize_route) {
        cmp->prep_rc = tokenize_route_work(s, cmp);
        srv_buf_free(&cmp->body);
        return;
    }
    int rc =
        cmp->chat_route
            ? srv_chat_parse(cmp->body.p, cmp->body.len, &s->lim, &cmp->req, &cmp->prep_err)
            : srv_completion_parse(cmp->body.p, cmp->body.len, &s->lim, &cmp->req, &cmp->prep_err);
    srv_buf_free(&cmp->body);
    if (rc == KC_OK && cmp->req.chat) {
        rc = srv_chat_render(s, &cmp->req, &cmp->prep_err);
    }
    if (rc == KC_OK) {
        rc = tokenize_prompts(s, &cmp->req, &cmp->abandon, &cmp->prep_err);
    }
    cmp->prep_rc = rc;
}

/*
 * At most prep_max prepare jobs of big bodies run at once; the rest wait in FIFO order. Measured on
 * 2 cores with 8 clients posting 4 MiB prompts (ASan build): with libuv's 4 threads all tokenizing,
 * /health p99 was 86 ms (p50 8 ms); with one job at a time 14 ms (p50 0.7 ms) and more completions
 * per second. The loop thread and the engine workers need the cores more than a huge prompt needs
 * to be tokenized in parallel. The queue lives in struct srv (loop thread).
 */
static int prep_max(struct srv *s) {
    if (s->prep_max == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->prep_max = n >= 4 ? (int)(n / 2 < 4 ? n / 2 : 4) : 1;
    }
    return s->prep_max;
}

static void prep_done(uv_work_t *w, int status);

/* Hands one job to the threadpool. */
static void prep_submit(struct srv *s, struct srv_completion *cmp) {
    if (cmp->prep_big) {
        s->prep_running++;
    }
    if (uv_queue_work(&s->loop, &cmp->work, prep_work, prep_done) == 0) {
        cmp->work_queued = true;
    } else {
        /* Cannot happen with valid callbacks; do the work here rather than lose it. */
        prep_work(&cmp->work);
        prep_done(&cmp->work, 0);
    }
}

/* Hands waiting big jobs to the threadpool while fewer than prep_max run. */
static void prep_pump(struct srv *s) {
    while (s->prep_wait_head != NULL && s->prep_running < prep_max(s)) {
        struct srv_completion *cmp = s->prep_wait_head;
        s->prep_wait_head = cmp->prep_next;
        if (s->prep_wait_head == NULL) {
            s->prep_wait_tail = NULL;
        }
        cmp->prep_next = NULL;
        prep_submit(s, cmp);
    }
}

/* Bodies up to PREP_SMALL_BYTES take a few ms at most to parse and tokenize: they go to the
 * threadpool at once, so a small request never waits behind a queue of 4 MiB prompts. */
#define PREP_SMALL_BYTES ((size_t)64 << 10)

static void prep_enqueue(struct srv *s, struct srv_completion *cmp) {
    cmp->prep_big = cmp->body.len > PREP_SMALL_BYTES;
    if (!cmp->prep_big) {
        prep_submit(s, cmp);
        return;
    }
    if (s->prep_wait_tail != NULL) {
        s->prep_wait_tail->prep_next = cmp;
    } else {
        s->prep_wait_head = cmp;
    }
    s->prep_wait_tail = cmp;
    prep_pump(s);
}

/* Loop thread: the job ended (or was cancelled before it started). */
static void prep_done(uv_work_t *w, int status) {
    struct srv_completion *cmp = w->data;
    struct srv *s = cmp->srv;
    if (cmp->prep_big) {
        s->prep_running--;
    }
    cmp->work_queued = false;
    cmp->preparing = false;
    cmp->tokenize_ms = (kc_now_s() - cmp->t_prep) * 1000.0;
    if (status == UV_ECANCELED) {
        cmp->prep_rc =
            srv_error_kc(&cmp->prep_err, KC_ECANCELED, NULL, "the request was abandoned");
    }
    if (cmp->conn == NULL) {
        maybe_free(cmp); /* the client went away meanwhile */
    } else {
        cmp->ready = true;
        resume(cmp); /* the handler runs again: srv_completions_resumed -> start_prepared */
    }
    prep_pump(s);
}

/* Unknown fields: warn once per name (a bounded set of remembered names) and count all.
 * Loop thread only, like the metrics; the names live in struct srv. */

static void note_unknown_fields(struct srv *s, const struct srv_completion_req *r) {
    s->metrics.request_unknown_fields += (uint64_t)r->n_unknown;
    const int n = r->n_unknown < SRV_UNKNOWN_REPORT ? r->n_unknown : SRV_UNKNOWN_REPORT;
    for (int i = 0; i < n; i++) {
        bool seen = false;
        for (int j = 0; j < s->n_unknown_names && !seen; j++) {
            seen = strcmp(s->unknown_names[j], r->unknown[i]) == 0;
        }
        if (seen || s->n_unknown_names > SRV_UNKNOWN_NAMES_MAX) {
            continue;
        }
        if (s->n_unknown_names == SRV_UNKNOWN_NAMES_MAX) {
            KC_WARN("more unknown request field names than %d; no longer logging new ones "
                    "(they are still counted in request_unknown_fields_total)",
                    SRV_UNKNOWN_NAMES_MAX);
            s->n_unknown_names++;
            continue;
        }
        snprintf(s->unknown_names[s->n_unknown_names++], SRV_UNKNOWN_NAME_MAX, "%s", r->unknown[i]);
        KC_WARN("ignoring unknown request field '%s' (warned once per name; --strict-fields "
                "refuses such requests)",
                r->unknown[i]);
    }
}

static void echo_text(struct srv *s, const struct srv_prompt *p, struct srv_buf *out) {
    if (p->text != NULL) {
        srv_buf_append(out, p->text, p->text_len);
        return;
    }
    if (s->models.tok == NULL) {
        return;
    }
    char *t = NULL;
    size_t n = 0;
    if (eng_tok_decode(s->models.tok, p->ids, (size_t)p->n_ids, 0, &t, &n, NULL) == KC_OK) {
        srv_buf_append(out, t, n);
        free(t);
    }
}

static void completion_link(struct srv *s, struct srv_completion *cmp) {
    cmp->next = s->active;
    if (s->active != NULL) {
        s->active->prev = cmp;
    }
    s->active = cmp;
    s->n_active++;
}

/* The access handler's first call with the whole body: hand parse + tokenize to the
 * threadpool and keep the connection suspended until prep_done resumes it. */
static enum srv_http_rc prep_start(struct srv_conn *c, bool tokenize_route, bool chat_route) {
    struct srv *s = c->srv;
    if (s->state == SRV_STOPPING || (!tokenize_route && s->state != SRV_SERVING)) {
        /* Its headers were accepted while serving, but the body or the yield run ended after
         * the shutdown began. Nothing may suspend now: srv_http_stop's last MHD_run reaches
         * here, and stopping the daemon with a suspended connection aborts (RELIABILITY 3.2;
         * test_pd_shutdown's ways 0 and 4 hit it about once in 25 rounds). */
        struct srv_error e;
        srv_error_kc(&e, KC_EBUSY, NULL, "The server is shutting down.");
        return srv_send_error(c, &e);
    }
    struct srv_completion *cmp = calloc(1, sizeof(*cmp));
    if (cmp == NULL) {
        struct srv_error e;
        srv_error_kc(&e, KC_ENOMEM, NULL, "out of memory");
        return srv_send_error(c, &e);
    }
    cmp->srv = s;
    cmp->conn = c;
    cmp->tokenize_route = tokenize_route;
    cmp->chat_route = chat_route;
    cmp->t_start = c->t_start;
    cmp->t_last_write = kc_now_s();
    cmp->t_prep = cmp->t_last_write;
    cmp->body = c->body; /* the job owns the bytes; the connection keeps an empty buffer */
    memset(&c->body, 0, sizeof(c->body));
    atomic_init(&cmp->abandon, false);
    cmp->work.data = cmp;
    completion_link(s, cmp);
    c->cmp = cmp;
    cmp->preparing = true;
    /* Suspend first: prep_enqueue may finish the job at once (fallback path) and resume. */
    suspend(cmp);
    prep_enqueue(s, cmp);
    return SRV_HTTP_OK;
}

enum srv_http_rc srv_completions_start(struct srv_conn *c) {
    return prep_start(c, false, false);
}

enum srv_http_rc srv_chat_start(struct srv_conn *c) {
    return prep_start(c, false, true);
}

enum srv_http_rc srv_tokenize_start(struct srv_conn *c) {
    return prep_start(c, true, false);
}

/* Detaches a completion that never submitted anything and answers with e. */
static enum srv_http_rc start_failed(struct srv_conn *c, struct srv_completion *cmp,
                                     const struct srv_error *e) {
    const struct srv_error copy = *e; /* e may live in cmp, which is freed here */
    cancel_live(cmp, SCH_FINISH_ABORT);
    cmp->conn = NULL;
    c->cmp = NULL;
    maybe_free(cmp);
    return srv_send_error(c, &copy);
}

/* The handler ran again after prep_done: check the job's result, submit, answer. */
static enum srv_http_rc start_prepared(struct srv_conn *c, struct srv_completion *cmp) {
    struct srv *s = c->srv;
    struct srv_error e;
    cmp->ready = false;
    if (cmp->prep_rc == KC_OK) {
        note_unknown_fields(s, &cmp->req);
    }
    if (cmp->prep_rc != KC_OK) {
        return start_failed(c, cmp, &cmp->prep_err);
    }
    if (cmp->tokenize_route) {
        enum srv_http_rc ret = srv_send(c, 200, "application/json", cmp->out.p, cmp->out.len);
        cmp->result_built = true;
        cmp->conn = NULL;
        c->cmp = NULL;
        maybe_free(cmp);
        return ret;
    }
    if (s->state == SRV_STOPPING) {
        srv_error_kc(&e, KC_EBUSY, NULL, "The server is shutting down; retry later.");
        return start_failed(c, cmp, &e);
    }
    const struct srv_completion_req req = cmp->req;
    int n_choices = req.n_prompts * req.n;
    struct srv_choice *choices = calloc((size_t)n_choices, sizeof(*choices));
    if (choices == NULL) {
        srv_error_kc(&e, KC_ENOMEM, NULL, "out of memory");
        return start_failed(c, cmp, &e);
    }
    cmp->choices = choices;
    cmp->n_choices = n_choices;
    cmp->stream = req.stream;
    cmp->created = (long long)time(NULL);
    uint64_t r = mix64(s->id_salt ^ mix64(c->rid));
    snprintf(cmp->id, sizeof(cmp->id), "%s-%016llx%016llx", req.chat ? "chatcmpl" : "cmpl",
             (unsigned long long)r, (unsigned long long)mix64(r + 1));
    snprintf(c->cmpl_id, sizeof(c->cmpl_id), "%s", cmp->id);
    cmp->prompt_lp = req.echo && req.logprobs >= 0;
    for (int i = 0; i < req.n_prompts; i++) {
        cmp->prompt_tokens += req.prompts[i].n_ids;
    }
    c->log_prompt_tokens = cmp->prompt_tokens;

    /* One scheduler request per choice; choices of one prompt get consecutive indices. */
    int rc = KC_OK;
    struct kc_error kerr = {0};
    for (int i = 0; i < n_choices; i++) {
        struct srv_choice *ch = &choices[i];
        ch->cmp = cmp;
        ch->index = i;
        ch->prompt = i / req.n;
        ch->stop_index = -1;
        /* Before min_tokens tokens, stop strings are not matched (DESIGN 6). */
        srv_stop_init(&ch->stop, req.stop, req.min_tokens > 0 ? 0 : req.n_stop,
                      req.include_stop_str_in_output);
        if (s->models.tok != NULL) {
            eng_tok_stream_init(&ch->ts, s->models.tok,
                                req.skip_special_tokens ? ENG_TOK_SKIP_SPECIAL : 0);
        }
        if (req.logprobs >= 0 && (!req.stream || cmp->prompt_lp)) {
            ch->lp = logprobs_new(req.chat);
        }
        const struct srv_prompt *p = &req.prompts[ch->prompt];
        struct sch_request_params sp = {
            .prompt = p->ids,
            .n_prompt = p->n_ids,
            .max_tokens = req.max_tokens,
            .sampling = req.sampling,
            .ignore_eos = req.ignore_eos,
            .n_logprobs = req.logprobs,
            .mode = req.mode,
            /* max_tokens 0 (only with echo) scores the prompt and generates nothing. */
            .prompt_logprobs = cmp->prompt_lp || req.max_tokens == 0,
            .stop_token_ids = req.stop_token_ids,
            .n_stop_token_ids = req.n_stop_token_ids,
            .min_tokens = req.min_tokens,
            /* same layout (request.h); asserted at the top of this file */
            .logit_bias = (const struct sch_logit_bias *)req.logit_bias,
            .n_logit_bias = req.n_logit_bias,
            .refine = req.refine,
        };
        /* Choice k of a seeded request: its own stream, unrelated to other seeds' streams. */
        sp.sampling.seed = req.seed_given
                               ? eng_sampler_stream_seed(req.sampling.seed, (uint64_t)(i % req.n))
                               : mix64(r + 17 + (uint64_t)i);
        rc = sch_submit(s->sch, &sp, ch, &ch->sch_id, &kerr);
        if (rc != KC_OK) {
            break;
        }
        ch->submitted = true;
        cmp->n_live++;
    }
    if (rc != KC_OK) {
        /* Refused (queue full, context, ...): cancel what was admitted, answer at once. */
        if (rc == KC_EBUSY) {
            srv_error_kc(&e, KC_EBUSY, NULL, "The server is busy (%s); retry later.", kerr.msg);
        } else {
            srv_error_kc(&e, rc, rc == KC_ECONTEXT || rc == KC_ERANGE ? "prompt" : NULL, "%s",
                         kerr.msg);
        }
        return start_failed(c, cmp, &e);
    }
    if (req.echo) {
        for (int i = 0; i < n_choices; i++) {
            struct srv_choice *ch = &choices[i];
            struct srv_buf t = {0};
            echo_text(s, &req.prompts[ch->prompt], &t);
            if (req.stream) {
                /* With logprobs the echo goes out with the prompt's logprobs. */
                if (t.len > 0 && !cmp->prompt_lp) {
                    sse_chunk(cmp, ch, t.p, t.len, NULL, false);
                }
            } else {
                srv_buf_append(&ch->text, t.p, t.len);
            }
            ch->text_offset = t.len;
            srv_buf_free(&t);
        }
    }
    if (cmp->stream && req.chat) {
        for (int i = 0; i < n_choices; i++) {
            sse_role_chunk(cmp, &choices[i]);
        }
    }
    if (cmp->stream) {
        cmp->resp_alive = true; /* until stream_free, which the seam calls even on failure */
        enum srv_http_rc ret = srv_http_stream_begin(c, stream_reader, stream_free, cmp);
        if (ret != SRV_HTTP_OK) {
            cancel_live(cmp, SCH_FINISH_ABORT);
        }
        return ret;
    }
    suspend(cmp);
    return SRV_HTTP_OK;
}

enum srv_http_rc srv_completions_resumed(struct srv_conn *c) {
    struct srv_completion *cmp = c->cmp;
    if (cmp == NULL || cmp->client_gone) {
        return SRV_HTTP_CLOSE;
    }
    if (cmp->preparing) { /* woken early (a shutdown path): keep waiting for the job */
        suspend(cmp);
        return SRV_HTTP_OK;
    }
    if (cmp->ready) {
        return start_prepared(c, cmp);
    }
    if (c->pending_ready) {
        c->pending_ready = false;
        return srv_send(c, c->pending_status, "application/json", c->pending_body.p,
                        c->pending_body.len);
    }
    /* Woken without a result (e.g. a heartbeat meant for streams): wait again. */
    suspend(cmp);
    return SRV_HTTP_OK;
}

void srv_completions_conn_closed(struct srv_completion *cmp, bool ok) {
    cmp->conn = NULL;
    cmp->suspended = false;
    if (!ok && cmp->n_live > 0) {
        cmp->client_gone = true;
        cancel_live(cmp, SCH_FINISH_ABORT);
    }
    maybe_free(cmp);
}

void srv_completions_tick(struct srv *s) {
    const double now = kc_now_s();
    const double hb = s->cfg.heartbeat_ms / 1000.0;
    const double deadline = s->cfg.request_timeout_s;
    struct srv_completion *next = NULL;
    for (struct srv_completion *cmp = s->active; cmp != NULL; cmp = next) {
        next = cmp->next;
        if (cmp->conn == NULL) {
            continue;
        }
        /* Only while suspended: MHD does not touch the fd then (RELIABILITY 3.3). */
        enum srv_peer peer = cmp->suspended && !cmp->client_gone
                                 ? srv_http_peer_check(cmp->conn, cmp->stream)
                                 : SRV_PEER_ALIVE;
        if (peer == SRV_PEER_WANT_WRITE) {
            cmp->t_last_write = 0.0; /* a heartbeat now: a closed peer answers it with RST */
        }
        if (peer == SRV_PEER_GONE) {
            KC_INFO("req=%llu client went away; cancelling", (unsigned long long)cmp->conn->rid);
            cmp->client_gone = true;
            cancel_live(cmp, SCH_FINISH_ABORT);
            resume(cmp);
            continue;
        }
        if (deadline > 0 && !cmp->timed_out && cmp->n_live > 0 && now - cmp->t_start > deadline) {
            KC_WARN("req=%llu exceeded the %d s request timeout; aborting",
                    (unsigned long long)cmp->conn->rid, s->cfg.request_timeout_s);
            cmp->timed_out = true;
            cancel_live(cmp, SCH_FINISH_ABORT);
        }
        if (cmp->stream && cmp->suspended && now - cmp->t_last_write >= hb) {
            resume(cmp);
        }
    }
}

void srv_completions_cancel_all(struct srv *s) {
    for (struct srv_completion *cmp = s->active; cmp != NULL; cmp = cmp->next) {
        cancel_live(cmp, SCH_FINISH_ABORT);
    }
}

void srv_completions_resume_all(struct srv *s) {
    for (struct srv_completion *cmp = s->active; cmp != NULL; cmp = cmp->next) {
        if (!cmp->result_built) {
            cmp->client_gone = true; /* the handler / reader then closes the connection */
        }
        resume(cmp);
    }
}

int srv_completions_tokens(const struct srv_completion *cmp) {
    int n = 0;
    for (int i = 0; i < cmp->n_choices; i++) {
        n += cmp->choices[i].n_tokens;
    }
    return n;
}

int srv_completions_live(const struct srv *s) {
    int n = 0;
    for (const struct srv_completion *cmp = s->active; cmp != NULL; cmp = cmp->next) {
        n += cmp->n_live + (cmp->preparing ? 1 : 0); /* a prepare job is a request to come */
    }
    return n;
}
