/*
 * settings.c — settings -> sch_config and request limits, in one place. See settings.h.
 */
#include "server/settings.h"

#include <string.h>

int srv_max_context(const struct cfg_settings *c, int model_positions) {
    return c->max_context > 0 && c->max_context < model_positions ? c->max_context
                                                                  : model_positions;
}

struct sch_config srv_sch_config(const struct cfg_settings *c, int model_positions) {
    /* Every field, named: a field added to sch_config without a line here is zero, and
     * test_server_util checks each line against its setting. */
    const struct sch_config sc = {
        .prefill_threads = c->prefill_threads,
        .decode_threads = c->decode_threads,
        .pin_cpus = c->pin_cpus,
        .tpot_slo_ms = c->tpot_slo_ms,
        .base_kv_bytes = (size_t)c->base_kv_mib << 20,
        .aux_kv_bytes = (size_t)c->aux_kv_mib << 20,
        .block_size = c->block_size,
        .kv_dtype = strcmp(c->kv_dtype, "bf16") == 0 ? ENG_DTYPE_BF16 : ENG_DTYPE_F32,
        .max_queue = c->max_queue,
        .max_running = c->max_running,
        .prefill_chunk = c->prefill_chunk,
        .max_context = srv_max_context(c, model_positions),
        .ttft_slo_ms = c->ttft_slo_ms,
        .predict_min_prompt = c->predict_min_prompt,
        .prefill_workers = c->prefill_workers,
        .shed_hopeless = c->shed_hopeless,
        .prefix_caching = c->enable_prefix_caching,
        .refine = c->refine,
        .debug_step_delay_ms = c->debug_step_delay_ms,
        .role = strcmp(c->role, "prefill") == 0  ? SCH_ROLE_PREFILL
                : strcmp(c->role, "decode") == 0 ? SCH_ROLE_DECODE
                                                 : SCH_ROLE_ALL,
        .pd_host = c->host,
        .pd_port = c->pd_port,
        .prefill_peers = c->prefill_peers,
        .pd_timeout_ms = c->pd_timeout_ms,
        .pd_resolve_ms = c->pd_resolve_ms,
    };
    return sc;
}

struct srv_limits srv_limits_of(const struct cfg_settings *c, const char *model_id, int vocab_size,
                                int model_positions) {
    struct srv_limits lim = {
        .model_id = model_id,
        .vocab_size = vocab_size,
        .max_context = srv_max_context(c, model_positions),
        .max_choices = c->max_choices,
        .max_stop = c->max_stop,
        .max_stop_bytes = c->max_stop_bytes,
        .strict = c->strict_fields,
        .default_mode = SCH_MODE_AUTO,
    };
    enum sch_prefill_mode dm = SCH_MODE_AUTO;
    if (sch_mode_parse(c->prefill_mode, &dm) == KC_OK) {
        lim.default_mode = dm;
    }
    return lim;
}
