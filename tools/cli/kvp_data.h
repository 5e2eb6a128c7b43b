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
 * whitespace- or comma-separated non-negative token ids; otherwise it is UTF-8 text,
 * tokenized without special tokens by the tokenizer of tok_dir, in pieces cut at line breaks.
 * Ids are not checked against a vocabulary here (the forward pass does). Errors name the file.
 */
int kc_data_tokens(const char *path, bool ids, const char *tok_dir, size_t max_tokens,
                   int32_t **out, size_t *n_out, struct kc_error *err);

#endif
