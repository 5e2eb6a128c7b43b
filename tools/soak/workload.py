"""workload.py — what the soak sends: prompts, completion requests, invalid and oversized ones.

Every generated completion request is valid for the server's default limits; its expected
server-side accounting is carried along (`Spec.choice_lens`: the prompt tokens of each choice),
so that the client's own ledger can be reconciled with /metrics afterwards.
"""

import json
import random

# Austen and King James flavoured words, so prompts look like what the tiny model was trained
# on (any text works; this only keeps generations ordinary).
WORDS = (
    "the LORD spake unto Moses saying and it came to pass in those days that Elizabeth "
    "Bennet walked to Netherfield with her sister Jane who was very much admired by Mr "
    "Bingley and his friend Darcy thought her eyes were fine behold I will send an angel "
    "before thee to keep thee in the way of the house of Israel it is a truth universally "
    "acknowledged that a single man in possession of a good fortune must be in want of a "
    "wife Emma Woodhouse handsome clever and rich with a comfortable home and happy "
    "disposition seemed to unite some of the best blessings of existence and the earth was "
    "without form and void and darkness was upon the face of the deep Anne Elliot had been "
    "forced into prudence in her youth she learned romance as she grew older thou shalt "
    "love thy neighbour as thyself Captain Wentworth wrote a letter Marianne Dashwood "
    "Colonel Brandon Lady Catherine de Bourgh Pemberley Bath Jerusalem Egypt Pharaoh "
    "David Solomon Ruth Naomi Boaz Esther Mordecai Haman ; , . ! ? :"
).split()

STOPS = ([" and"], ["\n\n", "LORD"], ["."], [" the", ","], ["Bennet"])


def prompt_texts(rng, n_words_list):
    """One text per entry of n_words_list: sentences of random WORDS, some with newlines."""
    out = []
    for n in n_words_list:
        words = [rng.choice(WORDS) for _ in range(n)]
        text = " ".join(words)
        if n > 30:
            cut = rng.randrange(10, n)
            text = " ".join(words[:cut]) + "\n\n" + " ".join(words[cut:])
        out.append(text)
    return out


class Spec:
    """One generated completion request and what the server should account for it."""

    def __init__(self):
        self.body = {}
        self.n = 1
        self.prompt_lens = []  # tokens of each prompt (server's count, from /tokenize)
        self.choice_lens = []  # tokens of the prompt of each choice (prompts x n)
        self.max_tokens = 16
        self.mode = None  # requested prefill_mode, None: not sent (server default)
        self.stream = False
        self.echo = False

    def payload(self):
        return json.dumps(self.body).encode()


