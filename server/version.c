/* version.c — the linked libmicrohttpd's and libuv's versions (version.h). */
#define _POSIX_C_SOURCE 200809L
#include "server/version.h"

#include <microhttpd.h>
#include <stddef.h>
#include <uv.h>

struct srv_versions srv_versions(void) {
    const char *mhd = MHD_get_version();
    return (struct srv_versions){.microhttpd = mhd != NULL ? mhd : "unknown",
                                 .libuv = uv_version_string()};
}
