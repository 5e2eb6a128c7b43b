/*
 * libFuzzer target for the /v1/completions request validator (RELIABILITY.md C20): any body
 * must give a verdict (a parsed request or an OpenAI error), never a crash, leak or hang.
 */
#include <stddef.h>
#include <stdint.h>

#include "server/errors.h"
#include "server/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const struct srv_limits lim = {
        .model_id = "tiny",
        .vocab_size = 4096,
        .max_context = 2048,
        .max_choices = 4,
        .max_stop = 4,
        .max_stop_bytes = 64,
        .strict = (size & 1) != 0,
        .default_mode = 0,
    };
    struct srv_completion_req req;
    struct srv_error e;
    if (srv_completion_parse((const char *)data, size, &lim, &req, &e) == 0) {
        srv_completion_req_free(&req);
    }
    return 0;
}