def make_spec(ctx, rng: random.Random, stream, cancel):
    """A random valid completion request. Cancelled ones ask for ctx.cancel_max_tokens with
    ignore_eos and no stop strings, so that only a working disconnect path ends them early."""
    s = Spec()
    s.stream = stream
    s.n = 2 if rng.random() < 0.15 else 1
    k = 2 if rng.random() < 0.12 else 1
    use_ids = rng.random() < 0.2
    prompts = []
    for _ in range(k):
        if use_ids:
            ln = rng.choice((1, 3, 17, 64, 150, 300))
            start = rng.randrange(0, len(ctx.token_pool) - ln)
            prompts.append(ctx.token_pool[start : start + ln])
            s.prompt_lens.append(ln)
        else:
            text, ntok = rng.choice(ctx.prompts)
            prompts.append(text)
            s.prompt_lens.append(ntok)
    b = s.body
    b["prompt"] = prompts[0] if k == 1 else prompts
    if cancel:
        s.max_tokens = ctx.cancel_max_tokens
        b["ignore_eos"] = True
    else:
        s.max_tokens = rng.choice((1, 2, 8, 16, 24, 32, 48, 64))
    b["max_tokens"] = s.max_tokens
    s.mode = rng.choice(("auto", "full", "predict", None))
    if s.mode is not None:
        b["prefill_mode"] = s.mode
    if stream:
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
    elif rng.random() < 0.3:
        b["stream"] = False
    if s.n > 1:
        b["n"] = s.n
    b["temperature"] = rng.choice((0.0, 0.6, 1.0, 1.3))
    if rng.random() < 0.3:
        b["top_p"] = round(rng.uniform(0.5, 1.0), 3)
    if rng.random() < 0.3:
        b["top_k"] = rng.randint(1, 50)
    if rng.random() < 0.2:
        b["min_p"] = 0.05
    if rng.random() < 0.2:
        b["presence_penalty"] = round(rng.uniform(-1.0, 1.0), 3)
        b["frequency_penalty"] = round(rng.uniform(-1.0, 1.0), 3)
    if rng.random() < 0.2:
        b["repetition_penalty"] = round(rng.uniform(0.8, 1.3), 3)
    if rng.random() < 0.3:
        b["seed"] = rng.randrange(1 << 31)
    if not cancel and rng.random() < 0.25:
        b["stop"] = rng.choice(STOPS)
    if rng.random() < 0.2:
        b["logprobs"] = rng.randint(0, 5)
    elif not stream and rng.random() < 0.05:
        b["echo"] = True
        s.echo = True
    if not cancel and rng.random() < 0.3:
        b["ignore_eos"] = True
    if rng.random() < 0.1:
        b["user"] = "soak"
    s.choice_lens = [s.prompt_lens[i // s.n] for i in range(k * s.n)]
    return s


# Invalid requests: (name, method, path, body bytes, content type, accepted statuses). Each is
# refused by kvcast's own handler, so each answer counts in http_error_responses_total.
# Statuses are sets so that a stricter or looser (but still correct) future answer is easy
# to allow here.
def invalid_cases(max_model_len):
    big_tokens = max_model_len + 10
    return [
        ("truncated_json", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": ',
         "application/json", {400}),
        ("not_object", "POST", "/v1/completions", b"[1, 2, 3]", "application/json", {400}),
        ("negative_max_tokens", "POST", "/v1/completions",
         b'{"prompt": "x", "max_tokens": -1}', "application/json", {400}),
        ("huge_max_tokens", "POST", "/v1/completions",
         json.dumps({"prompt": "x", "max_tokens": big_tokens * 50}).encode(),
         "application/json", {400}),
        ("string_temperature", "POST", "/v1/completions",
         b'{"prompt": "x", "temperature": "hot"}', "application/json", {400}),
        ("empty_prompt_list", "POST", "/v1/completions", b'{"prompt": []}',
         "application/json", {400}),
        ("bad_mode", "POST", "/v1/completions", b'{"prompt": "x", "prefill_mode": "sideways"}',
         "application/json", {400}),
        ("too_many_choices", "POST", "/v1/completions", b'{"prompt": "x", "n": 1000}',
         "application/json", {400}),
        ("logprobs_99", "POST", "/v1/completions", b'{"prompt": "x", "logprobs": 99}',
         "application/json", {400}),
        ("negative_token", "POST", "/v1/completions", b'{"prompt": [[-5, 3]]}',
         "application/json", {400}),
        ("token_out_of_vocab", "POST", "/v1/completions", b'{"prompt": [[99999999]]}',
         "application/json", {400}),
        ("bad_utf8", "POST", "/v1/completions", b'{"prompt": "\xff\xfe\xfd"}',
         "application/json", {400}),
        ("deep_nesting", "POST", "/v1/completions", b"[" * 5000 + b"]" * 5000,
         "application/json", {400}),
        ("nan_literal", "POST", "/v1/completions", b'{"prompt": "x", "temperature": NaN}',
         "application/json", {400}),
        ("wrong_method", "GET", "/v1/completions", None, None, {405}),
        ("no_such_path", "POST", "/v1/nope", b"{}", "application/json", {404}),
        ("text_plain", "POST", "/v1/completions", b'{"prompt": "x"}', "text/plain", {415}),
        ("bad_tokenize", "POST", "/tokenize", b'{"prompt": 5}', "application/json", {400}),
        ("bad_detokenize", "POST", "/detokenize", b'{"tokens": [-1]}', "application/json",
         {400}),
    ]
