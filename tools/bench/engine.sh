#!/usr/bin/env bash
# Engine benchmark on synthetic models of real configurations (random weights, real shapes):
# runs `kvcast bench engine` for TinyLlama-1.1B shapes at 1 thread (f32 prefill, bf16 decode)
# and at 2 threads for every weight type (--dtypes f32,bf16,int8: each type for prefill and
# decode, prefill against the single GEMM of its own type, decode against the triad), batched
# decode (--batch 4 and 16), bf16 and int8 decode after a 2000-token prompt, the KV Prediction
# TTFT comparison (--kvp, 1024-token prompt, aux = a
# layer-pruned copy at 1/4 of the layers), the prefill attention kernel against an f32 GEMM at
# 512, 2048 and 8192 tokens (beside the one-row kernel it replaced for prefill), a few rows of
# attention at the embedded base's shape (the MHA decode kernel) and at Llama-3.2 1B's (the quad
# layout), and writes
# docs/bench/engine.md. Hand-written sections of docs/bench/engine.md after the KEEP marker line
# are kept.
#   usage: tools/bench/engine.sh [path/to/kvcast] [out.md]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
KV="${1:-$ROOT/build/release/tools/kvcast}"
OUT="${2:-$ROOT/docs/bench/engine.md}"
CFG="${KC_BENCH_CONFIG:-tinyllama-1.1b}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
run() { # name args...
    local name=$1; shift
    echo "bench: $name: $KV bench engine $*" >&2
    "$KV" bench engine "$@" --json > "$TMP/$name.json" 2> "$TMP/$name.err"
    echo "$KV bench engine $*" > "$TMP/$name.cmd"
}
run t1 --config "$CFG" --prompt-len 512 --gen 64 --threads 1 --attn none
run t2 --config "$CFG" --prompt-len 512 --gen 64 --threads 2 --dtypes f32,bf16,int8 --attn none
for b in 4 16; do
    run "b$b" --config "$CFG" --prompt-len 512 --gen 16 --threads 2 --dtypes bf16,int8 --batch "$b" --attn none
done
run lc --config "$CFG" --prompt-len 2000 --gen 32 --threads 2 --dtypes bf16,int8 --attn none
run attn --config "$CFG" --threads 2 --attn-only --attn 512,2048,8192 --attn-old
# The embedded base's shape (4 heads over 2 kv heads): a decode row takes the MHA kernel.
run attn_mha --config kvcast-base --threads 2 --attn-only --attn 8192 --attn-old
# Llama-3.2 1B's shape (32 heads over 8 kv heads, D 64): a decode row takes the quad layout.
run attn_quad --config llama-3.2-1b --threads 2 --attn-only --attn 4096 --attn-old
"$KV" bench gemv --config "$CFG" --threads 2 --rounds 6 > "$TMP/gemv1.txt"
"$KV" bench gemv --config "$CFG" --threads 2 --rounds 6 --rows 8 > "$TMP/gemv8.txt"
"$KV" bench gemv --config "$CFG" --threads 2 --rounds 6 --dtype int8 > "$TMP/gemv1i8.txt"
"$KV" bench gemv --config "$CFG" --threads 2 --rounds 6 --dtype int8 --rows 8 > "$TMP/gemv8i8.txt"
run kvp --config "$CFG" --prompt-len 1024 --gen 4 --threads 2 --kvp --repeat 2 --attn none
mkdir -p "$(dirname "$OUT")"
/usr/bin/python3 - "$TMP" "$OUT" "$CFG" <<'PY'
import json, os, subprocess, sys, datetime
tmp, out, cfg = sys.argv[1:4]
KEEP = "<!-- engine.sh: the sections below are written by hand and kept on regeneration -->"
def objs(n):
    return [json.loads(l) for l in open(os.path.join(tmp, n + ".json")) if l.strip()]
def load(n):
    d = {}
    for o in objs(n):
        d.update(o)
    d["cmd"] = open(os.path.join(tmp, n + ".cmd")).read().strip()
    return d
kept = ""
if os.path.exists(out):
    old = open(out).read()
    if KEEP in old:
        kept = old[old.index(KEEP):]
cpu = subprocess.run("lscpu | grep 'Model name' | sed 's/.*: *//'", shell=True, capture_output=True, text=True).stdout.strip()
flags = subprocess.run("grep -o -w -E 'avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\\n' ' '", shell=True, capture_output=True, text=True).stdout.strip()
mem = subprocess.run("free -g | awk '/Mem:/{print $2\" GiB\"}'", shell=True, capture_output=True, text=True).stdout.strip()
rev = subprocess.run("git -C %s rev-parse --short HEAD" % os.path.dirname(out), shell=True, capture_output=True, text=True).stdout.strip()
L = []
L.append("# Engine benchmark: %s shapes, synthetic weights\n" % cfg)
L.append("Measured %s on %s (%s), %s, %d vCPU, commit %s, by `tools/bench/engine.sh`. "
         "The machine is shared and noisy: compare the ratios within a row, which come from one run.\n"
         % (datetime.date.today().isoformat(), cpu, flags, mem, os.cpu_count(), rev))
