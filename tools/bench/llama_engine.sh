#!/usr/bin/env bash
# kvcast's engine beside llama.cpp on TinyLlama-1.1B shapes, same machine, one run: kvcast
# `bench engine --dtypes f32,bf16,int8` and llama.cpp (node-llama-cpp's prebuilt build, through
# tools/bench/peer/llama_bench.mjs) on F16, Q8_0 and Q4_0 GGUFs, 2 threads, prefill of 512
# tokens and 64 decode steps after it; writes docs/bench/llama-cpp.md with the ratios.
#   usage: tools/bench/llama_engine.sh [path/to/kvcast] [out.md]
# Environment: KC_LLAMA_THREADS (2), KC_LLAMA_REPEAT (3), KC_LLAMA_ROUNDS (2: rounds of the
# interleaved sequence; each figure is the best over rounds), KC_LLAMA_PROMPT (512) and
# KC_LLAMA_GEN (64) (smaller for a smoke run only), KC_LLAMA_QUIET_LOAD (1.5) and
# KC_LLAMA_QUIET_WAIT (300): before measuring, wait up to that many seconds for the 1-minute
# load average to fall below that (two threads on a small VM: another process's load costs
# llama.cpp's spinning thread barrier far more than kvcast); the doc records the load either way.
#
# Needs: /usr/bin/python3 with numpy, node >= 20 and tools/bench/peer/node_modules
# (bash tools/bench/peer/setup.sh). Models are cached under build/bench/tinyllama-rand/
# (gitignored), written once and reused: base/ (random bf16 weights in Hugging Face layout,
# 2.2 GB), f16.gguf (2.2 GB), q8_0.gguf (1.2 GB), q4_0.gguf (0.6 GB): about 6.2 GB of disk.
# First run: about 2 minutes to write and convert the models on 2 cores (make_pair 40 s,
# conversions 16 + 25 + 10 s; make_pair.py holds the model in memory, about 7 GB, the
# conversions under 1 GB), then about 2.5 minutes of benchmarks per round on a quiet machine
# (5 with the default 2 rounds); reruns only the benchmarks.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
KV="${1:-$ROOT/build/release/tools/kvcast}"
OUT="${2:-$ROOT/docs/bench/llama-cpp.md}"
THREADS="${KC_LLAMA_THREADS:-2}"
REPEAT="${KC_LLAMA_REPEAT:-3}"
ROUNDS="${KC_LLAMA_ROUNDS:-2}"
PROMPT="${KC_LLAMA_PROMPT:-512}"
GEN="${KC_LLAMA_GEN:-64}"
QUIET_LOAD="${KC_LLAMA_QUIET_LOAD:-1.5}"
QUIET_WAIT="${KC_LLAMA_QUIET_WAIT:-300}"
PY=/usr/bin/python3
CACHE="$ROOT/build/bench/tinyllama-rand"
PEER="$ROOT/tools/bench/peer"
die() { echo "llama_engine.sh: $*" >&2; exit 1; }
[ -x "$KV" ] || die "no kvcast at $KV (cmake --preset release && cmake --build --preset release --target kvcast)"
command -v node >/dev/null || die "node is missing (need >= 20)"
[ -d "$PEER/node_modules/node-llama-cpp" ] || die "node-llama-cpp is missing: bash tools/bench/peer/setup.sh"

mkdir -p "$CACHE"
if [ ! -f "$CACHE/base/model.safetensors" ]; then
    # TinyLlama-1.1B's shape (engine/io/model_config.c, preset tinyllama-1.1b).
    cat > "$CACHE/shape.json" <<'EOF'
{"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64,
 "max_position_embeddings": 2048, "tie_word_embeddings": false}
EOF
    echo "llama_engine.sh: writing the random model (once)" >&2
    "$PY" "$ROOT/tools/bench/make_pair.py" --out "$CACHE" --base "$CACHE/shape.json" \
        --dtype bf16 --base-only >&2
fi
for ty in f16 q8_0 q4_0; do
    if [ ! -f "$CACHE/$ty.gguf" ] || [ "$CACHE/$ty.gguf" -ot "$CACHE/base/model.safetensors" ]; then
        echo "llama_engine.sh: converting to $ty (once)" >&2
        "$PY" "$ROOT/tools/bench/hf_to_gguf.py" "$CACHE/base" "$CACHE/$ty.gguf" --type "$ty" \
            --name tinyllama-rand >&2
    fi
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
KCMD=(bench engine --config tinyllama-1.1b --prompt-len "$PROMPT" --gen "$GEN" --threads "$THREADS"
      --dtypes f32,bf16,int8 --attn none --json)
