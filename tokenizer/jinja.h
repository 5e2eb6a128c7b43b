/*
 * jinja.h — a Jinja template engine for Hugging Face chat templates: parse a template once,
 * render it with a JSON context (messages, add_generation_prompt, bos_token, tools, ...).
 *
 * Place in the data flow: the chat endpoint and `kvcast chat-template` read a model's
 * chat_template (tokenizer_config.json or chat_template.jinja), parse it with eng_jinja_parse()
 * and render each request's conversation with eng_jinja_render(); the rendered prompt is then
 * tokenized with special tokens parsed. It lives in the tokenizer library because a chat
 * template is part of a tokenizer's configuration.
 *
 * Semantics: rendering matches what transformers' apply_chat_template produces with jinja2
 * (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
 * extensions=[loopcontrols]), no autoescape, a tojson filter that is Python's json.dumps with
 * ensure_ascii=False, and the globals raise_exception and strftime_now), byte for byte. That
 * means: line endings of the template become "\n" and one trailing newline is dropped; the
 * first newline after a block tag ({% %} or {# #}) is removed; spaces and tabs before a block
 * tag at the start of a line are removed; "{%-", "-%}", "{{-", "-}}", "{#-", "-#}" strip all
 * whitespace on that side and "{%+" / "+%}" keep it. Printed values look like Python's str():
 * None, True, 1.5, 1e+16, ['a', 1], {'k': 'v'}, and an undefined value prints as "".
 *
 * Supported subset (anything else is a parse error naming it, or a runtime error):
 *   statements  {{ expr }}, {# comment #}, {% raw %}; if/elif/else; for x in ... [if cond]
 *               ... [else] (targets may be tuples: `for k, v in d.items()`), with loop.index,
 *               index0, revindex, revindex0, first, last, length, previtem, nextitem, depth,
 *               depth0, cycle(...); break/continue; set (`set a = ...`, `set a, b = ...`,
 *               `set ns.attr = ...`, block `set x %}...{% endset`, with filters); macro (with
 *               defaults, keyword arguments, varargs/kwargs) and call blocks with caller();
 *               filter blocks; with blocks; generation blocks (transformers' AssistantTracker
 *               tag: renders its body).
 *   expressions literals (strings with Python escapes, ints incl. 0x/0o/0b and _, floats,
 *               true/false/none in any of Jinja's spellings, lists, tuples, dicts), + - * / //
 *               % ** (Python semantics; ints are 64-bit and overflow is an error), ~, unary -
 *               and +, == != < <= > >= (chained), in / not in, and/or/not (Python truthiness,
 *               returning operands), `a if c else b`, attribute/item access (jinja2 order),
 *               slices incl. [::-1], calls with keyword arguments, filters, `is [not]` tests.
 *   globals     range (at most 100000 items, as the sandbox), namespace, dict,
 *               raise_exception(msg), strftime_now(fmt) (UTC, at opts->now_unix).
 *   filters     abs, attr, batch, capitalize, center, count, d/default (incl. boolean), dictsort,
 *               e/escape/forceescape (HTML escaping), first, float, format, indent,
 *               int, items, join (with attribute), last, length, list, lower, map (filter name
 *               or attribute=), max, min, reject, rejectattr, replace, reverse, round, safe,
 *               select, selectattr, sort (reverse, case_sensitive, attribute), string, sum,
 *               title, tojson (ensure_ascii, indent, separators, sort_keys), trim, truncate,
 *               unique, upper, wordcount.
 *   tests       defined, undefined, none, boolean, false, true, integer, float, number, string,
 *               mapping, iterable, sequence, callable, sameas, odd, even, divisibleby, eq,
 *               equalto, ==, ne, !=, lt, <, le, <=, gt, >, ge, >=, in, lower, upper, escaped.
 *   methods     str: startswith, endswith (str or tuple), strip, lstrip, rstrip, split, rsplit,
 *               splitlines, upper, lower, title, capitalize, swapcase, replace, find, rfind,
 *               index, count, join, format ({} {0} {name}), isdigit, isalpha, isalnum, isspace,
 *               isupper, islower, isnumeric, isdecimal, center, zfill, ljust, rjust,
 *               removeprefix, removesuffix, partition, rpartition, rindex, casefold; dict:
 *               items, keys, values, get, copy; list/tuple: index, count, copy. Mutating
 *               methods (append, pop, update, ...) are refused as the immutable sandbox
 *               refuses them.
 * Values: undefined, none, bool, int (int64), float (double, printed like Python's repr),
 * string (UTF-8; length, indexing and slicing count code points as Python does), list, tuple,
 * dict (insertion order), namespace, macro, loop. Case mapping (upper/lower/title/...) covers
 * ASCII, Latin-1, Greek and Cyrillic; other letters are left unchanged.
 *
 * Not supported (a clear error, never a wrong render): recursive loops and loop.changed,
 * include/import/extends (no loader), *args and **kwargs in calls, format specs in str.format,
 * integers beyond 64 bits, cycler/joiner/lipsum; range() and dict views print as lists.
 *
 * Context: transformers always passes tools and documents (None when absent) plus the
 * tokenizer's special tokens (bos_token, eos_token, ...); pass "tools": null and
 * "documents": null too for the same rendering (`tools is defined` is then true).
 *
 * Limits: max_output bytes of output, max_steps loop iterations + calls, max_depth nested
 * macro calls; the render's memory pool is capped at 64 x max_output (at least 64 MiB, at most
 * 1 GiB) plus 8 x the context's size; the evaluator's recursion is bounded as well.
 *
 * Errors: parse errors are KC_EFORMAT "template:LINE:COL: what"; runtime errors KC_EINVAL
 * "template:LINE:COL: what"; raise_exception(msg) KC_EINVAL with err->msg exactly msg;
 * a limit (output size, steps, call depth, memory) KC_ERANGE. Nesting in the template source is
 * limited to ENG_JINJA_MAX_NESTING levels at parse time, so no input recurses deeply.
 *
 * Ownership and threads: eng_jinja_parse() returns a template owned by the caller and freed with
 * eng_jinja_free(). A parsed template is immutable; any number of threads may render it at once
 * (each render keeps all its state, in its own memory pool, on its own call).
 */