L.append("Decode ratio: batch-1 decode runs in windows of 4 steps with a one-pass stream triad between "
         "windows; each window's GB/s is divided by the mean of the two triads beside it, and the "
         "ratio is the median over windows (the host's bandwidth swings from second to second, so a "
         "triad measured once, before the decode, is a poor yardstick). *whole run* divides the "
         "whole decode's GB/s by the best triad instead.\n")
L.append("Prefill ratio: the prefill's GFLOP/s (int8: GOP/s) against one oneDNN GEMM of the same "
         "weight type and shape (512 x FFN x hidden) measured in the same run. *MB/token* is what a decode "
         "step reads (weights + KV); *triad allows* is the best triad's GB/s over it.\n")
L.append("| run | threads | prefill weights | prefill tok/s | prefill GFLOP/s | single GEMM GFLOP/s | ratio | decode weights | decode tok/s | decode GB/s | MB/token | triad GB/s | triad allows tok/s | ratio | whole run |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
rows = [("t1", o) for o in objs("t1")] + [("t2", o) for o in objs("t2")]
bf16 = [o["decode_tokens_per_s"] for n, o in rows if n == "t2" and o["decode_dtype"] == "bf16"]
for n, d in rows:
    mbt = d["decode_gbs"] * 1e3 / d["decode_tokens_per_s"]
    L.append("| %s | %d | %s | %.1f | %.1f | %.1f | **%.2f** | %s | %.2f | %.2f | %.0f | %.2f | %.1f | **%.2f** | %.2f |" % (
        n, d["threads"], d["prefill_dtype"], d["prefill_tokens_per_s"], d["prefill_gflops"], d["gemm_gflops"],
        d["prefill_vs_gemm"], d["decode_dtype"], d["decode_tokens_per_s"], d["decode_gbs"], mbt, d["triad_gbs"],
        d["triad_gbs"] * 1e3 / mbt, d["decode_vs_triad"], d["decode_vs_best_triad"]))
if bf16:
    L.append("\nDecode tokens/s against bf16 decode (2 threads, same run): " + ", ".join(
        "%s %.2fx" % (o["decode_dtype"], o["decode_tokens_per_s"] / bf16[0]) for n, o in rows if n == "t2") + ".")
L.append("\n## Batched decode (`--batch B`: B copies of the prompt decode together, one row each, as serve batches B streams)\n")
L.append("Tokens/s count all B sequences. A batched step multiplies B rows by every weight, so it "
         "is less memory-bound than one row: *GB/s read* is what its reads (weights once, each "
         "sequence's KV) come to. int8 batches run the one-row inner-product copy "
         "(engine/ops_dnnl.c invariant 8).\n")
L.append("| batch | weights | decode tok/s | x batch 1 (t2) | x bf16 | GB/s read |")
L.append("|---|---|---|---|---|---|")
one = {o["decode_dtype"]: o["decode_tokens_per_s"] for n, o in rows if n == "t2"}
for b in ["b4", "b16"]:
    bo = objs(b)
    bb = {o["decode_dtype"]: o["decode_tokens_per_s"] for o in bo}
    for o in bo:
        B = o["batch"]
        L.append("| %d | %s | %.1f | %.2fx | %.2fx | %.1f |" % (
            B, o["decode_dtype"], o["decode_tokens_per_s"], o["decode_tokens_per_s"] / one[o["decode_dtype"]],
            o["decode_tokens_per_s"] / bb["bf16"], o["decode_gbs"]))
L.append("\n## Decode at a long context (2000-token prompt, 32 steps, 2 threads)\n")
L.append("The same decode as t2 after a 2000-token prompt instead of 512: each step also reads four "
         "times the KV (f32 cache), and decode attention (engine/attention.c invariant 9) takes a "
         "larger share of the step.\n")
L.append("Tokens/s from separate runs move with the host's bandwidth; the ratio to the triad beside "
         "each window is the figure to compare with t2's.\n")
L.append("| weights | decode tok/s | MB/token | triad GB/s | ratio | whole run |")
L.append("|---|---|---|---|---|---|")
for o in objs("lc"):
    L.append("| %s | %.2f | %.0f | %.2f | **%.2f** | %.2f |" % (
        o["decode_dtype"], o["decode_tokens_per_s"], o["decode_gbs"] * 1e3 / o["decode_tokens_per_s"],
        o["triad_gbs"], o["decode_vs_triad"], o["decode_vs_best_triad"]))
k = load("kvp")["kvp"]
L.append("")
L.append("## KV Prediction TTFT (prompt %d tokens, aux = %d layers of the same width, random predictor)\n" % (k["prompt_len"], k["aux_layers"]))
L.append("| full TTFT ms | predict TTFT ms | aux ms | predictor ms | base step ms | measured predict/full | analytic FLOPs ratio |")
L.append("|---|---|---|---|---|---|---|")
L.append("| %.0f | %.0f | %.0f | %.1f | %.1f | **%.3f** | %.3f |" % (k["ttft_full_ms"], k["ttft_predict_ms"], k["aux_ms"], k["predict_ms"], k["base_first_step_ms"], k["ttft_ratio"], k["flops_ratio"]))
a = load("attn")
L.append("")
L.append("## Prefill attention (f32, one layer, %d-row chunks, 2 threads)\n" % a["attn_chunk"])
L.append("GFLOP/s count QK^T and PV over the causal half (4 D H T(T+1)/2); the GEMM is an f32 "
         "oneDNN matmul of the prefill's shape in the same run. *one-row kernel* is the kernel "
         "prefill used before the tiled one; one decode row takes a kernel of its own (engine/attention.c invariant 9), the eng_attention column at 1 row.\n")
L.append("| tokens | tiled ms | tiled GFLOP/s | ratio to GEMM | one-row ms | one-row GFLOP/s | ratio | speedup |")
L.append("|---|---|---|---|---|---|---|---|")
for e in a["attention"]:
    L.append("| %d | %.1f | %.1f | **%.2f** | %.1f | %.1f | %.2f | %.2fx |" % (
        e["tokens"], e["ms"], e["gflops"], e["vs_gemm"], e["old_ms"], e["old_gflops"], e["old_vs_gemm"], e["speedup"]))
L.append("\nA few rows at the longest context (us per call; eng_attention picks the path):\n")
L.append("| rows | eng_attention | one-row kernel | tiled kernel |")
L.append("|---|---|---|---|")
for e in a["attention_rows"]:
    L.append("| %d | %.0f | %.0f | %.0f |" % (e["rows"], e["us"], e["row_kernel_us"], e["tile_kernel_us"]))
for name, what in [("attn_mha", "the embedded base (`kvcast-base`: 4 heads over 2 kv heads, D 64, "
                                "context %d): one decode row of a group of 1 or 2 heads takes the MHA "
                                "kernel (engine/attention.c invariant 10)"),
                   ("attn_quad", "Llama-3.2 1B (`llama-3.2-1b`: 32 heads over 8 kv heads, D 64, context "
                                 "%d): one decode row of a group of 3 or 4 heads takes the decode "
                                 "kernel with four lanes per head (the quad layout, invariant 9)")]:
    m = load(name)
    L.append(("\nThe same rows at the shape of " + what + "; the one-row kernel is the row path.\n")
             % m["attention"][-1]["tokens"])
    L.append("| rows | eng_attention | one-row kernel | tiled kernel |")
    L.append("|---|---|---|---|")
    for e in m["attention_rows"]:
        L.append("| %d | %.0f | %.0f | %.0f |" % (e["rows"], e["us"], e["row_kernel_us"], e["tile_kernel_us"]))
L.append("\nllama.cpp on the same machine and shapes, every weight type: [llama-cpp.md](llama-cpp.md) (`tools/bench/llama_engine.sh`). Older reference points (from the team's notes, llama.cpp `llama-bench`, 1 thread): "
         "prefill 42 tokens/s (f32), decode 4.9 tokens/s (bf16).\n")
L.append("## Decode weights, packed against plain (`kvcast bench gemv`, 2 threads)\n")
L.append("Why one-row bf16 decode steps read a plain copy of the weights (engine/ops_dnnl.c, invariant 6): "
         "GB/s of one decode step's weights through oneDNN matmuls, round by round beside a triad. "
         "int8 decode steps, one row or a batch of 2..16, run an s8 inner product on its one-row "
         "layout instead of a packed matmul (invariant 8, whose comment holds the side-by-side "
         "table): the int8 tables put the two side by side. *prefill layout* runs the same rows over "
         "the prefill copy's layout (packed for 512 rows), which 2..16-row steps read when prefill "
         "and decode share a weight type. The last two columns read the triad's "
         "arrays without computing: `read` in one sequential stream per thread, as the products "
         "read their weights, `read+prefetch` in two streams per thread that prefetch 2 KiB ahead. "
         "They bound what a one-stream kernel can reach on this host at this moment.\n")
for f in ["gemv1.txt", "gemv8.txt", "gemv1i8.txt", "gemv8i8.txt"]:
    L.append("```\n" + open(os.path.join(tmp, f)).read().strip() + "\n```\n")
L.append("## Commands\n")
for n in ["t1", "t2", "b4", "b16", "lc", "attn", "attn_mha", "attn_quad", "kvp"]:
    L.append("    " + load(n)["cmd"])
L.append("    kvcast bench gemv --config %s --threads 2 --rounds 6 [--rows 8] [--dtype int8]" % cfg)
text = "\n".join(L) + "\n"
if kept:
    text += "\n" + kept
open(out, "w").write(text)
print(open(out).read())
PY
