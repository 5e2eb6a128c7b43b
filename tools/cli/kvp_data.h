/*
 * kvp_data.h — calibration and evaluation text for `kvcast calibrate` and `kvcast eval`:
 * reads a text file and tokenizes it with a model directory's tokenizer, or reads a file of
 * token ids (for models without a tokenizer, such as the golden test models).
 */
#ifndef KC_CLI_KVP_DATA_H
#define KC_CLI_KVP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"

/* Largest data file read, in bytes. */
#define KC_DATA_MAX_BYTES ((size_t)1 << 30)

/*
 * Reads up to max_tokens tokens (0: all) of path into a malloc'd array. ids: the file holds
 * whitespace- or comma-separated non-negative token ids, '#' starting a comment that runs to
 * the end of its line; otherwise it is UTF-8 text,
 * tokenized without special tokens by the tokenizer of tok_dir, in pieces cut at line breaks.
 * Ids are not checked against a vocabulary here (the forward pass does). Errors name the file.
 */
int kc_data_tokens(const char *path, bool ids, const char *tok_dir, size_t max_tokens,
                   int32_t **out, size_t *n_out, struct kc_error *err);

/*
 * A token-id file may say in a leading comment line which windows it holds:
 *     # kvcast-windows prompt_len=128 cont_len=32 samples=64
 * i.e. `samples` windows of prompt_len + cont_len - 1 ids back to back (no BOS), which
 * `kvcast eval` with those options takes exactly (models/tiny/heldout.ids is such a file).
 */
#define KC_DATA_WINDOWS_TAG "kvcast-windows"
struct kc_data_windows {
    long prompt_len, cont_len, samples;
};
/* Reads that header from path into *w: KC_OK, or KC_ENOTFOUND (no file or no header). */
int kc_data_windows(const char *path, struct kc_data_windows *w);

#endif
