/*
 * cmd_calibrate.c — `kvcast calibrate`: fits a KV predictor for a (base, aux) pair in closed
 * form. Both models run over windows of calibration text; per base layer the pre-RoPE keys
 * and values are regressed on the mapped aux layer's (ridge, bias column, f64 accumulators,
 * Cholesky); the result is written as predictor.safetensors. See engine/kvp.h.
 *
 * Exit codes: 0 ok, 1 a model, the data or the fit failed, 2 bad command line.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kc.h"
#include "engine/kvp.h"
#include "engine/model.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/cli/kvp_data.h"

#define CALIB_DEFAULT_TOKENS 65536
#define CALIB_DEFAULT_CTX 512
#define CALIB_DEFAULT_RIDGE 1e-3

static void calibrate_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvcast calibrate --base DIR --aux DIR --data FILE.txt --out predictor.safetensors\n"
        "                        [options]\n"
        "  --tokens N          calibration tokens to use (default %d)\n"
        "  --ctx L             window length in tokens (default %d)\n"
        "  --ridge LAMBDA      ridge strength, relative to the mean feature variance\n"
        "                      (default %g; 0 = ordinary least squares)\n"
        "  --layer-map M       auto (round(l (La-1)/(Lb-1))) or a list 0,0,1,1,... with one\n"
        "                      aux layer per base layer (default auto)\n"
        "  --ids               FILE holds token ids (whitespace/comma separated), not text\n"
        "  --kv-dtype f32|bf16 element type of the KV cache the models attend over while\n"
        "                      their K/V are captured (default f32), as serve's\n"
        "  --threads N         OpenMP threads (default: all cores)\n"
        "  --quiet             no progress bar\n",
        CALIB_DEFAULT_TOKENS, CALIB_DEFAULT_CTX, CALIB_DEFAULT_RIDGE);
}

struct calibrate_opts {
    const char *base, *aux, *data, *out, *layer_map;
    long tokens, ctx;
    double ridge;
    bool ids, quiet, no_bos;
    int threads;
    enum eng_dtype kv_dtype;
};

static int parse_calibrate(int argc, char **argv, struct calibrate_opts *o) {
    o->tokens = CALIB_DEFAULT_TOKENS;
    o->ctx = CALIB_DEFAULT_CTX;
    o->ridge = CALIB_DEFAULT_RIDGE;
    o->layer_map = "auto";
    o->kv_dtype = ENG_DTYPE_F32;
    struct kc_args a;
    kc_args_init(&a, "kvcast calibrate", argc, argv);
    while (kc_args_next(&a)) {
        const char *v = NULL;
        if (kc_args_help(&a)) {
            calibrate_usage(stdout);
            return -1;
        } else if (kc_args_str(&a, "--base", &o->base) || kc_args_str(&a, "--aux", &o->aux) ||
                   kc_args_str(&a, "--data", &o->data) || kc_args_str(&a, "--out", &o->out) ||
                   kc_args_str(&a, "--layer-map", &o->layer_map) ||
                   kc_args_long(&a, "--tokens", 2, 1L << 31, &o->tokens) ||
                   kc_args_long(&a, "--ctx", 2, 1 << 20, &o->ctx) ||
                   kc_args_double(&a, "--ridge", 0.0, 1e6, &o->ridge) ||
                   kc_args_int(&a, "--threads", 1, 1024, &o->threads)) {
        } else if (kc_args_str(&a, "--kv-dtype", &v)) {
            if (eng_kv_dtype_parse(v, &o->kv_dtype) != KC_OK) {
                return kc_args_bad(&a, "must be f32 or bf16");
            }
        } else if (kc_args_flag(&a, "--ids")) {
            o->ids = true;
        } else if (kc_args_flag(&a, "--no-bos")) {
            o->no_bos = true;
        } else if (kc_args_flag(&a, "--quiet")) {
            o->quiet = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    if (o->base == NULL || o->aux == NULL || o->data == NULL || o->out == NULL) {
        fprintf(stderr, "kvcast calibrate: --base, --aux, --data and --out are required\n");
        calibrate_usage(stderr);
        return 2;
    }
    return 0;
}

/* Progress on stderr: a bar redrawn in place on a terminal, a line per 10% otherwise. */
struct progress {
    bool tty, quiet;
    size_t total;
    double t0;
    int last_decile;
};

