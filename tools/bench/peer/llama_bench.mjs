#!/usr/bin/env node
// llama_bench.mjs — llama-bench's pp/tg figures for one GGUF, measured through node-llama-cpp's
// embedded (prebuilt) llama.cpp, so that tools/bench/llama_engine.sh can put llama.cpp beside
// `kvcast bench engine` without building llama.cpp. It is NOT llama-bench: same engine
// library, but driven through node-llama-cpp's sequence API (a little JS per token), and its
// decode runs after the prompt (like `kvcast bench engine`), where llama-bench's tg starts
// from an empty context.
//
//   node tools/bench/peer/llama_bench.mjs --model M.gguf [--threads 2] [--prompt 512]
//        [--gen 64] [--repeat 3] [--seed 1] [--json]
//
// After one untimed warm-up (16 prompt tokens, 2 decode steps), each repeat, on a cleared
// sequence:
//   prefill: one evaluation of a --prompt-token prompt of random ids (one batch of --prompt
//            tokens, no logits kept but the last one's) -> prompt tokens / seconds;
//   decode:  greedy generation after it, EOS ignored: --gen + 1 steps are run and the --gen
//            steps after the first are timed -> gen / seconds.
// The best of --repeat is kept for each (as llama-bench's best, not its mean). Prints the
// llama.cpp tag node-llama-cpp was built from and the CPU backend variant llama.cpp loaded
// (ggml's "load_backend" log line, e.g. libggml-cpu-zen4.so), or "?" when neither is known.
// --json prints one JSON object on stdout instead of the text lines.
import path from "node:path";
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function parseArgs(argv) {
    const o = { threads: 2, prompt: 512, gen: 64, repeat: 3, seed: 1, json: false };
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i];
        const v = argv[i + 1];
        const num = (min) => {
            const n = Number(v);
            if (!Number.isInteger(n) || n < min) throw new Error(`${k} needs a whole number >= ${min}`);
            i++;
            return n;
        };
        if (k === "--model") { o.model = v; i++; }
        else if (k === "--threads") o.threads = num(1);
        else if (k === "--prompt") o.prompt = num(1);
        else if (k === "--gen") o.gen = num(1);
        else if (k === "--repeat") o.repeat = num(1);
        else if (k === "--seed") o.seed = num(0);
        else if (k === "--json") o.json = true;
        else if (k === "-h" || k === "--help") {
            console.log("usage: node llama_bench.mjs --model M.gguf [--threads 2] [--prompt 512] " +
                "[--gen 64] [--repeat 3] [--seed 1] [--json]");
            process.exit(0);
        } else throw new Error(`unknown option ${k}`);
    }
    if (!o.model) throw new Error("--model M.gguf is required");
    if (!fs.existsSync(o.model)) throw new Error(`no file ${o.model}`);
    return o;
}

let opts;
try {
    opts = parseArgs(process.argv.slice(2));
} catch (e) {
    console.error(`llama_bench: ${e.message}`);
    process.exit(2);
}

// The llama.cpp release node-llama-cpp was built from, as llama_peer.mjs reads it.
let llamaCppTag = "?";
try {
    const pkg = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules", "node-llama-cpp");
    llamaCppTag = JSON.parse(fs.readFileSync(path.join(pkg, "llama", "llama.cpp.info.json"), "utf8")).tag;
} catch { /* not essential */ }

// ggml logs which CPU backend library it loaded at info level ("load_backend: loaded CPU
// backend from .../libggml-cpu-zen4.so"); the logger keeps those lines and drops the rest
// below warnings.
let cpuBackend = "?";
const logger = (level, message) => {
    const m = /loaded CPU backend from (\S+)/.exec(message);
    if (m) cpuBackend = path.basename(m[1]);
    else if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) process.stderr.write(message);
};
const llama = await getLlama({ gpu: false, build: "never", maxThreads: opts.threads,
                               logLevel: LlamaLogLevel.info, logger });
const model = await llama.loadModel({ modelPath: opts.model, gpuLayers: 0 });
const vocab = Number(model.fileInfo.metadata?.llama?.vocab_size ??
                     model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length);
