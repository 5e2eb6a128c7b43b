/*
 * kc.c — implementation of the common helpers declared in kc.h.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise(MADV_HUGEPAGE) */
#include "kc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

int kc_log_level = KC_LOG_INFO;

const char *kc_strerror(int code) {
    switch (code) {
    case KC_OK:
        return "success";
#define KC__ERRNO_CASE(name, val, msg)                                                             \
    case KC_##name:                                                                                \
        return msg;
        KC_ERRNO_MAP(KC__ERRNO_CASE)
#undef KC__ERRNO_CASE
    default:
        return "unknown error";
    }
}

int kc_error_set(struct kc_error *err, int code, const char *fmt, ...) {
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void kc_error_prefix(struct kc_error *err, const char *fmt, ...) {
    if (err == NULL) {
        return;
    }
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    /* Build in a buffer large enough for both parts, then cut to the message size. */
    char joined[sizeof(prefix) + sizeof(err->msg) + 2];
    snprintf(joined, sizeof(joined), "%s: %s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof(err->msg) - 1);
    err->msg[sizeof(err->msg) - 1] = '\0';
}

void kc__assert_fail(const char *expr, const char *file, int line, const char *func) {
    fprintf(stderr, "kvcast: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
    fflush(stderr);
    abort();
}

void kc__log(int level, const char *func, const char *fmt, ...) {
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    /* One fprintf per line so lines from different threads do not interleave. */
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            names[level < 0 ? 0 : (level > 3 ? 3 : level)], func, line);
}

int kc_log_level_parse(const char *s) {
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        if (s != NULL && strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    return KC_EINVAL;
}

uint64_t kc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double kc_now_s(void) {
    return (double)kc_now_ns() * 1e-9;
}

void *kc_calloc(size_t n, size_t size) {
    size_t total;
    if (!kc_size_mul(n, size, &total)) {
        return NULL;
    }
    return calloc(total == 0 ? 1 : total, 1);
}

void *kc_aligned_alloc(size_t size) {
    /* Buffers of 2 MiB and more (weights, KV pools) are 2 MiB-aligned and asked to be backed
     * by transparent huge pages (THP is often `madvise`-only): streaming weights through 4 KiB
     * pages costs a TLB walk per page and stops the hardware prefetcher at every page edge.
     * The advice is only advice; without THP the buffer is still correct. */
    const size_t huge = (size_t)2 << 20;
    const size_t align = size >= huge ? huge : 64;
    size_t rounded = (size + align - 1) & ~(align - 1);
    if (rounded < size) {
        return NULL;
    }
    void *p = aligned_alloc(align, rounded == 0 ? 64 : rounded);
    if (p != NULL) {
#ifdef MADV_HUGEPAGE
        if (align == huge) {
            (void)madvise(p, rounded, MADV_HUGEPAGE);
        }
#endif
        memset(p, 0, rounded == 0 ? 64 : rounded);
    }
    return p;
}

void kc_aligned_free(void *p) {
    free(p);
}

int kc_file_read(const char *path, size_t max_bytes, char **out, size_t *out_len,
                 struct kc_error *err) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return kc_error_set(err, errno == ENOENT ? KC_ENOTFOUND : KC_EIO, "%s: %s", path,
                            strerror(errno));
    }
    char *buf = NULL;
    int rc;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = kc_error_set(err, KC_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > (uint64_t)max_bytes) {
        rc = kc_error_set(err, KC_ERANGE, "%s: file is %lld bytes, limit is %zu", path,
                          (long long)st.st_size, max_bytes);
        goto fail;
    }
    size_t len = (size_t)st.st_size;
    buf = malloc(len + 1);
    if (buf == NULL) {
        rc = kc_error_set(err, KC_ENOMEM, "%s: cannot allocate %zu bytes", path, len + 1);
        goto fail;
    }
    if (len > 0 && fread(buf, 1, len, f) != len) {
        rc = kc_error_set(err, KC_EIO, "%s: short read", path);
        goto fail;
    }
    buf[len] = '\0';
    fclose(f);
    *out = buf;
    if (out_len != NULL) {
        *out_len = len;
    }
    return KC_OK;
fail:
    free(buf);
    fclose(f);
    return rc;
}

int kc_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') {
        dl--;
    }
    int n = snprintf(out, cap, "%.*s/%s", (int)dl, dir, name);
    if (n < 0 || (size_t)n >= cap) {
        return KC_ERANGE;
    }
    return KC_OK;
}
