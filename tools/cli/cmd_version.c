/*
 * cmd_version.c — `kvcast --version` / `kvcast version [--json]`: the build's git describe
 * (baked in by tools/version.cmake) and the versions of the libraries this binary runs with.
 * Each library's header stays in the module that owns it (tests/check_layering.sh): oneDNN and
 * PCRE2 answer through the engine, libmicrohttpd and libuv through the server.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>

#include "engine/ops.h"
#include "kc_version.h"
#include "server/version.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/cli/json_out.h"

const char *kc_cli_version(void) {
    return KC_GIT_DESCRIBE;
}

int kc_cmd_version(int argc, char **argv) {
    bool json = false;
    struct kc_args a;
    kc_args_init(&a, "kvcast version", argc, argv);
    while (kc_args_next(&a)) {
        if (kc_args_help(&a)) {
            printf("usage: kvcast version [--json]   (also: kvcast --version)\n"
                   "  the git describe this binary was built from and its libraries' versions\n");
            return 0;
        } else if (kc_args_flag(&a, "--json")) {
            json = true;
        } else {
            return kc_args_fail(&a);
        }
    }
    char dnnl[128], pcre2[64], jansson_rt[32];
    eng_dnnl_version(dnnl, sizeof(dnnl));
    eng_tok_pcre2_version(pcre2, sizeof(pcre2));
    /* The library this process runs with, which may be newer than the header built against. */
    snprintf(jansson_rt, sizeof(jansson_rt), "%s", jansson_version_str());
    const struct srv_versions sv = srv_versions();
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    const char *curl = cv != NULL && cv->version != NULL ? cv->version : "unknown";
    if (json) {
        json_t *deps = json_object();
        json_object_set_new(deps, "onednn", kc_json_str(dnnl));
        json_object_set_new(deps, "libmicrohttpd", kc_json_str(sv.microhttpd));
        json_object_set_new(deps, "libuv", kc_json_str(sv.libuv));
        json_object_set_new(deps, "jansson", kc_json_str(jansson_rt));
        json_object_set_new(deps, "pcre2", kc_json_str(pcre2));
        json_object_set_new(deps, "libcurl", kc_json_str(curl));
        json_t *j = json_object();
        json_object_set_new(j, "version", kc_json_str(KC_GIT_DESCRIBE));
        json_object_set_new(j, "from_git", json_boolean(KC_VERSION_FROM_GIT));
        json_object_set_new(j, "dependencies", deps);
        return kc_json_print("kvcast version", j);
    }
    printf("kvcast %s%s\n", KC_GIT_DESCRIBE, KC_VERSION_FROM_GIT ? "" : " (not built from git)");
    printf("  oneDNN        %s\n", dnnl);
    printf("  libmicrohttpd %s\n", sv.microhttpd);
    printf("  libuv         %s\n", sv.libuv);
    printf("  jansson       %s (built with %s)\n", jansson_rt, JANSSON_VERSION);
    printf("  PCRE2         %s\n", pcre2);
    printf("  libcurl       %s\n", curl);
    return 0;
}
