/*
 * cmd_generate.c — `kvcast generate`: load a model directory, prefill a prompt, decode
 * tokens with the sampler, print the result and the prefill/decode speeds.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kc.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/cli/json_out.h"

static void generate_usage(FILE *f) {
    fprintf(f,
            "usage: kvcast generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
            "  --prompt TEXT         text prompt, tokenized with the model's tokenizer.json\n"
            "  --tokenizer PATH      tokenizer directory or tokenizer.json (default: --model)\n"
            "  --max-tokens N        tokens to generate (default 32)\n"
            "  --dtype f32|bf16|int8 weight format for both prefill and decode\n"
            "  --prefill-dtype T     weights for prefill steps (default f32)\n"
            "  --decode-dtype T      weights for decode steps (default bf16, f32 without AVX-512)\n"
            "  --kv-dtype f32|bf16   element type of the KV cache (default f32), as serve's\n"
            "  --temperature X       0 = greedy (default 0)\n"
            "  --top-k N --top-p X --min-p X --seed N\n"
            "  --ignore-eos          keep going past end-of-sequence tokens\n"
            "  --threads N           OpenMP threads (default: all cores)\n"
            "  --json                print one JSON object\n");
}

struct generate_opts {
    const char *model_dir;
    const char *tokenizer;
    const char *text;
    int32_t *prompt;
    int n_prompt;
    int max_tokens;
    struct eng_model_params mparams;
    struct eng_sampler_params sparams;
    enum eng_dtype kv_dtype;
    bool ignore_eos;
    int threads;
    bool json;
};

/* Returns 0 to go on, -1 after --help (exit 0), or 2 on a bad command line. */
static int parse_generate(int argc, char **argv, struct generate_opts *o) {
    o->max_tokens = 32;
    o->kv_dtype = ENG_DTYPE_F32;
    o->mparams = eng_model_default_params();
    o->sparams = eng_sampler_default_params();
    o->sparams.temperature = 0.0f;
    struct kc_args a;
    kc_args_init(&a, "kvcast generate", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        long n;
        double x;
        if (kc_args_help(&a)) {
            generate_usage(stdout);
            return -1;
        } else if (kc_args_str(&a, "--model", &o->model_dir) ||
                   kc_args_str(&a, "--prompt", &o->text) ||
                   kc_args_str(&a, "--tokenizer", &o->tokenizer)) {
        } else if (kc_args_str(&a, "--prompt-ids", &v)) {
            free(o->prompt);
            o->prompt = NULL;
            if (!kc_arg_ids(v, &o->prompt, &o->n_prompt)) {
                return kc_args_bad(&a, "wants a list like 1,2,3");
            }
        } else if (kc_args_int(&a, "--max-tokens", 1, 1 << 20, &o->max_tokens)) {
        } else if (kc_args_str(&a, "--dtype", &v)) {
            if (eng_wtype_parse(v, &o->mparams.prefill_wtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
            o->mparams.decode_wtype = o->mparams.prefill_wtype;
        } else if (kc_args_str(&a, "--prefill-dtype", &v)) {
            if (eng_wtype_parse(v, &o->mparams.prefill_wtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
        } else if (kc_args_str(&a, "--decode-dtype", &v)) {
            if (eng_wtype_parse(v, &o->mparams.decode_wtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32, bf16 or int8");
            }
        } else if (kc_args_str(&a, "--kv-dtype", &v)) {
            if (eng_kv_dtype_parse(v, &o->kv_dtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32 or bf16");
            }
        } else if (kc_args_double(&a, "--temperature", 0, 100, &x)) {
            o->sparams.temperature = (float)x;
        } else if (kc_args_int(&a, "--top-k", 0, 1 << 24, &o->sparams.top_k)) {
        } else if (kc_args_double(&a, "--top-p", 1e-9, 1, &x)) {
            o->sparams.top_p = (float)x;
        } else if (kc_args_double(&a, "--min-p", 0, 1, &x)) {
            o->sparams.min_p = (float)x;
        } else if (kc_args_long(&a, "--seed", 0, LONG_MAX, &n)) {
            o->sparams.seed = (uint64_t)n;
        } else if (kc_args_int(&a, "--threads", 1, 1024, &o->threads)) {
        } else if (kc_args_flag(&a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (kc_args_flag(&a, "--json")) {
            o->json = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    if (o->model_dir == NULL || (o->prompt == NULL) == (o->text == NULL)) {
        fprintf(stderr,
                "kvcast generate: --model and one of --prompt / --prompt-ids are required\n");
        generate_usage(stderr);
        return 2;
    }
    return 0;
}

static bool is_eos(const struct eng_model_config *c, int32_t tok) {
    for (int i = 0; i < c->n_eos; i++) {
        if (c->eos_token_ids[i] == tok) {
            return true;
        }
    }
    return false;
}

int kc_cmd_generate(int argc, char **argv) {
    struct generate_opts o = {0};
    int rc = parse_generate(argc, argv, &o);
    if (rc != 0) {
        free(o.prompt);
        return rc < 0 ? 0 : rc;
    }
    struct kc_error err = {0};
    struct eng_tok *tok = NULL;
    char *text_out = NULL;
    struct eng_model *m = NULL;
    struct eng_ctx *ctx = NULL;
    struct eng_kv_pool pool = {0};
    struct eng_seq seq = {0};
    struct eng_sampler sampler = {0};
    int32_t *out = NULL;
    float *logits = NULL;
    int exit_code = 1;

    /* The tokenizer is needed for a text prompt and used, when present, to print text. */
    const char *tok_path = o.tokenizer != NULL ? o.tokenizer : o.model_dir;
    if (o.text != NULL || o.tokenizer != NULL) {
        if (eng_tok_load(tok_path, &tok, &err) != KC_OK) {
            fprintf(stderr, "kvcast generate: %s\n", err.msg);
            goto done;
        }
    } else if (eng_tok_load(tok_path, &tok, NULL) != KC_OK) {
        tok = NULL; /* a model without tokenizer.json: ids only */
    }
    if (o.text != NULL) {
        size_t n = 0;
        if (eng_tok_encode(tok, o.text, strlen(o.text), ENG_TOK_ADD_SPECIAL, &o.prompt, &n, &err) !=
            KC_OK) {
            fprintf(stderr, "kvcast generate: --prompt: %s\n", err.msg);
            goto done;
        }
        if (n == 0 || n > (size_t)(1 << 24)) {
            fprintf(stderr, "kvcast generate: --prompt gives %zu tokens\n", n);
            goto done;
        }
        o.n_prompt = (int)n;
    }
    if (eng_model_load(o.model_dir, &o.mparams, &m, &err) != KC_OK) {
        fprintf(stderr, "kvcast generate: %s\n", err.msg);
        goto done;
    }
    const struct eng_model_config *c = eng_model_config_of(m);
    const int n_ctx = o.n_prompt + o.max_tokens;
    if (n_ctx > c->max_position_embeddings) {
        fprintf(stderr,
                "kvcast generate: prompt (%d) + max tokens (%d) exceed the model's %d positions\n",
                o.n_prompt, o.max_tokens, c->max_position_embeddings);
        goto done;
    }
    const int block = 16;
    if (eng_ctx_create(m, o.n_prompt < 512 ? o.n_prompt : 512, n_ctx, o.threads, &ctx, &err) !=
            KC_OK ||
        eng_kv_pool_init_dtype(&pool, c, block, (n_ctx + block - 1) / block, o.kv_dtype, &err) !=
            KC_OK ||
        eng_sampler_init(&sampler, &o.sparams, c->vocab_size, &err) != KC_OK) {
        fprintf(stderr, "kvcast generate: %s\n", err.msg);
        goto done;
    }
    out = calloc((size_t)o.max_tokens, sizeof(int32_t));
    logits = calloc((size_t)c->vocab_size, sizeof(float));
    if (out == NULL || logits == NULL) {
        fprintf(stderr, "kvcast generate: out of memory\n");
        goto done;
    }
    for (int i = 0; i < o.n_prompt; i++) {
        eng_sampler_observe(&sampler, o.prompt[i]);
    }
    struct eng_batch_item item = {.seq = &seq,
                                  .tokens = o.prompt,
                                  .n_tokens = o.n_prompt,
                                  .logits_mode = ENG_LOGITS_LAST,
                                  .logits = logits};
    const double t0 = kc_now_s();
    if (eng_forward(ctx, m, &pool, &item, 1, NULL, &err) != KC_OK) {
        fprintf(stderr, "kvcast generate: %s\n", err.msg);
        goto done;
    }
    const double t_prefill = kc_now_s() - t0;
    int n_out = 0, n_decode_steps = 0;
    const char *finish = "length";
    const double t1 = kc_now_s();
    while (n_out < o.max_tokens) {
        int32_t next = 0;
        if (eng_sampler_sample(&sampler, logits, &next, NULL, &err) != KC_OK) {
            fprintf(stderr, "kvcast generate: %s\n", err.msg);
            goto done;
        }
        out[n_out++] = next;
        eng_sampler_observe(&sampler, next);
        if (!o.ignore_eos && is_eos(c, next)) {
            finish = "stop";
            break;
        }
        if (n_out == o.max_tokens) {
            break;
        }
        item = (struct eng_batch_item){.seq = &seq,
                                       .tokens = &out[n_out - 1],
                                       .n_tokens = 1,
                                       .logits_mode = ENG_LOGITS_LAST,
                                       .logits = logits};
        if (eng_forward(ctx, m, &pool, &item, 1, NULL, &err) != KC_OK) {
            fprintf(stderr, "kvcast generate: %s\n", err.msg);
            goto done;
        }
        n_decode_steps++;
    }
    const double t_decode = kc_now_s() - t1;
    const double prefill_tps = o.n_prompt / t_prefill;
    size_t text_len = 0;
    if (tok != NULL && eng_tok_decode(tok, out, (size_t)n_out, ENG_TOK_SKIP_SPECIAL, &text_out,
                                      &text_len, &err) != KC_OK) {
        fprintf(stderr, "kvcast generate: decoding the output: %s\n", err.msg);
        goto done;
    }
    const double decode_tps = n_decode_steps > 0 ? n_decode_steps / t_decode : 0.0;
    if (o.json) {
        json_t *j = json_object(), *ids = json_array();
        for (int i = 0; i < n_out; i++) {
            json_array_append_new(ids, json_integer(out[i]));
        }
        json_object_set_new(j, "ids", ids);
        json_object_set_new(j, "text", kc_json_strn(text_out, text_len));
        json_object_set_new(j, "finish_reason", json_string(finish));
        json_object_set_new(j, "prompt_tokens", json_integer(o.n_prompt));
        json_object_set_new(j, "prefill_tokens_per_s", kc_json_real(prefill_tps, 3));
        json_object_set_new(j, "decode_tokens_per_s", kc_json_real(decode_tps, 3));
        if (kc_json_print("kvcast generate", j) != 0) {
            goto done;
        }
    } else {
        if (text_out != NULL) {
            printf("%s%s\n", o.text != NULL ? o.text : "", text_out);
        } else {
            for (int i = 0; i < n_out; i++) {
                printf("%s%d", i ? "," : "", out[i]);
            }
            printf("\n");
        }
        fprintf(stderr,
                "prefill: %d tokens in %.1f ms (%.1f tokens/s); decode: %d tokens in %.1f ms "
                "(%.1f tokens/s); finish: %s\n",
                o.n_prompt, t_prefill * 1e3, prefill_tps, n_decode_steps, t_decode * 1e3,
                decode_tps, finish);
    }
    exit_code = 0;
done:
    free(text_out);
    eng_tok_free(tok);
    free(out);
    free(logits);
    free(o.prompt);
    eng_sampler_free(&sampler);
    eng_seq_release(&pool, &seq); /* an empty sequence never touches the pool */
    eng_kv_pool_free(&pool);
    eng_ctx_free(ctx);
    eng_model_free(m);
    return exit_code;
}
