/*
 * sched_internal.h — scheduler internals shared between its .c files and its tests: CPU
 * pinning and the test hooks. Not part of the API the server uses.
 */
#ifndef SCH_SCHED_INTERNAL_H
#define SCH_SCHED_INTERNAL_H

#include <stdint.h>

#include "scheduler/scheduler.h"

/* Pins the calling thread to CPUs [first_cpu, first_cpu + n_cpus). KC_ERANGE when those
 * CPUs are not all online, KC_EINVAL when the kernel refuses. */
int sch__pin_self(int first_cpu, int n_cpus);

/* Points in the workers' loops where a test may observe or pause them. Hooks run on the
 * worker thread with no scheduler lock held; they may call sch_cancel and block (briefly). */
enum sch_hook_point {
    SCH_HOOK_PREFILL_CHUNK = 0, /* after each prefill chunk of request id (step = chunk) */
    SCH_HOOK_DECODE_JOIN,       /* the decode worker has work, before it joins hand-offs */
    SCH_HOOK_DECODE_BEGIN,      /* before a decode step of step = n running sequences */
    SCH_HOOK_DECODE_END,        /* after that step's tokens were emitted */
};
typedef void (*sch_hook_fn)(void *ud, enum sch_hook_point point, uint64_t id, int step);

/* Installs a hook; call before the first submit. */
void sch__set_hook(struct sch *s, sch_hook_fn fn, void *ud);

#endif /* SCH_SCHED_INTERNAL_H */