#ifndef ENG_JINJA_H
#define ENG_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include "common/kc.h"

/* Deepest nesting of expressions and blocks that eng_jinja_parse() accepts. */
#define ENG_JINJA_MAX_NESTING 200

struct eng_jinja; /* a parsed template: immutable, may be rendered by many threads at once */

struct eng_jinja_opts {
    size_t max_output;  /* bytes of output; 0 = default 1 MiB */
    uint64_t max_steps; /* loop iterations + calls in total; 0 = default 1,000,000 */
    int max_depth;      /* nesting of calls/macros/includes of expressions; 0 = default 64 */
    int64_t now_unix;   /* what strftime_now formats (UTC); 0 = the current time */
};

/* Parses a template. Errors: KC_EFORMAT with err->msg "template:LINE:COL: what is wrong",
 * KC_ENOMEM. On failure *out is untouched. */
int eng_jinja_parse(const char *src, size_t len, struct eng_jinja **out, struct kc_error *err);

/* Renders with the members of the JSON object ctx_json (ctx_len bytes) as global variables.
 * *out is malloc'd and NUL-terminated (the caller frees it), *out_len its length.
 * Errors: KC_EINVAL "template:LINE:COL: ..." for a runtime error (undefined method, wrong
 * type, ...); raise_exception(msg) gives KC_EINVAL with err->msg exactly msg (truncated to
 * the buffer) so the server can answer 400 with the template's own message; KC_ERANGE when a
 * limit is hit; KC_EINVAL when ctx_json is not a JSON object. Never crashes, never leaks.
 * On failure *out and *out_len are untouched. */
int eng_jinja_render(const struct eng_jinja *t, const char *ctx_json, size_t ctx_len,
                     const struct eng_jinja_opts *opts /* NULL = defaults */, char **out,
                     size_t *out_len, struct kc_error *err);

/* Frees a parsed template (NULL is a no-op). */
void eng_jinja_free(struct eng_jinja *t);

#endif /* ENG_JINJA_H */
