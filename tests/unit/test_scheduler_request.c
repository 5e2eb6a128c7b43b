/*
 * Unit tests of the request state machine (every legal edge, every illegal one refused) and
 * of the intrusive request queue the scheduler moves requests through.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/queue.h"
#include "scheduler/request.h"

static void test_legal_edges_are_exactly_the_drawn_ones(void **state) {
    (void)state;
    static const struct {
        enum sch_req_state from, to;
    } legal[] = {
        {SCH_REQ_QUEUED, SCH_REQ_PREFILLING},    {SCH_REQ_QUEUED, SCH_REQ_CANCELLED},
        {SCH_REQ_QUEUED, SCH_REQ_FAILED},        {SCH_REQ_PREFILLING, SCH_REQ_HANDED_OFF},
        {SCH_REQ_PREFILLING, SCH_REQ_FINISHED},  {SCH_REQ_PREFILLING, SCH_REQ_CANCELLED},
        {SCH_REQ_PREFILLING, SCH_REQ_FAILED},    {SCH_REQ_HANDED_OFF, SCH_REQ_DECODING},
        {SCH_REQ_HANDED_OFF, SCH_REQ_CANCELLED}, {SCH_REQ_DECODING, SCH_REQ_FINISHED},
        {SCH_REQ_DECODING, SCH_REQ_CANCELLED},   {SCH_REQ_DECODING, SCH_REQ_FAILED},
    };
    const size_t n_legal = sizeof(legal) / sizeof(legal[0]);
    for (int f = 0; f < SCH_REQ_N_STATES; f++) {
        for (int t = 0; t < SCH_REQ_N_STATES; t++) {
            bool want = false;
            for (size_t i = 0; i < n_legal; i++) {
                want = want || (legal[i].from == (enum sch_req_state)f &&
                                legal[i].to == (enum sch_req_state)t);
            }
            const bool got = sch_req_transition_legal(f, t);
            if (got != want) {
                fail_msg("%s -> %s: legal=%d, expected %d", sch_req_state_name(f),
                         sch_req_state_name(t), got, want);
            }
        }
    }
}

static void test_terminal_states_have_no_way_out(void **state) {
    (void)state;
    for (int f = 0; f < SCH_REQ_N_STATES; f++) {
        if (!sch__req_state_terminal(f)) {
            continue;
        }
        for (int t = 0; t < SCH_REQ_N_STATES; t++) {
            assert_false(sch_req_transition_legal(f, t));
        }
    }
    assert_true(sch__req_state_terminal(SCH_REQ_FINISHED));
    assert_true(sch__req_state_terminal(SCH_REQ_CANCELLED));
    assert_true(sch__req_state_terminal(SCH_REQ_FAILED));
    assert_false(sch__req_state_terminal(SCH_REQ_DECODING));
}

static void test_transitions_stamp_times_and_timings_follow(void **state) {
    (void)state;
    struct sch_req r;
    memset(&r, 0, sizeof(r));
    atomic_init(&r.cancel, 0);
    r.state = SCH_REQ_QUEUED;
    r.t_state[SCH_REQ_QUEUED] = kc_now_ns();
    r.mode = SCH_MODE_FULL;
    sch_req_transition(&r, SCH_REQ_PREFILLING);
    sch_req_transition(&r, SCH_REQ_HANDED_OFF);
    r.t_first_token = kc_now_ns();
    sch_req_transition(&r, SCH_REQ_DECODING);
    r.t_last_token = kc_now_ns();
    sch_req_transition(&r, SCH_REQ_FINISHED);
    assert_int_equal(r.state, SCH_REQ_FINISHED);
    for (int s = SCH_REQ_PREFILLING; s <= SCH_REQ_FINISHED; s++) {
        assert_true(r.t_state[s] >= r.t_state[s - 1]);
    }
    struct sch_timings t;
    sch_req_timings(&r, &t);
    assert_true(t.queue_ms >= 0.0 && t.prefill_ms >= 0.0 && t.ttft_ms >= t.queue_ms);
    assert_int_equal(t.mode, SCH_MODE_FULL);
}

static void test_cancel_flag_first_finish_wins(void **state) {
    (void)state;
    struct sch_req r;
    memset(&r, 0, sizeof(r));
    atomic_init(&r.cancel, 0);
    assert_int_equal(sch_req_cancelled(&r), SCH_FINISH_NONE);
    assert_true(sch_req_cancel(&r, SCH_FINISH_STOP));
    assert_false(sch_req_cancel(&r, SCH_FINISH_ABORT));
    assert_int_equal(sch_req_cancelled(&r), SCH_FINISH_STOP);
}

static void test_queue_is_fifo_and_unlinks_anywhere(void **state) {
    (void)state;
    struct sch_req r[5];
    memset(r, 0, sizeof(r));
    struct sch_queue q = {0}, q2 = {0};
    for (int i = 0; i < 5; i++) {
        r[i].id = (uint64_t)i;
        sch_queue_push(&q, &r[i]);
    }
    assert_int_equal(q.n, 5);
    sch_queue_remove(&q, &r[2]); /* middle */
    sch_queue_remove(&q, &r[4]); /* tail */
    assert_int_equal(q.n, 3);
    assert_ptr_equal(sch_queue_pop(&q), &r[0]);
    sch_queue_push(&q2, &r[2]);
    sch_queue_splice(&q2, &q);
    assert_int_equal(q.n, 0);
    assert_null(q.head);
    assert_int_equal(q2.n, 3);
    assert_ptr_equal(sch_queue_pop(&q2), &r[2]);
    assert_ptr_equal(sch_queue_pop(&q2), &r[1]);
    assert_ptr_equal(sch_queue_pop(&q2), &r[3]);
    assert_null(sch_queue_pop(&q2));
    assert_null(q2.tail);
}

static void test_mode_names_round_trip(void **state) {
    (void)state;
    enum sch_prefill_mode m;
    assert_int_equal(sch_mode_parse("auto", &m), KC_OK);
    assert_int_equal(m, SCH_MODE_AUTO);
    assert_int_equal(sch_mode_parse("predict", &m), KC_OK);
    assert_int_equal(m, SCH_MODE_PREDICT);
    assert_int_equal(sch_mode_parse("full", &m), KC_OK);
    assert_int_equal(m, SCH_MODE_FULL);
    assert_string_equal(sch_mode_name(SCH_MODE_PREDICT), "predict");
    assert_int_equal(sch_mode_parse("Full", &m), KC_EINVAL);
    assert_int_equal(sch_mode_parse(NULL, &m), KC_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_legal_edges_are_exactly_the_drawn_ones),
        cmocka_unit_test(test_terminal_states_have_no_way_out),
        cmocka_unit_test(test_transitions_stamp_times_and_timings_follow),
        cmocka_unit_test(test_cancel_flag_first_finish_wins),
        cmocka_unit_test(test_queue_is_fifo_and_unlinks_anywhere),
        cmocka_unit_test(test_mode_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