static void progress_show(struct progress *p, size_t done, bool final) {
    if (p->quiet) {
        return;
    }
    const double el = kc_now_s() - p->t0;
    const double frac = p->total > 0 ? (double)done / (double)p->total : 1.0;
    const double rate = el > 0 ? (double)done / el : 0.0;
    const double eta = rate > 0 ? (double)(p->total - done) / rate : 0.0;
    const int decile = (int)(frac * 10.0);
    if (!p->tty && decile == p->last_decile) {
        return;
    }
    p->last_decile = decile;
    char bar[33];
    const int fill = (int)(frac * 30.0);
    for (int i = 0; i < 30; i++) {
        bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    }
    bar[30] = '\0';
    fprintf(stderr, "%s[%s] %zu/%zu tokens  %.0f tok/s  ETA %d:%02d%s", p->tty ? "\r" : "", bar,
            done, p->total, rate, (int)(eta / 60), (int)eta % 60, p->tty && !final ? "" : "\n");
    fflush(stderr);
}

int kc_cmd_calibrate(int argc, char **argv) {
    struct calibrate_opts o = {0};
    int rc = parse_calibrate(argc, argv, &o);
    if (rc != 0) {
        return rc < 0 ? 0 : rc;
    }
    struct kc_error err = {0};
    struct eng_model *base = NULL, *aux = NULL;
    struct eng_kvp_ctx *kc = NULL;
    struct eng_kvp_calib *cal = NULL;
    struct eng_kvp *pred = NULL;
    struct eng_kv_pool pool = {0}, apool = {0};
    struct eng_ctx *bctx = NULL;
    int32_t *tokens = NULL, *map = NULL, *window = NULL;
    size_t n_tokens = 0;
    int exit_code = 1;

    const double t_load = kc_now_s();
    if (eng_kvp_check_tokenizers(o.base, o.aux, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    /* f32 weights for every row count: calibration wants the most exact activations. */
    const struct eng_model_params mp = {.prefill_wtype = ENG_WTYPE_F32,
                                        .decode_wtype = ENG_WTYPE_F32};
    if (eng_model_load(o.base, &mp, &base, &err) != KC_OK ||
        eng_model_load(o.aux, &mp, &aux, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    const struct eng_model_config *bc = eng_model_config_of(base);
    const struct eng_model_config *ac = eng_model_config_of(aux);
    if (eng_kvp_check_pair(bc, ac, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    const int max_pos = bc->max_position_embeddings < ac->max_position_embeddings
                            ? bc->max_position_embeddings
                            : ac->max_position_embeddings;
    if (o.ctx > max_pos) {
        fprintf(stderr, "kvcast calibrate: --ctx %ld exceeds the models' %d positions\n", o.ctx,
                max_pos);
        goto done;
    }
    const struct eng_kvp_shape shape = eng_kvp_shape_of_pair(bc, ac);
    map = calloc((size_t)shape.base_layers, sizeof(int32_t));
    if (map == NULL) {
        fprintf(stderr, "kvcast calibrate: out of memory\n");
        goto done;
    }
    if (strcmp(o.layer_map, "auto") == 0) {
        eng_kvp_layer_map_auto(shape.base_layers, shape.aux_layers, map);
    } else if (eng_kvp_layer_map_parse(o.layer_map, &shape, map, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: --layer-map: %s\n", err.msg);
        goto done;
    }
    if (kc_data_tokens(o.data, o.ids, o.base, (size_t)o.tokens, &tokens, &n_tokens, &err) !=
        KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    if (n_tokens < 2) {
        fprintf(stderr, "kvcast calibrate: %s holds fewer than 2 tokens\n", o.data);
        goto done;
    }
    if (n_tokens < (size_t)o.tokens) {
        fprintf(stderr, "kvcast calibrate: note: %s has only %zu tokens (asked for %ld)\n", o.data,
                n_tokens, o.tokens);
    }
    const int ctx = (int)o.ctx;
    const int block = 16;
    window = calloc((size_t)ctx, sizeof(int32_t));
    if (window == NULL) {
        fprintf(stderr, "kvcast calibrate: out of memory\n");
        goto done;
    }
    if (eng_kvp_ctx_create(base, aux, NULL, ctx < 512 ? ctx : 512, ctx, o.threads, &kc, &err) !=
            KC_OK ||
        eng_ctx_create(base, ctx < 512 ? ctx : 512, ctx, o.threads, &bctx, &err) != KC_OK ||
        eng_kv_pool_init_dtype(&pool, bc, block, (ctx + block - 1) / block, o.kv_dtype, &err) !=
            KC_OK ||
        eng_kv_pool_init_dtype(&apool, eng_model_config_of(aux), block, (ctx + block - 1) / block,
                               o.kv_dtype, &err) != KC_OK ||
        eng_kvp_calib_create(&shape, map, o.threads, &cal, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    fprintf(stderr,
            "calibrating: base %d layers x %d kv dims <- aux %d layers x %d kv dims; %zu tokens in "
            "windows of %d (loaded in %.1f s)\n",
            shape.base_layers, shape.base_kv_dim, shape.aux_layers, shape.aux_kv_dim, n_tokens, ctx,
            kc_now_s() - t_load);
    struct progress prog = {.tty = isatty(fileno(stderr)) != 0,
                            .quiet = o.quiet,
                            .total = n_tokens,
                            .t0 = kc_now_s(),
                            .last_decile = -1};
    /* Windows of [BOS] + ctx-1 text tokens (or ctx text tokens without a BOS). */
    const int bos = o.no_bos ? -1 : bc->bos_token_id;
    const size_t text_per_win = (size_t)ctx - (bos >= 0 ? 1 : 0);
    size_t done_tokens = 0;
    while (done_tokens < n_tokens) {
        const size_t left = n_tokens - done_tokens;
        const size_t k = left < text_per_win ? left : text_per_win;
        const int w = (int)k + (bos >= 0 ? 1 : 0);
        if (w < 2) {
            break; /* a lone trailing token adds nothing worth a forward */
        }
        if (bos >= 0) {
            window[0] = bos;
        }
        memcpy(window + (bos >= 0 ? 1 : 0), tokens + done_tokens, k * sizeof(int32_t));
        if (eng_kvp_calib_window(cal, kc, bctx, &pool, &apool, window, w, &err) != KC_OK) {
            fprintf(stderr, "\nkvcast calibrate: window at token %zu: %s\n", done_tokens, err.msg);
            goto done;
        }
        done_tokens += k;
        progress_show(&prog, done_tokens, false);
    }
    progress_show(&prog, done_tokens, true);
    const double t_fit = kc_now_s();
    if (eng_kvp_calib_solve(cal, o.ridge, &pred, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    if (eng_kvp_save(pred, o.out, &err) != KC_OK) {
        fprintf(stderr, "kvcast calibrate: %s\n", err.msg);
        goto done;
    }
    const double el = t_fit - prog.t0;
    fprintf(stderr, "wrote %s: %lld rows, ridge %g, layer map", o.out,
            (long long)eng_kvp_calib_rows(cal), o.ridge);
    for (int l = 0; l < shape.base_layers; l++) {
        fprintf(stderr, "%s%d", l ? "," : " ", (int)map[l]);
    }
    fprintf(stderr, "; forward+accumulate %.1f s (%.0f tokens/s), solve %.2f s\n", el,
            el > 0 ? (double)done_tokens / el : 0.0, kc_now_s() - t_fit);
    exit_code = 0;
done:
    eng_kvp_free(pred);
    eng_kvp_calib_free(cal);
    eng_kv_pool_free(&pool);
    eng_kv_pool_free(&apool);
    eng_ctx_free(bctx);
    eng_kvp_ctx_free(kc);
    eng_model_free(aux);
    eng_model_free(base);
    free(tokens);
    free(window);
    free(map);
    return exit_code;
}
