/*
 * util.h — small pieces the server's components share: a growable byte buffer, a
 * constant-time key comparison and the stop-string matcher that works on detokenized text.
 *
 * Thread rules: none of these lock; each object belongs to one thread (the loop thread).
 */
#ifndef SRV_UTIL_H
#define SRV_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "common/kc.h"

/* Growable byte buffer, always NUL-terminated when p != NULL. */
struct srv_buf {
    char *p;
    size_t len;
    size_t cap;
};

/* Appends n bytes; KC_ENOMEM (buffer unchanged) on failure or overflow. */
int srv_buf_append(struct srv_buf *b, const void *data, size_t n);
/* Appends printf output. */
int srv_buf_printf(struct srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void srv_buf_consume(struct srv_buf *b, size_t n);
void srv_buf_free(struct srv_buf *b);

/* Compares a presented secret with the configured one in time that depends only on the
 * configured key's length (never on where the first difference is). */
bool srv_secret_equal(const char *presented, size_t presented_len, const char *key, size_t key_len);

/* State of a connected TCP socket's peer, without reading from it. SRV_SOCK_EOF: the peer
 * sent FIN (it may still read: a half-close); SRV_SOCK_GONE: reset, error, or the connection is
 * no longer established in either direction. */
enum srv_sock_peer { SRV_SOCK_OPEN = 0, SRV_SOCK_EOF, SRV_SOCK_GONE };
int srv_sock_peer_state(int fd);

/* Writes all of p (n bytes) without blocking and without SIGPIPE; false when not all of it
 * could be written. */
bool srv_sock_write_now(int fd, const char *p, size_t n);

/*
 * Stop strings on detokenized text. Text that could still be the start of a stop string is
 * held back (never sent to a streaming client) until it is either ruled out or completes a
 * stop string. Stop strings and input are valid UTF-8, so every cut lands on a character
 * boundary.
 */
struct srv_stop {
    char *const *stop; /* borrowed from the request */
    int n_stop;
    bool include_stop; /* include_stop_str_in_output */
    struct srv_buf held;
};

/* Starts a matcher over stop[0..n_stop). */
void srv_stop_init(struct srv_stop *s, char *const *stop, int n_stop, bool include_stop);

/* Feeds newly decoded text. Appends to emit the text that is now safe to send. Returns the
 * index of the stop string that matched (the text after it is discarded), or -1. KC_ENOMEM
 * is returned as -2. */
int srv_stop_feed(struct srv_stop *s, const char *text, size_t len, struct srv_buf *emit);

/* End of generation without a match: appends the held-back text to emit. */
int srv_stop_flush(struct srv_stop *s, struct srv_buf *emit);
void srv_stop_free(struct srv_stop *s);

#endif /* SRV_UTIL_H */
