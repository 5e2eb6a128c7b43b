/*
 * queue.h — an intrusive FIFO of requests (the wait queue, the hand-off queue and the reap
 * list), linked through struct sch_req's prev/next so that moving a request between
 * queues allocates nothing and sch_cancel can unlink a queued request in O(1).
 *
 * Thread rules: none of its own; every queue is guarded by the scheduler's lock.
 */
#ifndef SCH_QUEUE_H
#define SCH_QUEUE_H

#include "scheduler/request.h"

struct sch_queue {
    struct sch_req *head;
    struct sch_req *tail;
    int n;
};

/* Appends r (on no queue) at the tail. */
void sch_queue_push(struct sch_queue *q, struct sch_req *r);
/* Removes and returns the head, or NULL when empty. */
struct sch_req *sch_queue_pop(struct sch_queue *q);
/* Unlinks r, which must be on q. */
void sch_queue_remove(struct sch_queue *q, struct sch_req *r);
/* Moves every element of src to the tail of dst, in order; src becomes empty. */
void sch_queue_splice(struct sch_queue *dst, struct sch_queue *src);

#endif /* SCH_QUEUE_H */
