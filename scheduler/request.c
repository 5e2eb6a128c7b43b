/* request.c — the request state machine's edges, timestamps and cancellation flag (see
 * request.h for the drawing and the owner of each state). */
#include "scheduler/request.h"

const char *sch_req_state_name(enum sch_req_state s) {
    switch (s) {
    case SCH_REQ_QUEUED:
        return "queued";
    case SCH_REQ_PREFILLING:
        return "prefilling";
    case SCH_REQ_HANDED_OFF:
        return "handed-off";
    case SCH_REQ_DECODING:
        return "decoding";
    case SCH_REQ_FINISHED:
        return "finished";
    case SCH_REQ_CANCELLED:
        return "cancelled";
    case SCH_REQ_FAILED:
        return "failed";
    case SCH_REQ_N_STATES:
        break;
    }
    return "?";
}

bool sch__req_state_terminal(enum sch_req_state s) {
    return s == SCH_REQ_FINISHED || s == SCH_REQ_CANCELLED || s == SCH_REQ_FAILED;
}

bool sch_req_transition_legal(enum sch_req_state from, enum sch_req_state to) {
    switch (from) {
    case SCH_REQ_QUEUED:
        return to == SCH_REQ_PREFILLING || to == SCH_REQ_CANCELLED || to == SCH_REQ_FAILED;
    case SCH_REQ_PREFILLING:
        return to == SCH_REQ_HANDED_OFF || to == SCH_REQ_FINISHED || to == SCH_REQ_CANCELLED ||
               to == SCH_REQ_FAILED;
    case SCH_REQ_HANDED_OFF:
        return to == SCH_REQ_DECODING || to == SCH_REQ_CANCELLED;
    case SCH_REQ_DECODING:
        return to == SCH_REQ_FINISHED || to == SCH_REQ_CANCELLED || to == SCH_REQ_FAILED;
    case SCH_REQ_FINISHED:
    case SCH_REQ_CANCELLED:
    case SCH_REQ_FAILED:
    case SCH_REQ_N_STATES:
        break;
    }
    return false;
}

void sch_req_transition(struct sch_req *r, enum sch_req_state to) {
    KC_ASSERT(sch_req_transition_legal(r->state, to));
    r->state = to;
    r->t_state[to] = kc_now_ns();
}

bool sch_req_cancel(struct sch_req *r, enum sch_finish f) {
    KC_ASSERT(f == SCH_FINISH_STOP || f == SCH_FINISH_ABORT || f == SCH_FINISH_LENGTH);
    int expected = SCH_FINISH_NONE;
    return atomic_compare_exchange_strong(&r->cancel, &expected, (int)f);
}

enum sch_finish sch_req_cancelled(const struct sch_req *r) {
    return (enum sch_finish)atomic_load(&r->cancel);
}

static double ms_between(uint64_t a, uint64_t b) {
    return (a != 0 && b >= a) ? (double)(b - a) / 1e6 : 0.0;
}

void sch_req_timings(const struct sch_req *r, struct sch_timings *out) {
    const uint64_t t_submit = r->t_state[SCH_REQ_QUEUED];
    const uint64_t t_prefill = r->t_state[SCH_REQ_PREFILLING];
    /* Prefill ends when the first token is emitted (hand-off comes after it), so that
     * ttft = queue + prefill (scheduler.h); no first token: 0. */
    const uint64_t t_prefill_end = r->t_first_token;
    struct sch_timings t = {
        .queue_ms = ms_between(t_submit, t_prefill),
        .prefill_ms = ms_between(t_prefill, t_prefill_end),
        .aux_ms = r->aux_ms,
        .predict_ms = r->predict_ms,
        .base_first_step_ms = r->base_first_step_ms,
        .ttft_ms = ms_between(t_submit, r->t_first_token),
        .decode_ms = ms_between(r->t_first_token, r->t_last_token),
        .mode = r->mode == SCH_MODE_AUTO ? SCH_MODE_FULL : r->mode,
        .prefill_threads = r->prefill_threads,
        .cached_tokens = r->cached_tokens,
        .base_cached_tokens = r->base_cached_tokens,
        .refine_result = r->refine_result,
        .refined_at_token = r->refine_result == SCH_REFINE_SWAPPED ? r->refined_at_token : -1,
        .refine_ms = r->refine_result == SCH_REFINE_SWAPPED
                         ? ms_between(r->t_first_token, r->t_refined)
                         : 0.0,
    };
    *out = t;
}
