/*
 * tokenizer_unicode.c — the Unicode pieces the tokenizer needs and PCRE2 does not give: UTF-8
 * validation and coding, the White_Space property, and NFC normalization (Qwen's normalizer).
 *
 * NFC follows UAX #15 exactly: full canonical decomposition (tables generated from Unicode 14 by
 * tokenizer_nfc_gen.py, Hangul algorithmically), canonical ordering of combining marks (a stable
 * merge sort, so a long run of marks costs n log n, not n^2), then canonical composition with
 * blocking. Pure functions; thread-safe.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

size_t eng__utf8_len(uint8_t b) {
    if (b < 0x80) {
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        return 2;
    }
    if (b >= 0xE0 && b <= 0xEF) {
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        return 4;
    }
    return 1;
}

size_t eng__utf8_valid_prefix(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        const uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint8_t lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) {
            n = 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            n = 3;
            if (b == 0xE0) {
                lo = 0xA0;
            } else if (b == 0xED) {
                hi = 0x9F; /* no surrogates */
            }
        } else if (b >= 0xF0 && b <= 0xF4) {
            n = 4;
            if (b == 0xF0) {
                lo = 0x90;
            } else if (b == 0xF4) {
                hi = 0x8F;
            }
        } else {
            return i;
        }
        if (len - i < n) {
            return i;
        }
        if (s[i + 1] < lo || s[i + 1] > hi) {
            return i;
        }
        for (size_t k = 2; k < n; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) {
                return i;
            }
        }
        i += n;
    }
    return i;
}

uint32_t eng__utf8_decode(const uint8_t *s, size_t len, size_t *n) {
    const uint8_t b = s[0];
    size_t k = eng__utf8_len(b);
    if (k > len) {
        k = 1;
    }
    *n = k;
    switch (k) {
    case 2:
        return ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
    case 3:
        return ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    case 4:
        return ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    default:
        return b;
    }
}

size_t eng__utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool eng__uni_is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* ---- NFC ---- */

enum {
    S_BASE = 0xAC00,
    L_BASE = 0x1100,
    V_BASE = 0x1161,
    T_BASE = 0x11A7,
    L_COUNT = 19,
    V_COUNT = 21,
    T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT,
};

static uint8_t ccc_of(uint32_t cp) {
    if (cp < 0x300) {
        return 0;
    }
    size_t lo = 0, hi = eng__tok_ccc_ranges_n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (cp < eng__tok_ccc_ranges[mid].lo) {
            hi = mid;
        } else if (cp > eng__tok_ccc_ranges[mid].hi) {
            lo = mid + 1;
        } else {
            return eng__tok_ccc_ranges[mid].ccc;
        }
    }
    return 0;
}

static const struct eng__tok_decomp *decomp_of(uint32_t cp) {
    if (cp < 0xC0) {
        return NULL;
    }
    size_t lo = 0, hi = eng__tok_decomps_n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (cp < eng__tok_decomps[mid].cp) {
            hi = mid;
        } else if (cp > eng__tok_decomps[mid].cp) {
            lo = mid + 1;
        } else {
            return &eng__tok_decomps[mid];
        }
    }
    return NULL;
}

/* Primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT) {
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    }
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT) {
        return a + (b - T_BASE);
    }
    size_t lo = 0, hi = eng__tok_comps_n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        const struct eng__tok_comp *c = &eng__tok_comps[mid];
        if (a < c->first || (a == c->first && b < c->second)) {
            hi = mid;
        } else if (a > c->first || b > c->second) {
            lo = mid + 1;
        } else {
            return c->composite;
        }
    }
    return 0;
}

/* Stable sort of cps[0..n) by combining class (all non-zero), using tmp[n]. */
static void sort_by_ccc(uint32_t *cps, uint8_t *cc, size_t n, uint32_t *tmp, uint8_t *tmpc) {
    if (n < 2) {
        return;
    }
    if (n <= 16) {
        for (size_t i = 1; i < n; i++) {
            const uint32_t c = cps[i];
            const uint8_t k = cc[i];
            size_t j = i;
            while (j > 0 && cc[j - 1] > k) {
                cps[j] = cps[j - 1];
                cc[j] = cc[j - 1];
                j--;
            }
            cps[j] = c;
            cc[j] = k;
        }
        return;
    }
    const size_t h = n / 2;
    sort_by_ccc(cps, cc, h, tmp, tmpc);
    sort_by_ccc(cps + h, cc + h, n - h, tmp, tmpc);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        if (cc[j] < cc[i]) {
            tmp[o] = cps[j];
            tmpc[o++] = cc[j++];
        } else {
            tmp[o] = cps[i];
            tmpc[o++] = cc[i++];
        }
    }
    while (i < h) {
        tmp[o] = cps[i];
        tmpc[o++] = cc[i++];
    }
    while (j < n) {
        tmp[o] = cps[j];
        tmpc[o++] = cc[j++];
    }
    memcpy(cps, tmp, n * sizeof(*cps));
    memcpy(cc, tmpc, n);
}

