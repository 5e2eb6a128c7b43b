/*
 * version.h — the versions of the server's third-party libraries (libmicrohttpd, libuv), for
 * `kvcast --version`: their headers stay inside server/ (tests/check_layering.sh).
 */
#ifndef SRV_VERSION_H
#define SRV_VERSION_H

struct srv_versions {
    const char *microhttpd; /* MHD_get_version(): the linked library, e.g. "0.9.75" */
    const char *libuv;      /* uv_version_string(), e.g. "1.44.2" */
};

/* The linked libraries' version strings (static storage; never NULL). */
struct srv_versions srv_versions(void);

#endif