echo "$KV ${KCMD[*]}" > "$TMP/kvcast.cmd"
echo "node tools/bench/peer/llama_bench.mjs --model build/bench/tinyllama-rand/TYPE.gguf --threads $THREADS --prompt $PROMPT --gen $GEN --repeat $REPEAT --json" > "$TMP/llama.cmd"
load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while awk -v l="$(load1)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }' && [ "$waited" -lt "$QUIET_WAIT" ]; do
    [ "$waited" -eq 0 ] && echo "llama_engine.sh: load $(load1) >= $QUIET_LOAD: waiting up to ${QUIET_WAIT}s" >&2
    sleep 10
    waited=$((waited + 10))
done
uptime > "$TMP/uptime.before"
# Interleaved: kvcast, then llama.cpp per type, so that a change of the machine's load during
# the run hits both sides.
for r in $(seq 1 "$ROUNDS"); do
    echo "llama_engine.sh: round $r: kvcast bench engine" >&2
    "$KV" "${KCMD[@]}" > "$TMP/kvcast.$r.json" 2> "$TMP/kvcast.$r.err" ||
        { cat "$TMP/kvcast.$r.err" >&2; die "kvcast bench engine failed"; }
    uptime >> "$TMP/uptime.during"
    for ty in f16 q8_0 q4_0; do
        echo "llama_engine.sh: round $r: llama.cpp $ty" >&2
        node "$PEER/llama_bench.mjs" --model "$CACHE/$ty.gguf" --threads "$THREADS" --prompt "$PROMPT" \
            --gen "$GEN" --repeat "$REPEAT" --json > "$TMP/llama.$ty.$r.json" ||
            die "llama_bench.mjs failed on $ty.gguf"
        uptime >> "$TMP/uptime.during"
    done
done
uptime > "$TMP/uptime.after"
du -sh "$CACHE" | cut -f1 > "$TMP/disk"

mkdir -p "$(dirname "$OUT")"
"$PY" - "$TMP" "$OUT" "$ROUNDS" "$CACHE" "$ROOT" <<'PY'
import datetime, json, os, subprocess, sys
tmp, out, rounds, cache, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
sys.path.insert(0, os.path.join(root, "tools", "bench"))
def sh(c):
    return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
def rd(n):
    return open(os.path.join(tmp, n)).read().strip()

# kvcast: one JSON object per part; the per-type objects carry prefill_dtype/decode_dtype.
kv, kvruns = {}, {}
for r in range(1, rounds + 1):
    for line in open(os.path.join(tmp, "kvcast.%d.json" % r)):
        line = line.strip()
        if not line:
            continue
        o = json.loads(line)
        if "decode_tokens_per_s" not in o:
            continue
        t = o["decode_dtype"]
        kvruns.setdefault(t, []).append(o)
        best = kv.setdefault(t, dict(o))
        best["prefill_tokens_per_s"] = max(best["prefill_tokens_per_s"], o["prefill_tokens_per_s"])
        if o["decode_tokens_per_s"] > best["decode_tokens_per_s"]:
            best["decode_tokens_per_s"], best["decode_gbs"] = o["decode_tokens_per_s"], o["decode_gbs"]
ll = {}
for ty in ("f16", "q8_0", "q4_0"):
    for r in range(1, rounds + 1):
        o = json.loads(rd("llama.%s.%d.json" % (ty, r)))
        b = ll.setdefault(ty, dict(o, runs=[]))
        b["runs"] += o["runs"]
        b["prefill_tokens_per_s"] = max(b["prefill_tokens_per_s"], o["prefill_tokens_per_s"])
        b["decode_tokens_per_s"] = max(b["decode_tokens_per_s"], o["decode_tokens_per_s"])

