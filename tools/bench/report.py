#!/usr/bin/python3
"""report.py — turns a compare.sh work folder into OUT/serving.md, OUT/serving.json, the
gnuplot data files and OUT/serving.gp (which draws ttft_vs_prompt_len.png, goodput_vs_rate.png
and attainment_vs_rate.png; compare.sh runs gnuplot).

Inputs (written by compare.sh): env.txt (key=value), commands.txt, notes.txt, and the
`kvcast bench serve --json` files len-L-SYS.json (TTFT sweep), cap-SYS.json (closed-loop
capacity), rate-F-SYS.json (open loop at F x capacity), calib-SYS.json. SYS is a kvcast
prefill mode (full, predict, auto) or the peer's name.

    /usr/bin/python3 tools/bench/report.py --work build/bench/compare-... --out docs/bench
"""
import argparse
import glob
import json
import os
import re

KV_MODES = ["full", "predict", "auto"]
ATTAIN = 0.9  # DistServe: the share of requests that must meet both SLOs
SUMMARY_KEYS = [
    "completed", "failed", "duration", "request_throughput", "request_goodput",
    "output_throughput", "total_token_throughput", "total_input_tokens", "total_output_tokens",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
    "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms",
    "median_e2el_ms", "p99_e2el_ms", "mean_server_ttft_ms", "median_server_ttft_ms",
    "mean_server_queue_ms", "prefill_mode_counts", "error_counts", "prompt_len",
    "prompt_len_spread", "max_tokens", "num_prompts", "request_rate", "max_concurrency",
    "goodput_config", "prefill_mode", "seed", "model_id",
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def load(path):
    with open(path) as f:
        j = json.load(f)
    r = {k: j.get(k) for k in SUMMARY_KEYS}
    n, gp, d = r.get("num_prompts") or 0, r.get("request_goodput"), r.get("duration") or 0
    # Good requests = goodput x duration; attainment counts failed requests as misses.
    r["good"] = int(round(gp * d)) if gp is not None else None
    r["attainment"] = r["good"] / n if (r["good"] is not None and n) else None
    return r


def load_runs(work, prefix, systems):
    """{(x, sys): summary} for files prefix-X-SYS.json."""
    runs = {}
    for p in glob.glob(os.path.join(work, prefix + "-*.json")):
        m = re.match(re.escape(prefix) + r"-([0-9.]+)-(.+)\.json$", os.path.basename(p))
        if m and m.group(2) in systems:
            runs[(float(m.group(1)), m.group(2))] = load(p)
    return runs


def fmt(v, nd=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        return "∞" if v == float("inf") else "%.*f" % (nd, v)
    return str(v)


def pct(v):
    return "—" if v is None else "%.0f%%" % (100 * v)


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def num(x):
    return "%g" % x


def modes_cell(r):
    c = (r or {}).get("prefill_mode_counts") or {}
    return "%d / %d" % (c.get("full", 0), c.get("predict", 0)) if c else "—"


def model_rows(env):
    rows = []
    for name, d in (("base", env.get("base_dir", "")), ("aux", env.get("aux_dir", ""))):
        p = os.path.join(d, "config.json")
        if not d or not os.path.exists(p):
            continue
        with open(p) as f:
            c = json.load(f)
        hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
        rows.append("| %s | `%s` | %d | %d | %d | %d | %d x %d | %d | %s |" % (
            name, d, c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"],
            c["num_attention_heads"], c["num_key_value_heads"], hd, c["vocab_size"],
            c.get("max_position_embeddings", "?")))
    return rows


def rate_curve(rates, s):
    """[(rate, summary)] of system s, by rate."""
    pts = [(r.get("request_rate"), r) for (f, sy), r in rates.items() if sy == s]
    return sorted([(x, r) for x, r in pts if isinstance(x, (int, float))], key=lambda t: t[0])


def sustainable(curve):
    """DistServe's goodput: the highest tested rate at which >= 90% of requests meet both
    SLOs, every lower tested rate meeting it too. (rate or None, the first failing rate)."""
    best, first_fail = None, None
    for x, r in curve:
        a = r.get("attainment")
        if a is not None and a >= ATTAIN:
            best = x
        else:
            first_fail = x
            break
    return best, first_fail


def interp(curve, x, key="request_goodput"):
    """Linear interpolation of key at rate x within the curve's tested range, else None."""
    pts = [(cx, r.get(key)) for cx, r in curve if r.get(key) is not None]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if pts and abs(pts[0][0] - x) < 1e-9:
        return pts[0][1]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    env = read_env(os.path.join(a.work, "env.txt"))
    with open(os.path.join(a.work, "commands.txt")) as f:
        commands = [l.rstrip("\n") for l in f if l.strip()]
    notes = []
    if os.path.exists(os.path.join(a.work, "notes.txt")):
        with open(os.path.join(a.work, "notes.txt")) as f:
            notes = [l.strip() for l in f if l.strip()]
    systems = env.get("systems", "full predict auto").split()
    peer = env.get("peer_name") if env.get("peer_url") else None
    kv = [s for s in systems if s in KV_MODES]
    lens = load_runs(a.work, "len", systems)
    rates = load_runs(a.work, "rate", systems)
    caps = {}
    for s in systems:
        p = os.path.join(a.work, "cap-%s.json" % s)
        if os.path.exists(p):
            caps[s] = load(p)
    len_xs = sorted({x for x, _ in lens})
    curves = {s: rate_curve(rates, s) for s in systems}
    sus = {s: sustainable(curves[s]) for s in systems}
    os.makedirs(a.out, exist_ok=True)
    ttft_slo, tpot_slo = env.get("ttft_slo", "?"), env.get("tpot_slo", "?")

    # ---- data files and gnuplot script ----
    with open(os.path.join(a.out, "serving_ttft.dat"), "w") as f:
        f.write("# prompt_len  median_ttft_ms(%s)\n" % " ".join(systems))
        for x in len_xs:
            v = [(lens.get((x, s)) or {}).get("median_ttft_ms") for s in systems]
            f.write("%s %s\n" % (num(x), " ".join("NaN" if y is None else "%.3f" % y
                                                   for y in v)))
    for s in systems:
        with open(os.path.join(a.out, "serving_rate_%s.dat" % s), "w") as f:
            f.write("# rate  request_goodput  request_throughput  slo_attainment_%\n")
            for x, r in curves[s]:
                g, t, at = r.get("request_goodput"), r.get("request_throughput"), r.get("attainment")
                f.write("%g %s %s %s\n" % (x, "NaN" if g is None else "%.4f" % g,
                                           "NaN" if t is None else "%.4f" % t,
                                           "NaN" if at is None else "%.1f" % (100 * at)))
    style = "\n".join('set style line %d lc rgb "%s" lw 2 pt %d ps 1.2' % (
        i + 1, COLORS[i % len(COLORS)], [7, 5, 9, 13, 11, 15][i % 6]) for i in range(len(systems)))
    ttft_plot = ", \\\n     ".join('"serving_ttft.dat" u 1:%d w lp ls %d t "%s"' % (
        i + 2, i + 1, s) for i, s in enumerate(systems))
    gp_plot = ", \\\n     ".join('"serving_rate_%s.dat" u 1:2 w lp ls %d t "%s"' % (
        s, i + 1, s) for i, s in enumerate(systems) if curves[s])
    at_plot = ", \\\n     ".join('"serving_rate_%s.dat" u 1:4 w lp ls %d t "%s"' % (
        s, i + 1, s) for i, s in enumerate(systems) if curves[s])
    max_rate = max([x for s in systems for x, _ in curves[s]] or [1.0])
    gp = ["# Generated by tools/bench/report.py; run from this folder: gnuplot serving.gp",
          'set terminal pngcairo size 900,560 font ",11"', "set key top left", "set grid", style,
          'set output "ttft_vs_prompt_len.png"',
          'set title "Median TTFT vs prompt length (client-side, one request at a time)"',
          'set xlabel "prompt tokens"', 'set ylabel "median TTFT (ms)"',
          "set logscale x 2", "set logscale y 10", "plot " + ttft_plot,
          "unset logscale x", "unset logscale y"]
    if gp_plot:
        gp += ['set output "goodput_vs_rate.png"',
               'set title "Goodput vs offered rate (TTFT <= %s ms and TPOT <= %s ms; prompts %s)"'
               % (ttft_slo, tpot_slo, env.get("rate_len", "?")),
               'set xlabel "request rate (req/s, Poisson)"', 'set ylabel "goodput (req/s)"',
               "set xrange [0:%g]" % (max_rate * 1.05), "set yrange [0:*]",
               "plot " + gp_plot + ', \\\n     x w l lc rgb "#999999" dt 2 t "offered load"',
               'set output "attainment_vs_rate.png"',
               'set title "Share of requests meeting both SLOs vs offered rate"',
               'set ylabel "SLO attainment (%)"', "set yrange [0:105]", "set key bottom left",
               "plot " + at_plot + ', \\\n     90 w l lc rgb "#999999" dt 2 t "90% (DistServe)"']
    with open(os.path.join(a.out, "serving.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")

    # ---- serving.json ----
    summary = {
        "env": env, "commands": commands, "notes": notes,
        "capacity": {s: dict(r, system=s) for s, r in caps.items()},
        "sustainable_goodput": {s: sus[s][0] for s in systems},
        "ttft_sweep": [dict(r, sweep_prompt_len=x, system=s) for (x, s), r in sorted(lens.items())],
        "rate_sweep": [dict(r, rate_factor=x, system=s) for (x, s), r in sorted(rates.items())],
    }
    with open(os.path.join(a.out, "serving.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")

    # ---- serving.md ----
    md = []
    md.append("# Serving benchmark: KV Prediction vs full prefill%s, through HTTP\n"
              % (" vs %s" % peer if peer else ""))
    md.append("Generated by `tools/bench/compare.sh` on %s (commit %s). Every number is "
              "measured client-side by `kvcast bench serve` over HTTP/SSE on the same machine, "
              "unless marked *server*. One run per point: treat differences of a few percent "
              "as noise.\n" % (env.get("date", "?"), env.get("commit", "?")))
    md.append("> **TPOT and ITL are indicative only.** They come from a small, possibly shared "
              "host (%s), where decode steps compete with prefill and with other processes "
              "for the same cores; do not quote them as a server's decode speed.\n"
              % env.get("cpus", "?"))
    md.append("## Machine\n")
    md.append("- CPU: %s; %s; %s" % (env.get("cpu", "?"), env.get("cpus", "?"),
                                      env.get("flags", "").strip() or "?"))
    md.append("- Memory: %s; kernel %s\n" % (env.get("mem", "?"), env.get("kernel", "?")))
    md.append("## Systems and models\n")
    md.append("- kvcast (`%s`), prefill modes %s, context %s tokens." % (
        env.get("models", "?").strip(), ", ".join(kv), env.get("kv_max_len", "?")))
    if peer:
        md.append("- **%s**: %s at `%s`, context %s tokens%s." % (
            peer, env.get("peer_banner") or "an OpenAI-compatible server",
            env.get("peer_cmd") or env.get("peer_url"), env.get("peer_max_len", "?"),
            "" if not env.get("peer_cmd") else
            " (node-llama-cpp's embedded llama.cpp behind tools/bench/peer/llama_peer.mjs, "
            "not llama-server: same engine library, its own batching, no prompt cache)"))
    md.append("")
    rows = model_rows(env)
    if rows:
        md.append("| model | folder | layers | hidden | ffn | heads | kv heads x dim | vocab | "
                  "context |")
        md.append("|---|---|---|---|---|---|---|---|---|")
        md += rows
        md.append("")
    md.append("## Commands\n")
    md.append("```sh\n%s\n```\n" % env.get("invocation", "bash tools/bench/compare.sh ..."))
    md.append("kvcast server (port 0: a free loopback port):\n")
    md.append("```sh\n%s\n```\n" % env.get("serve", "?"))
    if env.get("peer_cmd"):
        md.append("Peer:\n\n```sh\n%s\n```\n" % env["peer_cmd"])
    md.append("<details><summary>Load generator, one line per point (the URL is the "
              "server's)</summary>\n\n```sh\n%s\n```\n</details>\n" % "\n".join(commands))

    # Targets.
    calib = ""
    if env.get("calib_ttft"):
        calib = (" Derived from %s when idle (%s-token prompts, one at a time: median TTFT "
                 "%.1f ms, TPOT %.2f ms): TTFT target = 2x that TTFT, TPOT target = 3x that "
                 "TPOT (at least 10 ms)." % (env.get("calib_ref", "?"),
                                            env.get("rate_len", "?").split(":")[0],
                                            float(env["calib_ttft"]), float(env["calib_tpot"])))
    md.append("## Summary: capacity and sustainable goodput\n")
    md.append("SLOs: TTFT <= %s ms and TPOT <= %s ms.%s kvcast's `--ttft-slo-ms` (auto's "
              "target) is the same TTFT target. *Capacity*: closed loop, %s requests in "
              "flight, %s requests of %s tokens, %s generated each. *Sustainable goodput* "
              "(DistServe): the highest tested Poisson rate at which >= 90%% of requests meet "
              "both SLOs (every lower tested rate too); its resolution is the rate grid "
              "(%s x capacity).\n" % (ttft_slo, tpot_slo, calib, env.get("cap_concurrency", "?"),
                                      env.get("cap_prompts", "?"), env.get("rate_len", "?"),
                                      env.get("max_tokens", "?"),
                                      env.get("factors", "?").replace(" ", ", ")))
    md.append("| system | capacity (req/s) | sustainable goodput (req/s) | first rate below "
              "90%% |%s" % (" vs %s |" % peer if peer else ""))
    md.append("|---|---|---|---|%s" % ("---|" if peer else ""))
    for s in systems:
        best, ff = sus[s]
        cap = (caps.get(s) or {}).get("request_throughput")
        # No tested rate missed: the true sustainable goodput is at least the highest one.
        cell = ((">= " if ff is None else "") + fmt(best, 3)) if best is not None else (
            "< %s" % num(curves[s][0][0]) if curves[s] else "—")
        extra = ""
        if peer:
            pb = sus[peer][0]
            lower = ">= " if ff is None and sus[peer][1] is not None else ""
            extra = " %s |" % (lower + fmt(ratio(best, pb), 2) + "x" if best and pb else "—")
        md.append("| %s | %s | %s | %s |%s" % (s, fmt(cap, 3), cell,
                                              num(ff) if ff is not None else "—", extra))
    md.append("")

    # TTFT sweep.
    md.append("## TTFT vs prompt length\n")
    md.append("One request at a time (`--max-concurrency 1`), %s generated tokens each, random "
              "token-id prompts of exactly that length, the same prompts for every system. "
              "Requests per length: %s up to 1024 tokens, then %s x 1024 / length, at least "
              "%s. Median TTFT in ms; *auto chose* counts full / predict prefills.\n" % (
                  env.get("max_tokens", "?"), env.get("len_prompts", "?"),
                  env.get("len_prompts", "?"), env.get("len_min", "?")))
    cols = list(systems)
    ratios = []
    if "full" in kv and "predict" in kv:
        ratios.append(("predict/full", "predict", "full"))
    if peer:
        for m in ("full", "predict", "auto"):
            if m in kv:
                ratios.append(("%s/%s" % (m, peer), m, peer))
    md.append("| prompt tokens | n | %s | %s |%s" % (
        " | ".join(cols), " | ".join(r[0] for r in ratios),
        " auto chose |" if "auto" in kv else ""))
    md.append("|---|---|%s%s%s" % ("---|" * len(cols), "---|" * len(ratios),
                                  "---|" if "auto" in kv else ""))
    for x in len_xs:
        r = {s: lens.get((x, s)) or {} for s in systems}
        med = {s: r[s].get("median_ttft_ms") for s in systems}
        n = max([r[s].get("num_prompts") or 0 for s in systems])
        md.append("| %s | %d | %s | %s |%s" % (
            num(x), n, " | ".join(fmt(med[s]) for s in cols),
            " | ".join(fmt(ratio(med[p], med[q]), 2) for _, p, q in ratios),
            " %s |" % modes_cell(r["auto"]) if "auto" in kv else ""))
    md.append("\n![TTFT vs prompt length](ttft_vs_prompt_len.png)\n")

    # Rate sweeps.
    md.append("## Goodput vs request rate\n")
    md.append("Open loop: Poisson arrivals at F x each system's capacity (F in %s), "
              "rate x %s s requests per point (clamped to %s..%s), prompts of %s tokens "
              "(uniform in P-S..P+S, the same prompts for every system), %s generated tokens. "
              "*SLO met*: the share of requests meeting both targets (failed requests count "
              "as misses); goodput = those requests / benchmark duration. TPOT columns are "
              "indicative only (see above).\n" % (
                  env.get("factors", "?").replace(" ", ", "), env.get("rate_seconds", "?"),
                  env.get("rate_min", "?"), env.get("rate_max", "?"),
                  env.get("rate_len", "?"), env.get("max_tokens", "?")))
    for s in systems:
        if not curves[s]:
            continue
        md.append("### %s\n" % s)
        md.append("| x capacity | rate (req/s) | requests | throughput | goodput | SLO met | "
                  "median TTFT | p99 TTFT | median TPOT* | failed |%s" % (
                      " auto chose |" if s == "auto" else ""))
        md.append("|---|---|---|---|---|---|---|---|---|---|%s" % ("---|" if s == "auto" else ""))
        for (f, sy), r in sorted(rates.items()):
            if sy != s:
                continue
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |%s" % (
                num(f), fmt(r.get("request_rate"), 3), fmt(r.get("num_prompts")),
                fmt(r.get("request_throughput"), 2), fmt(r.get("request_goodput"), 2),
                pct(r.get("attainment")), fmt(r.get("median_ttft_ms")),
                fmt(r.get("p99_ttft_ms")), fmt(r.get("median_tpot_ms"), 1),
                fmt(r.get("failed")), " %s |" % modes_cell(r) if s == "auto" else ""))
        md.append("")
    md.append("![Goodput vs request rate](goodput_vs_rate.png)\n")
    md.append("![SLO attainment vs request rate](attainment_vs_rate.png)\n")

    # ---- issue 16's bars ----
    md.append("## Bars (issue 16)\n")
    bars = []
    if peer:
        for x in (512, 1024, 2048):
            f_, p_ = [(lens.get((float(x), s)) or {}).get("median_ttft_ms") for s in ("full", peer)]
            v = ratio(f_, p_)
            bars.append("- full TTFT <= 0.5x %s at %d tokens: %s" % (
                peer, x, "not measured" if v is None else "%.2fx (%s)" % (
                    v, "**met**" if v <= 0.5 else "**not met**")))
        for x in (1024, 2048):
            q, p_ = [(lens.get((float(x), s)) or {}).get("median_ttft_ms") for s in ("predict", peer)]
            v = ratio(q, p_)
            bars.append("- predict TTFT <= 0.15x %s at %d tokens: %s" % (
                peer, x, "not measured" if v is None else "%.2fx (%s)" % (
                    v, "**met**" if v <= 0.15 else "**not met**")))
        a_, p_ = sus.get("auto", (None, None))[0], sus[peer][0]
        if a_ is not None and p_:
            bars.append("- sustainable goodput of auto >= 2x %s's: %.3f vs %.3f req/s, %.2fx (%s)"
                        % (peer, a_, p_, a_ / p_, "**met**" if a_ >= 2 * p_ else "**not met**"))
        elif a_ is not None and sus[peer][1]:
            # The peer missed already at its lowest tested rate: its sustainable goodput is
            # below that rate, so auto's ratio is at least a_ / that rate.
            lo = sus[peer][1]
            bars.append("- sustainable goodput of auto >= 2x %s's: %.3f vs < %.3f req/s (%s missed "
                        "at its lowest tested rate), > %.1fx (%s)"
                        % (peer, a_, lo, peer, a_ / lo, "**met**" if a_ >= 2 * lo else
                           "not determined: test the peer at lower rates"))
        else:
            bars.append("- sustainable goodput of auto >= 2x %s's: not determined (auto %s, %s %s)"
                        % (peer, fmt(a_, 3), peer, fmt(p_, 3)))
    v = ratio(*[(lens.get((x, "full")) or {}).get("median_ttft_ms") for x in (2048.0, 1024.0)])
    bars.append("- full TTFT grows <= 2.4x from 1024 to 2048 tokens: %s" % (
        "not measured" if v is None else "%.2fx (%s)" % (v, "**met**" if v <= 2.4 else "**not met**")))
    if curves.get("auto") and (curves.get("full") or curves.get("predict")):
        worst, checked = None, 0
        for x, r in curves["auto"]:
            best = [interp(curves.get(m, []), x) for m in ("full", "predict")]
            best = [b for b in best if b is not None]
            g = r.get("request_goodput")
            if not best or g is None or max(best) <= 0:
                continue
            checked += 1
            d = g / max(best)
            worst = d if worst is None else min(worst, d)
        if checked:
            bars.append("- auto's goodput never more than 10%% below the better of full and "
                        "predict (interpolated at auto's %d rates inside their range): worst "
                        "%.2fx (%s)" % (checked, worst, "**met**" if worst >= 0.9 else "**not met**"))
    md += bars
    md.append("")
    if notes:
        md.append("## Notes from the run\n")
        md += ["- %s" % n for n in notes]
        md.append("")
    md.append("## Reading the numbers\n")
    md.append("- TTFT is measured from sending the request to the first SSE chunk that carries "
              "a token (text, or logprobs for a model without a tokenizer); TPOT = (E2EL - "
              "TTFT) / (output tokens - 1); goodput follows vLLM's `--goodput`. *server TTFT* "
              "is the server's own `timings.ttft_ms`.")
    md.append("- `predict` runs the auxiliary model over the prompt, maps its K/V to the base "
              "model's with the predictor and runs the base model on the last prompt token "
              "(docs/kv-prediction.md); `auto` chooses per request. Quality is measured "
              "separately (`kvcast eval`, `tools/bench/pareto.sh`).")
    md.append("- Prompts are random token ids drawn per seed (`kvcast bench serve --seed`); "
              "two seeds share no prompt and warm-up requests use prompts of their own, so a "
              "server's prompt cache cannot answer a measured request.")
    md.append("- Regenerate with the command above; raw per-request JSON stays in the work "
              "folder (`build/bench/compare-*`), summaries are in `serving.json`.")
    with open(os.path.join(a.out, "serving.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
