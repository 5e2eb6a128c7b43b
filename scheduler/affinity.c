/*
 * affinity.c — the machine: CPU pinning of worker threads (cfg.pin_cpus) and the usable core
 * count. Kept apart because
 * pthread_setaffinity_np, sched_getaffinity and cpu_set_t need _GNU_SOURCE, which the rest of
 * the scheduler, written in strict C11 + POSIX, does not define.
 *
 * Threads created by a pinned thread inherit its mask, so pinning a worker before its first
 * OpenMP region also pins the OpenMP team oneDNN will start from it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "scheduler/sched_internal.h"

int sch__pin_self(int first_cpu, int n_cpus) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (n_cpus < 1 || first_cpu < 0 || online < 1 || first_cpu + n_cpus > online) {
        return KC_ERANGE;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c = first_cpu; c < first_cpu + n_cpus; c++) {
        CPU_SET(c, &set);
    }
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0 ? KC_OK : KC_EINVAL;
}

int sch_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) {
            return n;
        }
    }
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)(online < 1024 ? online : 1024) : 1;
}