def gguf_tensor_bytes(path):
    """Sum of the tensor data a GGUF holds (what a decode step streams: every weight once)."""
    from hf_to_gguf import tensor_nbytes
    import struct
    with open(path, "rb") as f:
        b = f.read(64 << 20)  # the header (metadata + tensor infos) is a few MB
    o = [0]
    def take(fmt):
        v = struct.unpack_from("<" + fmt, b, o[0]); o[0] += struct.calcsize("<" + fmt); return v[0]
    def skip(t):
        if t == 8:
            n = take("Q"); o[0] += n  # take() moves o[0] first
        elif t == 9:
            et, n = take("I"), take("Q")
            for _ in range(n):
                skip(et)
        else:
            o[0] += {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[t]
    take("I"); take("I")
    nt, nkv = take("Q"), take("Q")
    for _ in range(nkv):
        n = take("Q"); o[0] += n  # take() moves o[0] first
        skip(take("I"))
    total = 0
    for _ in range(nt):
        n = take("Q"); o[0] += n  # take() moves o[0] first
        dims = [take("Q") for _ in range(take("I"))]
        gt = take("I"); take("Q")
        total += tensor_nbytes(tuple(reversed(dims)), gt)
    return total

names = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
cpu = sh("lscpu | grep 'Model name' | sed 's/.*: *//'")
flags = sh("grep -o -w -E 'avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\\n' ' '")
mem = sh("free -g | awk '/Mem:/{print $2\" GiB\"}'")
rev = sh("git -C %s rev-parse --short HEAD" % root)
dirty = sh("git -C %s status --porcelain --untracked-files=no" % root)
anyll = ll["f16"]
best_prefill = max(kv.values(), key=lambda o: o["prefill_tokens_per_s"])
i8 = kv.get("int8")
L = []
L.append("# kvcast's engine beside llama.cpp: TinyLlama-1.1B shapes, random weights, same machine\n")
L.append("Measured %s on %s (%s), %s, %d vCPU, commit %s%s, by `tools/bench/llama_engine.sh`, "
         "%d thread(s), kvcast and llama.cpp interleaved in one run (%d round(s); best of each). "
         "Load (`uptime`: 1, 5, 15 minutes) before: `%s`; during (after each step; the benchmark's "
         "own two threads account for up to 2 of it): %s; after: `%s`.\n"
         % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), cpu, flags.strip(), mem,
            os.cpu_count(), rev, " (with uncommitted changes)" if dirty else "", best_prefill["threads"],
            rounds, rd("uptime.before").split("load average:")[-1].strip(),
            ", ".join("`%s`" % l.split("load average:")[-1].strip() for l in rd("uptime.during").splitlines()),
            rd("uptime.after").split("load average:")[-1].strip()))
L.append("llama.cpp: %s as bundled by node-llama-cpp 3.21.1 (prebuilt, CPU backend `%s`; "
         "its system info: `%s`).\n" % (anyll["llama_cpp"], anyll["cpu_backend"], anyll["cpu_features"]))
L.append("| engine, weights | prefill %d tok/s | decode tok/s | decode MB/token | decode GB/s | kvcast int8 decode / this decode | kvcast best prefill / this prefill |" % anyll["prompt"])
L.append("|---|---|---|---|---|---|---|")
rows = []
for t in ("f32", "bf16", "int8"):
    if t in kv:
        o = kv[t]
        mbt = o["decode_gbs"] * 1e3 / o["decode_tokens_per_s"]
        rows.append(("kvcast %s" % t, o["prefill_tokens_per_s"], o["decode_tokens_per_s"], mbt))
for ty in ("f16", "q8_0", "q4_0"):
    o = ll[ty]
    mbt = gguf_tensor_bytes(os.path.join(cache, ty + ".gguf")) / 1e6
    rows.append(("llama.cpp %s" % names[ty], o["prefill_tokens_per_s"], o["decode_tokens_per_s"], mbt))
for name, pp, tg, mbt in rows:
    r1 = "%.2f" % (i8["decode_tokens_per_s"] / tg) if i8 else "-"
    r2 = "%.2f" % (best_prefill["prefill_tokens_per_s"] / pp)
    if name.startswith("kvcast"):
        r1 = "(%s)" % r1
        r2 = "(%s)" % r2
    else:
        r1, r2 = "**%s**" % r1, "**%s**" % r2
    L.append("| %s | %.1f | %.2f | %.0f | %.1f | %s | %s |" % (name, pp, tg, mbt, mbt * tg / 1e3, r1, r2))
L.append("")
L.append("*kvcast best prefill* is kvcast %s (%.1f tok/s). kvcast's MB/token is what its decode step "
         "reads (weights + KV cache, from `bench engine`'s decode GB/s); llama.cpp's is the GGUF's "
         "tensor bytes (weights only; its F16 KV cache at 512-577 tokens adds about 13 MB); "
         "*decode GB/s* is MB/token x tok/s. The stream triad beside kvcast's decode reached "
         "%.1f GB/s (best of the run). "
         "Every figure behind the best (prefill/decode tok/s): kvcast, per round: %s; "
         "llama.cpp, per repeat: %s.\n"
         % (best_prefill["prefill_dtype"], best_prefill["prefill_tokens_per_s"],
            max(o["triad_gbs"] for o in kv.values()),
            "; ".join("%s %s" % (t, ", ".join("%.0f/%.2f" % (x["prefill_tokens_per_s"], x["decode_tokens_per_s"]) for x in kvruns[t])) for t in kvruns),
            "; ".join("%s %s" % (names[ty], ", ".join("%.0f/%.2f" % (x["prefill_tokens_per_s"], x["decode_tokens_per_s"]) for x in ll[ty]["runs"])) for ty in ll)))
