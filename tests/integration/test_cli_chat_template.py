#!/usr/bin/python3
"""`kvcast chat-template` (issue 19 items 2 and 4): where the template comes from, what it sees,
and how its prompt is tokenized, checked against Debian's python3-jinja2 used the way
transformers' apply_chat_template uses it (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, tojson = json.dumps(ensure_ascii=False), raise_exception).

  1. The embedded pair's chat_template.jinja renders byte for byte as jinja2 renders it, with
     and without --add-generation-prompt; --ids gives the prompt's ids with special-token
     text parsed as special tokens and no BOS added (`kvcast tokenize --parse-special
     --no-special` of the same text), so the template's BOS appears once.
  2. Sources: tokenizer_config.json's chat_template (a string; a list, whose "default" is used)
     wins over chat_template.jinja beside it; --template wins over both; a list without
     "default", a directory without any template, and a template that does not parse fail
     with exit 1 and a message saying so.
  3. Context: bos_token/eos_token from the config (strings or {"content": ...} objects), tools
     and documents passed through when the messages file is an object that has them (None
     otherwise, as transformers passes them), content parts joined with "\\n" for a string template and passed as a list to
     a template that loops over content.
  4. Errors: bad messages (exit 1, naming the field), raise_exception (exit 1, its message),
     missing options (exit 2).
usage: test_cli_chat_template.py path/to/kvcast   (run from the source root)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import jinja2
import jinja2.ext
import jinja2.sandbox

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kc_testlib import check  # noqa: E402

KVCAST = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/kvcast"
TINY = "models/tiny/base"


class TemplateError(Exception):
    pass


def reference(template, ctx):
    """transformers' rendering (chat_template_utils._compile_jinja_template)."""
    def raise_exception(msg):
        raise TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(**ctx)


