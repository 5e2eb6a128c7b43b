/*
 * affinity.c — the machine: CPU pinning of worker threads (cfg.pin_cpus), the usable core
 * count and the CPU-dependent default prefill weight type. Kept apart because
 * pthread_setaffinity_np, sched_getaffinity and cpu_set_t need _GNU_SOURCE, which the rest of
 * the scheduler, written in strict C11 + POSIX, does not define.
 *
 * Threads created by a pinned thread inherit its mask, so pinning a worker before its first
 * OpenMP region also pins the OpenMP team oneDNN will start from it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Whether the space-separated word list `flags` holds `word`. */
static bool has_flag(const char *flags, const char *word) {
    const size_t n = strlen(word);
    for (const char *p = flags; (p = strstr(p, word)) != NULL; p += n) {
        const bool start = p == flags || p[-1] == ' ' || p[-1] == '\t';
        const bool end = p[n] == '\0' || p[n] == ' ' || p[n] == '\t' || p[n] == '\n';
        if (start && end) {
            return true;
        }
    }
    return false;
}

const char *sch_prefill_dtype_for_flags(const char *flags) {
    if (flags != NULL && has_flag(flags, "amx_bf16") && has_flag(flags, "amx_tile")) {
        return "bf16";
    }
    return "f32";
}

const char *sch_prefill_dtype_default(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) {
        return "f32";
    }
    const char *dtype = "f32";
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "flags", 5) == 0) {
            const char *colon = strchr(line, ':');
            dtype = sch_prefill_dtype_for_flags(colon != NULL ? colon + 1 : NULL);
            break;
        }
    }
    free(line);
    fclose(f);
    return dtype;
}
