/*
 * util.c — byte buffer, constant-time compare, socket peer checks, stop-string matcher.
 * See util.h.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "server/util.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int srv_buf_append(struct srv_buf *b, const void *data, size_t n) {
    size_t need;
    if (!kc_size_add(b->len, n, &need) || !kc_size_add(need, 1, &need)) {
        return KC_ENOMEM;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) {
            if (cap > SIZE_MAX / 2) {
                return KC_ENOMEM;
            }
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            return KC_ENOMEM;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, data, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
    return KC_OK;
}

int srv_buf_printf(struct srv_buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return KC_EINVAL;
    }
    if ((size_t)n < sizeof(small)) {
        return srv_buf_append(b, small, (size_t)n);
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) {
        return KC_ENOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = srv_buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

void srv_buf_consume(struct srv_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p != NULL) {
        b->p[b->len] = '\0';
    }
}

void srv_buf_free(struct srv_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

bool srv_secret_equal(const char *presented, size_t presented_len, const char *key,
                      size_t key_len) {
    /* Touch every byte of the key whatever the input; a length mismatch is folded into
     * the same accumulator so the loop never exits early. */
    volatile unsigned char diff = (unsigned char)(presented_len != key_len);
    for (size_t i = 0; i < key_len; i++) {
        unsigned char c = i < presented_len ? (unsigned char)presented[i] : 0;
        diff |= (unsigned char)(c ^ (unsigned char)key[i]);
    }
    return key_len > 0 && diff == 0;
}

void srv_stop_init(struct srv_stop *s, char *const *stop, int n_stop, bool include_stop) {
    memset(s, 0, sizeof(*s));
    s->stop = stop;
    s->n_stop = n_stop;
    s->include_stop = include_stop;
}

/* Length of the longest suffix of h (len n) that is a proper prefix of some stop string. */
static size_t held_suffix(const struct srv_stop *s, const char *h, size_t n) {
    size_t best = 0;
    for (int i = 0; i < s->n_stop; i++) {
        size_t sl = strlen(s->stop[i]);
        size_t k = sl - 1 < n ? sl - 1 : n;
        for (; k > best; k--) {
            if (memcmp(h + n - k, s->stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

int srv_stop_feed(struct srv_stop *s, const char *text, size_t len, struct srv_buf *emit) {
    if (s->n_stop == 0) {
        return srv_buf_append(emit, text, len) == KC_OK ? -1 : -2;
    }
    if (srv_buf_append(&s->held, text, len) != KC_OK) {
        return -2;
    }
    /* Earliest match wins; among matches at one position, the first listed. */
    const char *h = s->held.p;
    size_t n = s->held.len;
    size_t best_pos = SIZE_MAX;
    int best = -1;
    for (int i = 0; i < s->n_stop; i++) {
        size_t sl = strlen(s->stop[i]);
        for (size_t p = 0; sl <= n && p <= n - sl && p < best_pos; p++) {
            if (memcmp(h + p, s->stop[i], sl) == 0) {
                best_pos = p;
                best = i;
                break;
            }
        }
    }
    if (best >= 0) {
        size_t out = best_pos + (s->include_stop ? strlen(s->stop[best]) : 0);
        int rc = srv_buf_append(emit, h, out);
        s->held.len = 0;
        s->held.p[0] = '\0';
        return rc == KC_OK ? best : -2;
    }
    size_t keep = held_suffix(s, h, n);
    if (srv_buf_append(emit, h, n - keep) != KC_OK) {
        return -2;
    }
    srv_buf_consume(&s->held, n - keep);
    return -1;
}

int srv_stop_flush(struct srv_stop *s, struct srv_buf *emit) {
    int rc = KC_OK;
    if (s->held.len > 0) {
        rc = srv_buf_append(emit, s->held.p, s->held.len);
        srv_buf_consume(&s->held, s->held.len);
    }
    return rc;
}

void srv_stop_free(struct srv_stop *s) {
    srv_buf_free(&s->held);
}

int srv_sock_peer_state(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) < 0) {
        return SRV_SOCK_OPEN; /* EINTR and the like: ask again at the next check */
    }
    /* POLLHUP on TCP means both directions are shut (a reset, or our own shutdown);
     * POLLERR a pending error such as ECONNRESET after our write met a closed peer. */
    if ((p.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
        return SRV_SOCK_GONE;
    }
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state != TCP_ESTABLISHED &&
        ti.tcpi_state != TCP_CLOSE_WAIT) {
        return SRV_SOCK_GONE;
    }
    return (p.revents & POLLRDHUP) != 0 ? SRV_SOCK_EOF : SRV_SOCK_OPEN;
}

bool srv_sock_write_now(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return false;
        }
        p += k;
        n -= (size_t)k;
    }
    return true;
}