def run(args, code=0):
    p = subprocess.run([KVCAST, "chat-template"] + args, capture_output=True, timeout=60)
    check(p.returncode == code, "chat-template %s: exit %d, want %d; stderr %r"
          % (args, p.returncode, code, p.stderr.decode()[-400:]))
    return p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def write(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        if isinstance(obj, str):
            f.write(obj)
        else:
            json.dump(obj, f, ensure_ascii=False)
    return path


def tokenizer_copy(tmp, name, config_extra=None, jinja=None):
    d = os.path.join(tmp, name)
    os.mkdir(d)
    shutil.copy(os.path.join(TINY, "tokenizer.json"), d)
    with open(os.path.join(TINY, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg.update(config_extra or {})
    write(os.path.join(d, "tokenizer_config.json"), cfg)
    if jinja is not None:
        write(os.path.join(d, "chat_template.jinja"), jinja)
    return d


CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Anne Elliot? \u00e9\u00e8 \u4e2d\u6587"},
        {"role": "assistant", "content": "A lady."},
        {"role": "user", "content": ""}]


def test_tiny_template(tmp):
    with open(os.path.join(TINY, "chat_template.jinja")) as f:
        tpl = f.read()
    conv = write(os.path.join(tmp, "conv.json"), CONV)
    for agp in (False, True):
        out, _ = run(["--tokenizer", TINY, "--messages", conv] +
                     (["--add-generation-prompt"] if agp else []))
        want = reference(tpl, {"messages": CONV, "add_generation_prompt": agp,
                               "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
        check(out == want, "tiny template (agp %s): got %r want %r" % (agp, out, want))
    check(out.endswith("\nUser: \nAssistant:") and out.startswith("<|endoftext|>System: "),
          "the documented shape: %r" % out)
    ids_line, _ = run(["--tokenizer", TINY, "--messages", conv, "--add-generation-prompt",
                       "--ids"])
    ids = [int(x) for x in ids_line.strip().split(",")]
    tok = subprocess.run([KVCAST, "tokenize", "--tokenizer", TINY, "--text", out,
                          "--parse-special", "--no-special", "--json"], capture_output=True,
                         text=True, timeout=60)
    check(tok.returncode == 0 and json.loads(tok.stdout)["ids"] == ids,
          "--ids equals tokenize --parse-special --no-special of the prompt")
    check(ids[0] == 4095 and ids.count(4095) == 1, "one BOS: %s" % ids[:5])
    js, _ = run(["--tokenizer", TINY, "--messages", conv, "--add-generation-prompt", "--json"])
    o = json.loads(js)
    check(o["prompt"] == out and o["ids"] == ids and o["template"].endswith(
        "chat_template.jinja"), "--json: %s" % js[:300])


def test_sources(tmp):
    conv = write(os.path.join(tmp, "conv2.json"), CONV[:2])
    jinja = "JINJA {{ messages | length }}"
    # Config string wins over the .jinja file beside it.
    # (model_max_length as Llama 3 writes it: an integer beyond 64 bits.)
    d = tokenizer_copy(tmp, "cfg_str", {"chat_template": "CFG {{ messages[0]['role'] }}",
                                        "model_max_length": 1000000000000000019884624838656},
                       jinja=jinja)
    out, _ = run(["--tokenizer", d, "--messages", conv])
    check(out == "CFG system", "config string template: %r" % out)
    # A tokenizer.json path works as well as its directory.
    out, _ = run(["--tokenizer", os.path.join(d, "tokenizer.json"), "--messages", conv])
    check(out == "CFG system", "tokenizer.json path: %r" % out)
    # A named list: "default" is used.
    lst = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEF"}]
    d = tokenizer_copy(tmp, "cfg_list", {"chat_template": lst}, jinja=jinja)
    out, _ = run(["--tokenizer", d, "--messages", conv])
    check(out == "DEF", "named list: %r" % out)
    # Without "default": an error naming the templates.
    d = tokenizer_copy(tmp, "cfg_nodefault", {"chat_template": lst[:1]})
    _, err = run(["--tokenizer", d, "--messages", conv], code=1)
    check("default" in err and "tool_use" in err, "no default: %r" % err)
    # The .jinja file when the config has none; --template over both.
    d = tokenizer_copy(tmp, "jinja_only", jinja=jinja)
    out, _ = run(["--tokenizer", d, "--messages", conv])
    check(out == "JINJA 2", ".jinja file: %r" % out)
    tf = write(os.path.join(tmp, "override.jinja"), "OVR {{ bos_token }}")
    out, _ = run(["--tokenizer", d, "--messages", conv, "--template", tf])
    check(out == "OVR <|endoftext|>", "--template: %r" % out)
    # Nothing at all.
    d = tokenizer_copy(tmp, "none")
    _, err = run(["--tokenizer", d, "--messages", conv], code=1)
    check("no chat template" in err and "chat_template.jinja" in err, "no template: %r" % err)
    # A template that does not parse: its position.
    d = tokenizer_copy(tmp, "broken", {"chat_template": "{% for m in messages %}x"})
    _, err = run(["--tokenizer", d, "--messages", conv], code=1)
    check("template:" in err, "parse error position: %r" % err)


def test_context(tmp):
    # Special tokens as AddedToken objects; tools and documents through tojson.
    tpl = ("{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ tools is defined }}|"
           "{% if tools is not none %}{{ tools | tojson }}{% else %}no tools{% endif %}|"
           "{% if documents is not none %}{{ documents | tojson(indent=2) }}{% endif %}|"
           "{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    d = tokenizer_copy(tmp, "ctx", {"chat_template": tpl,
                                    "bos_token": {"content": "<|endoftext|>", "lstrip": False},
                                    "eos_token": "<|endoftext|>"})
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter \u2603",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    docs = [{"title": "Persuasion", "text": "Anne Elliot", "n": 3, "x": 0.5}]
    conv = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "b"}]}],
            "tools": tools, "documents": docs}
    out, _ = run(["--tokenizer", d, "--messages", write(os.path.join(tmp, "c3.json"), conv)])
    ctx = {"messages": [{"role": "user", "content": "a\nb"}], "tools": tools, "documents": docs,
           "add_generation_prompt": False, "bos_token": "<|endoftext|>",
           "eos_token": "<|endoftext|>"}
    want = reference(tpl, ctx)
    check(out == want, "context: got %r want %r" % (out, want))
    conv2 = write(os.path.join(tmp, "c4.json"), [{"role": "user", "content": "x"}])
    out, _ = run(["--tokenizer", d, "--messages", conv2])
    want = reference(tpl, {"messages": [{"role": "user", "content": "x"}], "tools": None,
                           "documents": None, "add_generation_prompt": False,
                           "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    check(out == want and "|True|no tools|" in out,
          "tools and documents are None unless given (as transformers passes them): %r" % out)
    # A template that loops over content gets the parts list.
    tpl2 = ("{% for m in messages %}{% if m['content'] is string %}S:{{ m['content'] }}"
            "{% else %}{% for p in m['content'] %}P:{{ p['text'] }};{% endfor %}{% endif %}"
            "{% endfor %}")
    tf = write(os.path.join(tmp, "parts.jinja"), tpl2)
    out, _ = run(["--tokenizer", d, "--messages", write(os.path.join(tmp, "c5.json"), conv),
                  "--template", tf])
    check(out == "P:a;P:b;", "parts list for a template that loops over content: %r" % out)


def test_errors(tmp):
    for msgs, field in (([{"role": "wizard", "content": "x"}], "messages[0].role"),
                        ([{"role": "user"}], "messages[0].content"),
                        ([{"role": "user", "content": [{"type": "image_url"}]}],
                         "messages[0].content[0].type"),
                        ([], "empty"),
                        ({"messages": "x"}, "messages")):
        _, err = run(["--tokenizer", TINY, "--messages",
                      write(os.path.join(tmp, "bad.json"), msgs)], code=1)
        check(field in err, "bad messages %s: %r" % (msgs, err))
    tf = write(os.path.join(tmp, "raise.jinja"), "{{ raise_exception('No system role, please.') }}")
    _, err = run(["--tokenizer", TINY, "--messages", write(os.path.join(tmp, "ok.json"), CONV),
                  "--template", tf], code=1)
    check(err.strip().endswith("No system role, please."), "raise_exception: %r" % err)
    run(["--tokenizer", TINY], code=2)
    run(["--messages", "x.json"], code=2)
    run(["--tokenizer", TINY, "--messages", "x.json", "--bogus"], code=2)


def main():
    tmp = tempfile.mkdtemp(prefix="kc_chat_cli_")
    try:
        test_tiny_template(tmp)
        test_sources(tmp)
        test_context(tmp)
        test_errors(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("test_cli_chat_template: ok")


if __name__ == "__main__":
    main()