/* True when the text cannot change under NFC without looking further: ASCII or a character
 * with no decomposition, no combining class and no composition partner before it. We take the
 * simple, safe route: only all-ASCII text skips the full algorithm. */
static bool nfc_trivial(const uint8_t *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (s[i] >= 0x80) {
            return false;
        }
    }
    return true;
}

int eng__tok_nfc(const char *src, size_t len, char **out, size_t *out_len) {
    const uint8_t *s = (const uint8_t *)src;
    uint32_t *cps = NULL, *tmp = NULL;
    uint8_t *cc = NULL, *tmpc = NULL;
    char *res = NULL;
    int rc = KC_ENOMEM;

    if (nfc_trivial(s, len)) {
        res = malloc(len + 1);
        if (res == NULL) {
            goto fail;
        }
        memcpy(res, src, len);
        res[len] = '\0';
        *out = res;
        *out_len = len;
        return 0;
    }
    /* First pass: the exact number of code points after decomposition. */
    size_t cap = 0;
    for (size_t i = 0; i < len;) {
        size_t k;
        const uint32_t cp = eng__utf8_decode(s + i, len - i, &k);
        i += k;
        if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
            cap += (cp - S_BASE) % T_COUNT != 0 ? 3 : 2;
        } else {
            const struct eng__tok_decomp *d = decomp_of(cp);
            cap += d == NULL ? 1 : d->len;
        }
    }
    cps = kc_calloc(cap + 1, sizeof(*cps));
    cc = kc_calloc(cap + 1, 1);
    if (cps == NULL || cc == NULL) {
        goto fail;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t k;
        const uint32_t cp = eng__utf8_decode(s + i, len - i, &k);
        i += k;
        if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
            const uint32_t si = cp - S_BASE;
            cps[n++] = L_BASE + si / N_COUNT;
            cps[n++] = V_BASE + (si % N_COUNT) / T_COUNT;
            if (si % T_COUNT != 0) {
                cps[n++] = T_BASE + si % T_COUNT;
            }
            continue;
        }
        const struct eng__tok_decomp *d = decomp_of(cp);
        if (d == NULL) {
            cps[n++] = cp;
        } else {
            for (uint16_t j = 0; j < d->len; j++) {
                cps[n++] = eng__tok_decomp_pool[d->off + j];
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        cc[i] = ccc_of(cps[i]);
    }
    /* Canonical ordering: sort each maximal run of non-starters. */
    for (size_t i = 0; i < n;) {
        if (cc[i] == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && cc[j] != 0) {
            j++;
        }
        if (j - i > 1) {
            if (tmp == NULL) {
                tmp = kc_calloc(n, sizeof(*tmp));
                tmpc = kc_calloc(n, 1);
                if (tmp == NULL || tmpc == NULL) {
                    goto fail;
                }
            }
            sort_by_ccc(cps + i, cc + i, j - i, tmp, tmpc);
        }
        i = j;
    }
    /* Canonical composition. */
    size_t w = 0;              /* write index */
    size_t starter = SIZE_MAX; /* index (in output) of the last starter */
    int last_cc = -1;          /* ccc of the last character written after the starter */
    for (size_t i = 0; i < n; i++) {
        const uint32_t c = cps[i];
        const uint8_t k = cc[i];
        if (starter != SIZE_MAX) {
            const bool blocked = last_cc != -1 && (last_cc == 0 || last_cc >= k);
            if (!blocked) {
                const uint32_t comp = compose(cps[starter], c);
                if (comp != 0) {
                    cps[starter] = comp;
                    continue;
                }
            }
        }
        cps[w] = c;
        cc[w] = k;
        if (k == 0) {
            starter = w;
            last_cc = -1;
        } else {
            last_cc = k;
        }
        w++;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < w; i++) {
        bytes += cps[i] < 0x80 ? 1 : cps[i] < 0x800 ? 2 : cps[i] < 0x10000 ? 3 : 4;
    }
    res = malloc(bytes + 1);
    if (res == NULL) {
        goto fail;
    }
    size_t o = 0;
    for (size_t i = 0; i < w; i++) {
        o += eng__utf8_encode(cps[i], (uint8_t *)res + o);
    }
    res[o] = '\0';
    free(cps);
    free(cc);
    free(tmp);
    free(tmpc);
    *out = res;
    *out_len = o;
    return 0;
fail:
    free(cps);
    free(cc);
    free(tmp);
    free(tmpc);
    free(res);
    return rc;
}
