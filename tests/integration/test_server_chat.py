#!/usr/bin/python3
"""POST /v1/chat/completions over real HTTP on the embedded tiny pair (issue 19 items 2-3, 6).

  1. Shapes: a non-stream answer is a "chat.completion" (id chatcmpl-..., choices[].message
     {role: "assistant", content}, finish_reason, usage with prompt_tokens_details.cached_tokens,
     timings); max_completion_tokens wins over max_tokens; n > 1 gives indices 0..n-1.
  2. The prompt is the template's: usage.prompt_tokens equals the ids `kvcast chat-template
     --json` prints for the same messages (one BOS, written by the template, not added twice),
     and with greedy decoding the chat content equals /v1/completions' text on those ids, in
     prefill_mode predict and full alike (and timings name the mode). Text parts join with
     "\\n"; add_generation_prompt false renders without the trailing "Assistant:".
  3. Streaming: "chat.completion.chunk"s with one id; per choice a first delta
     {role: "assistant", content: ""}, content deltas, a last chunk with an empty delta and the
     finish_reason; then the usage chunk (include_usage, choices []) and [DONE]; the deltas
     concatenate to the non-stream content.
  4. Logprobs in chat format: choices[].logprobs.content[] with token, logprob, bytes (the
     token's UTF-8) and top_logprobs (top_logprobs entries); streamed per chunk; top_logprobs
     without logprobs, or over 20, is a 400.
  5. Errors (OpenAI's error JSON, status 400, param named): tools / tool_choice / functions /
     response_format json -> "not supported"; messages missing, empty, of the wrong shape, a bad
     role, a non-text content part, null user content; a template that raises
     (--chat-template) -> its message; a model without a template -> a message that says how to
     give one (while /v1/completions still works); a --chat-template that does not parse stops
     the start-up.
Bounded: three servers (plus one that must fail to start), ~40 short requests, every HTTP call
has a timeout. usage: test_server_chat.py path/to/kvcast   (run from the source root)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import kc_testlib as kc
from kc_testlib import check, fail

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
BUNDLE = "models/tiny/kvcast-bundle.json"
TOKENIZER = "models/tiny/base"
DTYPE = ["--prefill-dtype", "f32", "--decode-dtype", "f32"]
BOS = 4095  # <|endoftext|>

CONV = [{"role": "system", "content": "You are Emma Woodhouse."},
        {"role": "user", "content": "Who is Mr. Knightley?"}]


class Server(kc.Server):
    def __init__(self, tmp, name, extra):
        # No prefix cache and no refinement: a predict-mode answer then depends only on its
        # prompt, not on which blocks an earlier request left (exact base KV after a swap).
        super().__init__(KVCAST, ["--bundle", BUNDLE, "--no-access-log", "--base-kv-mib", "16",
                                  "--aux-kv-mib", "8", "--no-enable-prefix-caching",
                                  "--no-refine"] + DTYPE + extra,
                         os.path.join(tmp, name + ".log"), name=name)

    def post_json(self, body, path="/v1/chat/completions"):
        status, raw = self.post(body, path)
        try:
            return status, json.loads(raw)
        except ValueError:
            fail("non-JSON answer %d from %s: %r" % (status, path, raw[:500]))

    def chat(self, body):
        status, o = self.post_json(body)
        check(status == 200, "chat %s -> %d %s" % (json.dumps(body)[:200], status, o))
        return o

    def stream(self, body):
        """(status, [data events as parsed JSON], saw [DONE] last)."""
        status, raw = self.post(dict(body, stream=True), "/v1/chat/completions")
        events, done = [], False
        for block in raw.split("\n\n"):
            if not block.startswith("data: "):
                continue
            check(not done, "data after [DONE]")
            payload = block[len("data: "):]
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
        return status, events, done

    def error(self, body, param, contains=None, status=400):
        st, o = self.post_json(body)
        check(st == status, "%s: status %d, want %d: %s" % (json.dumps(body)[:200], st, status, o))
        e = o.get("error") if isinstance(o, dict) else None
        check(isinstance(e, dict) and isinstance(e.get("message"), str) and "type" in e,
              "not an OpenAI error body: %s" % o)
        check(e.get("param") == param, "param %r, want %r (%s)" % (e.get("param"), param, e))
        if contains is not None:
            check(contains in e["message"], "message %r lacks %r" % (e["message"], contains))
        return e


def cli_render(tmp, messages, agp=True, template=None, tokenizer=TOKENIZER):
    path = os.path.join(tmp, "conv.json")
    with open(path, "w") as f:
        json.dump(messages, f)
    argv = [KVCAST, "chat-template", "--tokenizer", tokenizer, "--messages", path, "--json"]
    argv += ["--add-generation-prompt"] if agp else []
    argv += ["--template", template] if template else []
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, "kvcast chat-template failed: %s" % p.stderr)
    return json.loads(p.stdout)


def test_shapes_and_prompt(srv, tmp):
    r = cli_render(tmp, CONV)
    check(r["prompt"] == "<|endoftext|>System: You are Emma Woodhouse.\nUser: Who is Mr. "
          "Knightley?\nAssistant:", "rendered prompt %r" % r["prompt"])
    ids = r["ids"]
    check(ids[0] == BOS and ids[1] != BOS and ids.count(BOS) == 1,
          "one BOS, from the template: %s" % ids[:4])
    base = {"messages": CONV, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    for mode in ("predict", "full"):
        o = srv.chat(dict(base, prefill_mode=mode))
        check(o["object"] == "chat.completion" and o["id"].startswith("chatcmpl-"),
              "envelope %s" % o)
        check(o["model"] == "kvcast-tiny" and isinstance(o["created"], int), "model/created")
        check(len(o["choices"]) == 1, "one choice")
        ch = o["choices"][0]
        check(ch["index"] == 0 and ch["finish_reason"] == "length", "choice %s" % ch)
        check(ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str),
              "message %s" % ch["message"])
        check(ch["logprobs"] is None, "no logprobs unless asked")
        u = o["usage"]
        check(u["prompt_tokens"] == len(ids), "prompt_tokens %d, chat-template says %d"
              % (u["prompt_tokens"], len(ids)))
        check(u["completion_tokens"] == 8 and u["total_tokens"] == len(ids) + 8, "usage %s" % u)
        check(isinstance(u["prompt_tokens_details"]["cached_tokens"], int), "cached_tokens")
        check(o["timings"]["prefill_mode"] == mode, "timings %s" % o["timings"])
        st, c = srv.post_json({"prompt": ids, "max_tokens": 8, "temperature": 0,
                               "ignore_eos": True, "prefill_mode": mode}, "/v1/completions")
        check(st == 200, "completions on the ids: %d %s" % (st, c))
        check(ch["message"]["content"] == c["choices"][0]["text"],
              "%s: chat %r != completions on the rendered ids %r"
              % (mode, ch["message"]["content"], c["choices"][0]["text"]))
        check(c["usage"]["prompt_tokens"] == len(ids), "completions prompt_tokens")
    # max_completion_tokens wins over max_tokens; without either the answer may run to the
    # end of the context, so only check the explicit ones.
    o = srv.chat(dict(base, max_tokens=3, max_completion_tokens=5))
    check(o["usage"]["completion_tokens"] == 5, "max_completion_tokens: %s" % o["usage"])
    # Text parts are joined with "\n" for this string-only template.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who is"},
                                          {"type": "text", "text": "Mr. Knightley?"}]}]
    joined = [{"role": "user", "content": "Who is\nMr. Knightley?"}]
    a, b = srv.chat(dict(base, messages=parts)), srv.chat(dict(base, messages=joined))
    check(a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"] and
          a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"],
          "text parts render as their text joined by newlines")
    # add_generation_prompt false: no "Assistant:" at the end, so fewer prompt tokens.
    no_agp = srv.chat(dict(base, add_generation_prompt=False))
    r2 = cli_render(tmp, CONV, agp=False)
    check(no_agp["usage"]["prompt_tokens"] == len(r2["ids"]) < len(ids),
          "add_generation_prompt false: %d prompt tokens, chat-template says %d"
          % (no_agp["usage"]["prompt_tokens"], len(r2["ids"])))
    # An assistant turn with null content and a tool turn are accepted.
    hist = CONV + [{"role": "assistant", "content": None}, {"role": "tool", "content": "42"},
                   {"role": "user", "content": "And?"}]
    srv.chat(dict(base, messages=hist))
    # n > 1 with a seed: two choices, indices 0 and 1, usage over both.
    o = srv.chat(dict(base, n=2, seed=7, temperature=1.0))
    check([c["index"] for c in o["choices"]] == [0, 1], "n=2 indices")
    check(o["usage"]["completion_tokens"] == 16 and o["usage"]["prompt_tokens"] == len(ids),
          "n=2 usage %s" % o["usage"])
    # A stop string cuts the content and finishes with "stop".
    full = srv.chat(dict(base, max_tokens=16))["choices"][0]["message"]["content"]
    if len(full) >= 6:
        stop = full[len(full) // 2:len(full) // 2 + 2]
        o = srv.chat(dict(base, max_tokens=16, stop=[stop]))
        check(o["choices"][0]["message"]["content"] == full[:full.index(stop)] and
              o["choices"][0]["finish_reason"] == "stop", "stop string")


def test_stream(srv):
    base = {"messages": CONV, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    want = srv.chat(base)
    st, ev, done = srv.stream(dict(base, stream_options={"include_usage": True}))
    check(st == 200 and done, "stream status %d, [DONE] %s" % (st, done))
    check(len({e["id"] for e in ev}) == 1 and ev[0]["id"].startswith("chatcmpl-"), "one id")
    check(all(e["object"] == "chat.completion.chunk" for e in ev), "chunk objects")
    first = ev[0]["choices"][0]
    check(first["delta"] == {"role": "assistant", "content": ""} and
          first["finish_reason"] is None, "first chunk %s" % ev[0])
    usage = ev[-1]
    check(usage["choices"] == [] and usage["usage"] == want["usage"],
          "last chunk is the usage: %s (want %s)" % (usage, want["usage"]))
    final = ev[-2]["choices"][0]
    check(final["delta"] == {} and final["finish_reason"] == "length",
          "final chunk: empty delta + finish_reason: %s" % ev[-2])
    middle = ev[1:-2]
    check(all(e["usage"] is None for e in ev[:-1]), "usage null before the usage chunk")
    text = ""
    for e in middle:
        c = e["choices"][0]
        check(set(c["delta"]) == {"content"} and c["finish_reason"] is None,
              "content delta %s" % e)
        text += c["delta"]["content"]
    check(text == want["choices"][0]["message"]["content"],
          "streamed %r != non-stream %r" % (text, want["choices"][0]["message"]["content"]))
    # Without include_usage: no usage chunk, no usage keys.
    st, ev, done = srv.stream(base)
    check(done and ev[-1]["choices"][0]["finish_reason"] == "length" and
          all("usage" not in e for e in ev), "stream without include_usage")
    # n = 2: each choice opens with its role delta and ends with its own final chunk.
    st, ev, done = srv.stream(dict(base, n=2, seed=3, temperature=1.0))
    check(done, "n=2 stream [DONE]")
    for idx in (0, 1):
        mine = [e["choices"][0] for e in ev if e["choices"][0]["index"] == idx]
        check(mine[0]["delta"] == {"role": "assistant", "content": ""}, "n=2 role first")
        check(mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length", "n=2 final")
        check(all("role" not in c["delta"] for c in mine[1:]), "role only once")


def test_logprobs(srv):
    base = {"messages": CONV, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "logprobs": True, "top_logprobs": 3}
    o = srv.chat(base)
    ch = o["choices"][0]
    lp = ch["logprobs"]
    check(isinstance(lp, dict) and list(lp) == ["content"] and len(lp["content"]) == 6,
          "logprobs.content has one entry per token: %s" % lp)
    for ent in lp["content"]:
        check(set(ent) == {"token", "logprob", "bytes", "top_logprobs"}, "entry keys %s" % ent)
        check(ent["bytes"] == list(ent["token"].encode("utf-8")), "bytes of %r" % ent["token"])
        check(ent["logprob"] <= 0 and len(ent["top_logprobs"]) == 3, "entry %s" % ent)
        tops = ent["top_logprobs"]
        check(all(set(t) == {"token", "logprob", "bytes"} for t in tops), "top keys")
        check(tops[0]["token"] == ent["token"] and abs(tops[0]["logprob"] - ent["logprob"]) < 1e-4,
              "greedy: the token is the best alternative: %s" % ent)
        check(tops[0]["logprob"] >= tops[1]["logprob"] >= tops[2]["logprob"], "tops sorted")
    check("".join(e["token"] for e in lp["content"]) == ch["message"]["content"],
          "tokens concatenate to the content")
    o0 = srv.chat(dict(base, top_logprobs=0))
    check(all(e["top_logprobs"] == [] for e in o0["choices"][0]["logprobs"]["content"]),
          "top_logprobs 0: empty lists")
    o1 = srv.chat(dict(base, top_logprobs=None))
    check(len(o1["choices"][0]["logprobs"]["content"]) == 6, "logprobs without top_logprobs")
    st, ev, done = srv.stream(base)
    got = [x for e in ev for c in e["choices"] if c.get("logprobs")
           for x in c["logprobs"]["content"]]
    check(done and [x["token"] for x in got] == [x["token"] for x in lp["content"]],
          "streamed logprobs match")
    srv.error(dict(base, logprobs=False), "top_logprobs", "logprobs")
    srv.error(dict(base, top_logprobs=21), "top_logprobs")
    srv.error(dict(base, logprobs=3), "logprobs")


def test_errors(srv):
    base = {"messages": CONV, "max_tokens": 2}
    fn = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    srv.error(dict(base, tools=[fn]), "tools", "not supported")
    srv.error(dict(base, tool_choice="auto"), "tool_choice", "not supported")
    srv.error(dict(base, functions=[{"name": "f"}]), "functions", "not supported")
    srv.error(dict(base, response_format={"type": "json_object"}), "response_format",
              "not supported")
    srv.error(dict(base, chat_template="{{ 1 }}"), "chat_template", "not supported")
    # Asking for nothing is fine.
    srv.chat(dict(base, tools=[], tool_choice="none", response_format={"type": "text"}))
    srv.error({"max_tokens": 2}, "messages", "required")
    srv.error(dict(base, messages=[]), "messages", "empty")
    srv.error(dict(base, messages="hi"), "messages", "array")
    srv.error(dict(base, messages=["hi"]), "messages", "messages[0]")
    srv.error(dict(base, messages=[{"content": "hi"}]), "messages", "messages[0].role")
    srv.error(dict(base, messages=[{"role": "wizard", "content": "hi"}]), "messages", "wizard")
    srv.error(dict(base, messages=[{"role": "user", "content": 5}]), "messages",
              "messages[0].content")
    srv.error(dict(base, messages=[{"role": "user", "content": None}]), "messages",
              "messages[0].content")
    img = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    srv.error(dict(base, messages=[{"role": "user", "content": [img]}]), "messages",
              "messages[0].content[0].type")
    srv.error(dict(base, messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages",
              "messages[0].content[0].text")
    srv.error(dict(base, max_tokens=0), "max_tokens")
    srv.error(dict(base, echo=True), "echo", "not supported")
    srv.error(dict(base, model="gpt-4"), "model", status=404)


def test_template_raises(tmp):
    tpl = os.path.join(tmp, "strict.jinja")
    with open(tpl, "w") as f:
        f.write("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('System messages are not supported by this template.') }}"
                "{% endif %}{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant>{% endif %}")
    srv = Server(tmp, "raises", ["--chat-template", tpl])
    try:
        e = srv.error({"messages": CONV, "max_tokens": 2}, "messages")
        check(e["message"] == "System messages are not supported by this template.",
              "raise_exception's message as is: %r" % e["message"])
        o = srv.chat({"messages": CONV[1:], "max_tokens": 2, "ignore_eos": True})
        r = cli_render(tmp, CONV[1:], template=tpl)
        check(r["prompt"] == "user> Who is Mr. Knightley?\nassistant>", "prompt %r" % r["prompt"])
        check(o["usage"]["prompt_tokens"] == len(r["ids"]), "--chat-template is used")
    finally:
        srv.finish()


def test_no_template(tmp):
    tok = os.path.join(tmp, "tok")
    os.mkdir(tok)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), tok)
    srv = Server(tmp, "notemplate", ["--tokenizer", tok])
    try:
        e = srv.error({"messages": CONV, "max_tokens": 2}, "messages", "has no chat template")
        check("--chat-template" in e["message"], "says how to give one: %r" % e["message"])
        st, _ = srv.post_json({"prompt": "Anne", "max_tokens": 2}, "/v1/completions")
        check(st == 200, "/v1/completions still serves")
    finally:
        srv.finish()
    # A --chat-template that does not parse stops the start-up with the template's position.
    bad = os.path.join(tmp, "bad.jinja")
    with open(bad, "w") as f:
        f.write("{% if messages %}unclosed")
    p = subprocess.run([KVCAST, "serve", "--bundle", BUNDLE, "--port", "0", "--host", "127.0.0.1",
                        "--chat-template", bad], capture_output=True, text=True, timeout=120)
    check(p.returncode == 1 and "--chat-template" in p.stderr and "template:" in p.stderr,
          "bad --chat-template: exit %d, stderr %r" % (p.returncode, p.stderr[-500:]))


def main():
    tmp = tempfile.mkdtemp(prefix="kc_chat_")
    try:
        srv = Server(tmp, "chat", [])
        try:
            test_shapes_and_prompt(srv, tmp)
            test_stream(srv)
            test_logprobs(srv)
            test_errors(srv)
        finally:
            srv.finish()
        test_template_raises(tmp)
        test_no_template(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("test_server_chat: ok")


if __name__ == "__main__":
    main()
