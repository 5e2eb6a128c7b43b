/* queue.c — intrusive request FIFO (see queue.h). */
#include "scheduler/queue.h"

void sch_queue_push(struct sch_queue *q, struct sch_req *r) {
    KC_ASSERT(r->prev == NULL && r->next == NULL && q->head != r);
    r->prev = q->tail;
    if (q->tail != NULL) {
        q->tail->next = r;
    } else {
        q->head = r;
    }
    q->tail = r;
    q->n++;
}

struct sch_req *sch_queue_pop(struct sch_queue *q) {
    struct sch_req *r = q->head;
    if (r != NULL) {
        sch_queue_remove(q, r);
    }
    return r;
}

void sch_queue_remove(struct sch_queue *q, struct sch_req *r) {
    KC_ASSERT(q->n > 0);
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        KC_ASSERT(q->head == r);
        q->head = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    } else {
        KC_ASSERT(q->tail == r);
        q->tail = r->prev;
    }
    r->prev = r->next = NULL;
    q->n--;
}

void sch_queue_splice(struct sch_queue *dst, struct sch_queue *src) {
    if (src->head == NULL) {
        return;
    }
    if (dst->tail != NULL) {
        dst->tail->next = src->head;
        src->head->prev = dst->tail;
    } else {
        dst->head = src->head;
    }
    dst->tail = src->tail;
    dst->n += src->n;
    src->head = src->tail = NULL;
    src->n = 0;
}