const context = await model.createContext({
    contextSize: opts.prompt + opts.gen + 64, sequences: 1, batchSize: opts.prompt,
    threads: { ideal: opts.threads, min: opts.threads },
});
const seq = context.getSequence();
if (cpuBackend === "?") {
    // The line is logged before the logger is attached in this build: ask the process's own
    // memory map (Linux) which libggml-cpu-*.so is loaded.
    try {
        const libs = new Set(fs.readFileSync("/proc/self/maps", "utf8").split("\n")
            .map((l) => /(libggml-cpu[^/\s]*\.so)/.exec(l)?.[1]).filter(Boolean));
        if (libs.size > 0) cpuBackend = [...libs].join(",");
    } catch { /* not Linux */ }
}
const features = llama.systemInfo.replace(/\s+/g, " ").trim();

// Random ids from a small LCG (llama-bench also sends random tokens), avoiding the first 3
// (unk, bos, eos of the placeholder vocabularies).
let state = BigInt(opts.seed) * 6364136223846793005n + 1442695040888963407n;
function nextId() {
    state = (state * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
    return 3 + Number((state >> 33n) % BigInt(vocab - 3));
}
const prompt = Array.from({ length: opts.prompt }, nextId);
const first = nextId();

const now = () => Number(process.hrtime.bigint()) / 1e9;
// Untimed warm-up, as llama-bench's: a short prompt and two decode steps fault the mmap'd
// weights in and start the thread pool, so that the first repeat is not the slow one.
await seq.clearHistory();
await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, Math.min(16, opts.prompt)));
let warm = 0;
for await (const tok of seq.evaluate([first], { temperature: 0, yieldEogToken: true })) {
    void tok;
    if (++warm === 2) break;
}
const runs = [];
for (let r = 0; r < opts.repeat; r++) {
    await seq.clearHistory();
    const t0 = now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    const t1 = now();
    const stamps = [];
    for await (const tok of seq.evaluate([first], { temperature: 0, yieldEogToken: true })) {
        void tok;
        stamps.push(now());
        if (stamps.length === opts.gen + 1) break;
    }
    runs.push({ prefill_s: t1 - t0, prefill_tokens_per_s: opts.prompt / (t1 - t0),
                decode_s: stamps[opts.gen] - stamps[0],
                decode_tokens_per_s: opts.gen / (stamps[opts.gen] - stamps[0]) });
}
const fileBytes = fs.statSync(opts.model).size;
const md = model.fileInfo.metadata?.general ?? {};
const out = {
    model: opts.model, file_type: md.file_type, llama_cpp: llamaCppTag, cpu_backend: cpuBackend,
    cpu_features: features,
    threads: opts.threads, prompt: opts.prompt, gen: opts.gen, repeat: opts.repeat,
    file_bytes: fileBytes,
    prefill_tokens_per_s: Math.max(...runs.map((x) => x.prefill_tokens_per_s)),
    decode_tokens_per_s: Math.max(...runs.map((x) => x.decode_tokens_per_s)),
    runs,
};
if (opts.json) {
    console.log(JSON.stringify(out));
} else {
    console.log(`llama.cpp ${llamaCppTag} (node-llama-cpp, prebuilt), CPU backend ${cpuBackend}, ${opts.threads} threads`);
    console.log(`llama.cpp system info: ${features}`);
    console.log(`model ${opts.model} (${(fileBytes / 1e6).toFixed(0)} MB, general.file_type ${md.file_type})`);
    for (const [i, x] of runs.entries())
        console.log(`  repeat ${i + 1}: prefill ${opts.prompt}: ${x.prefill_tokens_per_s.toFixed(1)} tok/s, ` +
                    `decode ${opts.gen}: ${x.decode_tokens_per_s.toFixed(2)} tok/s`);
    console.log(`best: pp${opts.prompt} ${out.prefill_tokens_per_s.toFixed(1)} tok/s, tg${opts.gen} ${out.decode_tokens_per_s.toFixed(2)} tok/s`);
}
await context.dispose();
await model.dispose();
await llama.dispose();