L.append("## What differs from the figures in issue 18\n")
L.append("- **llama.cpp is node-llama-cpp's embedded build, not `llama-bench`.** Same library "
         "(prebuilt, picked at run time among its CPU variants by the CPU's features), driven "
         "through node-llama-cpp's sequence API: one `evaluateWithoutGeneratingNewTokens` of the "
         "512-token prompt (one batch of 512, `batchSize` 512), then greedy `evaluate` one token "
         "at a time (EOS ignored), a little JavaScript and a greedy sampler per token. Default "
         "context options (no flash attention, F16 KV cache, mmap).")
L.append("- **Decode runs after the 512-token prompt**, as kvcast's does (positions 512 to 576); "
         "`llama-bench`'s tg64 decodes from an empty context. On both sides the first decode step "
         "after the prompt is not timed and the 64 after it are. llama.cpp: best of %d repeats "
         "on a cleared sequence, after an untimed warm-up (`llama-bench` reports the mean of its "
         "repetitions). kvcast (`bench engine`): prefill best of 2 after a warm-up, decode one "
         "run of 64 steps in windows of 4 with a stream triad between windows (not counted), "
         "f32 KV cache. With %d rounds, each figure is the best over rounds." % (anyll["repeat"], rounds))
L.append("- **Random weights.** `make_pair.py --base-only` writes N(0, 0.02) bf16 weights in "
         "TinyLlama-1.1B's shape; the GGUFs are converted from them by `hf_to_gguf.py`. kvcast's "
         "`bench engine --config tinyllama-1.1b` draws its own random weights of the same shape "
         "(speed does not depend on the values). Random weights make llama.cpp's greedy tokens "
         "meaningless, but every step is the same work as with real weights.")
L.append("- **Every matrix is quantized** (like `llama-quantize --pure`): token_embd and output "
         "are Q8_0/Q4_0 too, where llama.cpp's default Q4_0 mix keeps output.weight at Q6_K. The "
         "quantization follows ggml's reference (`quantize_row_q8_0_ref`/`q4_0_ref`); llama.cpp "
         "repacks Q4_0/Q8_0 at load for its AVX-512 kernels where it can (REPACK in its system info).")
L.append("- **kvcast's weight types** are quantized at load from the same kind of bf16 source: "
         "f32 and bf16 are the weights as such; int8 is symmetric per output channel (s8 weights, "
         "per-token dynamic activations, oneDNN's s8 products). kvcast's f32 row runs f32 for "
         "prefill and decode, and so on (`--dtypes`).")
L.append("- **Not the machine of issue 18.** Its figures came from a Xeon with AMX (bf16 and "
         "int8 tiles); this run's CPU is the one named above%s, and llama.cpp loads the CPU "
         "variant named above." % (", which has AMX too" if "amx" in flags else
                                   ": no AMX, so kvcast's bf16 and int8 products run on AVX-512 "
                                   "(bf16, VNNI) instead"))
L.append("- **A shared 2-core VM.** Two threads on two vCPUs: any other process costs llama.cpp's "
         "spinning thread barrier much more than it costs one OpenMP region, so these figures "
         "are only as good as the load averages above.\n")
L.append("## Commands\n")
L.append("    tools/bench/llama_engine.sh   # writes this file")
L.append("    " + rd("kvcast.cmd").replace(root + "/", ""))
L.append("    " + rd("llama.cmd") + "   # TYPE = f16, q8_0, q4_0")
L.append("    /usr/bin/python3 tools/bench/make_pair.py --out build/bench/tinyllama-rand --base build/bench/tinyllama-rand/shape.json --dtype bf16 --base-only")
L.append("    /usr/bin/python3 tools/bench/hf_to_gguf.py build/bench/tinyllama-rand/base build/bench/tinyllama-rand/TYPE.gguf --type TYPE")
L.append("\nDisk: build/bench/tinyllama-rand/ holds %s (base/ 2.2 GB of bf16 safetensors, "
         "f16.gguf 2.2 GB, q8_0.gguf 1.2 GB, q4_0.gguf 0.6 GB); delete it to start over.\n" % rd("disk"))
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
PY
