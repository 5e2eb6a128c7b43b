/*
 * settings.h — the one place where the server turns its settings (config/config.h) into what
 * the layers below it take: the scheduler's sch_config and the request validator's limits.
 *
 * Place in the data flow: cfg_settings_load -> srv_sch_config -> sch_create (serve.c), and
 * srv_limits_of -> srv_completion_parse. A setting that reaches the scheduler is copied here
 * and nowhere else; max_context is resolved against the model here and nowhere else.
 *
 * Thread rules: pure functions of their arguments; any thread.
 */
#ifndef SRV_SETTINGS_H
#define SRV_SETTINGS_H

#include "config/config.h"
#include "scheduler/scheduler.h"
#include "server/request.h"

/* The prompt + max_tokens limit the server enforces: --max-context when it is set and below
 * the model's positions, else the model's positions (model_positions >= 1). */
int srv_max_context(const struct cfg_settings *c, int model_positions);

/* The scheduler's configuration: every field from its setting, max_context resolved by
 * srv_max_context. */
struct sch_config srv_sch_config(const struct cfg_settings *c, int model_positions);

/* The request validator's limits for a loaded model (model_id is borrowed: it must outlive
 * the limits). default_mode: --prefill-mode (auto if it does not parse, which the settings
 * table's choices rule out). */
struct srv_limits srv_limits_of(const struct cfg_settings *c, const char *model_id, int vocab_size,
                                int model_positions);

#endif /* SRV_SETTINGS_H */
