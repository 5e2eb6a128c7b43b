/*
 * kc.h — common code shared by every kvcast module: error codes, error messages for
 * user-facing failures, always-on asserts, logging, clocks and overflow-checked sizes.
 *
 * Place in the data flow: a leaf. Every other module (engine, scheduler, server, config,
 * tools) includes it; it includes nothing of theirs.
 *
 * Thread rules: everything here is thread-safe. The log level is the one process-wide
 * setting, written once at start-up before threads exist.
 */
#ifndef KC_H
#define KC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Error codes: 0 is success, every failure a negative KC_E* value from this table. */
#define KC_ERRNO_MAP(X)                                                                            \
    X(EINVAL, -1, "invalid argument")                                                              \
    X(ENOMEM, -2, "out of memory")                                                                 \
    X(EIO, -3, "input/output error")                                                               \
    X(EFORMAT, -4, "malformed file or data")                                                       \
    X(ERANGE, -5, "value out of range")                                                            \
    X(EUNSUPPORTED, -6, "unsupported feature")                                                     \
    X(ENOTFOUND, -7, "not found")                                                                  \
    X(EBUSY, -8, "resource busy")                                                                  \
    X(ECANCELED, -9, "operation canceled")                                                         \
    X(ECONTEXT, -10, "context length exceeded")                                                    \
    X(EBACKEND, -11, "compute backend error")

enum kc_errno {
    KC_OK = 0,
#define KC__ERRNO_ENUM(name, val, msg) KC_##name = (val),
    KC_ERRNO_MAP(KC__ERRNO_ENUM)
#undef KC__ERRNO_ENUM
};

/* Returns a static, human-readable name for an error code; never NULL. */
const char *kc_strerror(int code);

/* A failure caused by user input (a file, a request, a flag) carries a message that names
 * the offending thing and the problem, e.g. "models/x/model.safetensors: tensor 'a' ends
 * past end of file". */
struct kc_error {
    int code;
    char msg[512];
};

/* Records code and a printf-style message into err (which may be NULL) and returns code,
 * so callers can write `return kc_error_set(err, KC_EFORMAT, "...")`. */
int kc_error_set(struct kc_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an error message already in err (no-op when err is NULL). */
void kc_error_prefix(struct kc_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Always-on assert for programmer errors (never for input): prints file:line and aborts. */
#define KC_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            kc__assert_fail(#cond, __FILE__, __LINE__, __func__);                                  \
        }                                                                                          \
    } while (0)
_Noreturn void kc__assert_fail(const char *expr, const char *file, int line, const char *func);

/* Logging. Macros test the level before evaluating their arguments. */
enum kc_log_level { KC_LOG_ERROR = 0, KC_LOG_WARN, KC_LOG_INFO, KC_LOG_DEBUG };
extern int kc_log_level; /* set once at start-up; default KC_LOG_INFO */

void kc__log(int level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define KC_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= kc_log_level) {                                                             \
            kc__log((level), __func__, __VA_ARGS__);                                               \
        }                                                                                          \
    } while (0)
#define KC_ERROR(...) KC_LOG(KC_LOG_ERROR, __VA_ARGS__)
#define KC_WARN(...) KC_LOG(KC_LOG_WARN, __VA_ARGS__)
#define KC_INFO(...) KC_LOG(KC_LOG_INFO, __VA_ARGS__)
#define KC_DEBUG(...) KC_LOG(KC_LOG_DEBUG, __VA_ARGS__)

/* Parses "error|warn|info|debug"; returns the level or KC_EINVAL. */
int kc_log_level_parse(const char *s);

/* Line format of every log line: text ("<time> <level> <func>: <msg>") or JSON, one object
 * per line: {"ts":"...","level":"info","func":"...","msg":"..."} plus any extra fields. Set
 * once at start-up like kc_log_level. */
enum kc_log_format { KC_LOG_FMT_TEXT = 0, KC_LOG_FMT_JSON };
extern int kc_log_format;
/* Parses "text|json"; returns the format or KC_EINVAL. */
int kc_log_format_parse(const char *s);

/* A log line with structured fields: `fields` is a JSON object body without braces
 * ("\"status\":200,\"path\":\"/x\""), added to the JSON object in json format and ignored
 * in text format (the message should then carry the same facts). */
void kc__log_fields(int level, const char *func, const char *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define KC_LOG_FIELDS(level, fields, ...)                                                          \
    do {                                                                                           \
        if ((level) <= kc_log_level) {                                                             \
            kc__log_fields((level), __func__, (fields), __VA_ARGS__);                              \
        }                                                                                          \
    } while (0)

/* Writes s as a quoted, escaped JSON string into out (cap bytes, always NUL-terminated;
 * cut at a character boundary when it does not fit, still quoted). Bytes that are not valid
 * UTF-8 become \ufffd, so the output is always valid JSON. Returns the length written. */
size_t kc_json_quote(char *out, size_t cap, const char *s);

/* Monotonic clock in nanoseconds / seconds. */
uint64_t kc_now_ns(void);
double kc_now_s(void);

/* Overflow-checked size arithmetic: return false (and leave *out alone) on overflow. */
static inline bool kc_size_mul(size_t a, size_t b, size_t *out) {
    if (b != 0 && a > SIZE_MAX / b) {
        return false;
    }
    *out = a * b;
    return true;
}
static inline bool kc_size_add(size_t a, size_t b, size_t *out) {
    if (a > SIZE_MAX - b) {
        return false;
    }
    *out = a + b;
    return true;
}

/* Allocation helpers: kc_calloc checks n*size for overflow; both return NULL on failure. */
void *kc_calloc(size_t n, size_t size);
/* 64-byte aligned, zeroed allocation for kernel buffers; free with kc_aligned_free. */
void *kc_aligned_alloc(size_t size);
void kc_aligned_free(void *p);

/* Reads a whole file into a NUL-terminated heap buffer (caller frees) of at most max_bytes.
 * Fails with KC_ENOTFOUND, KC_EIO or KC_ERANGE (too large), filling err with the path. */
int kc_file_read(const char *path, size_t max_bytes, char **out, size_t *out_len,
                 struct kc_error *err);

/* Joins dir and name with one '/' into out (cap bytes); KC_ERANGE if it does not fit. */
int kc_path_join(char *out, size_t cap, const char *dir, const char *name);

#endif /* KC_H */
