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

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int kc_log_format = KC_LOG_FMT_TEXT;

/* Length of the valid UTF-8 sequence at p (1..4), 0 when p does not start one. */
static size_t utf8_len(const unsigned char *p) {
    if (p[0] < 0x80) {
        return 1;
    }
    size_t n = p[0] >= 0xc2 && p[0] <= 0xdf   ? 2
               : p[0] >= 0xe0 && p[0] <= 0xef ? 3
               : p[0] >= 0xf0 && p[0] <= 0xf4 ? 4
                                              : 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    /* overlongs and surrogates */
    if ((n == 3 && p[0] == 0xe0 && p[1] < 0xa0) || (n == 3 && p[0] == 0xed && p[1] >= 0xa0) ||
        (n == 4 && p[0] == 0xf0 && p[1] < 0x90) || (n == 4 && p[0] == 0xf4 && p[1] >= 0x90)) {
        return 0;
    }
    return n;
}

size_t kc_json_quote(char *out, size_t cap, const char *s) {
    if (cap < 3) {
        if (cap > 0) {
            out[0] = '\0';
        }
        return 0;
    }
    size_t o = 0;
    out[o++] = '"';
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        char esc[8];
        const char *piece = esc;
        size_t plen;
        size_t adv = 1;
        switch (*p) {
        case '"':
            piece = "\\\"";
            plen = 2;
            break;
        case '\\':
            piece = "\\\\";
            plen = 2;
            break;
        case '\n':
            piece = "\\n";
            plen = 2;
            break;
        case '\r':
            piece = "\\r";
            plen = 2;
            break;
        case '\t':
            piece = "\\t";
            plen = 2;
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                plen = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", *p);
            } else if ((adv = utf8_len(p)) == 0) {
                piece = "\\ufffd";
                plen = 6;
                adv = 1;
            } else {
                piece = (const char *)p;
                plen = adv;
            }
        }
        if (o + plen + 2 > cap) {
            break;
        }
        memcpy(out + o, piece, plen);
        o += plen;
        p += adv;
    }
    out[o++] = '"';
    out[o] = '\0';
    return o;
}

static void log_line(int level, const char *func, const char *fields, const char *msg) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    const char *lv = level_names[level < 0 ? 0 : (level > 3 ? 3 : level)];
    if (kc_log_format == KC_LOG_FMT_JSON) {
        char qmsg[2200];
        char qfunc[160];
        kc_json_quote(qmsg, sizeof(qmsg), msg);
        kc_json_quote(qfunc, sizeof(qfunc), func);
        /* One fprintf per line so lines from different threads do not interleave. */
        fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"func\":%s,\"msg\":%s%s%s}\n", when, lv,
                qfunc, qmsg, fields != NULL && fields[0] != '\0' ? "," : "",
                fields != NULL ? fields : "");
        return;
    }
    fprintf(stderr, "%s %-5s %s: %s\n", when, lv, func, msg);
}

void kc__log(int level, const char *func, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    log_line(level, func, NULL, line);
}

void kc__log_fields(int level, const char *func, const char *fields, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    log_line(level, func, fields, line);
}

int kc_log_format_parse(const char *s) {
    if (s != NULL && strcmp(s, "text") == 0) {
        return KC_LOG_FMT_TEXT;
    }
    if (s != NULL && strcmp(s, "json") == 0) {
        return KC_LOG_FMT_JSON;
    }
    return KC_EINVAL;
}

int kc_log_level_parse(const char *s) {
    for (int i = 0; i < 4; i++) {
        if (s != NULL && strcmp(s, level_names[i]) == 0) {
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
