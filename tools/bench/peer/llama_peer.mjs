#!/usr/bin/env node
// llama_peer.mjs — a llama.cpp peer for tools/bench/compare.sh --peer-url: node-llama-cpp's
// embedded (prebuilt) llama.cpp behind a small OpenAI-style HTTP server. It is NOT
// llama-server: same engine library, but its own scheduling (node-llama-cpp batches the
// sequences of one context), no prompt cache across requests.
//
//   node tools/bench/peer/llama_peer.mjs --model M.gguf [--port 8090] [--host 127.0.0.1]
//        [--threads 2] [--parallel 4] [--ctx 2048] [--batch 512] [--name NAME]
//
// Endpoints:
//   GET  /health          200 {"status":"ok"} once the model is loaded
//   GET  /v1/models       {"data":[{"id":NAME,"max_model_len":CTX}]}
//   POST /v1/completions  prompt: token ids, a string, or a list of one of either;
//                         max_tokens (16), stream, stream_options.include_usage,
//                         temperature (0: greedy), top_p, top_k, seed, ignore_eos, logprobs
//                         (echoed as a logprobs object with the token, values null, so a
//                         client that counts chunks by logprobs sees every token).
//                         Unknown fields (prefill_mode, ...) are ignored.
// Each request takes one of --parallel sequences (queued when all are busy); its history is
// cleared first, so no request is served from another's cache. Prints "listening on
// http://HOST:PORT" when ready (port 0 picks a free one).
import http from "node:http";
import path from "node:path";
import fs from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

// The llama.cpp release node-llama-cpp was built from (for the report).
let llamaCppTag = "?";
try {
    const pkg = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules", "node-llama-cpp");
    llamaCppTag = JSON.parse(fs.readFileSync(path.join(pkg, "llama", "llama.cpp.info.json"), "utf8")).tag;
} catch { /* not essential */ }

function parseArgs(argv) {
    const o = { host: "127.0.0.1", port: 8090, threads: 2, parallel: 4, ctx: 0, batch: 512 };
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i];
        const v = argv[i + 1];
        const num = () => {
            const n = Number(v);
            if (!Number.isInteger(n) || n < 0) throw new Error(`${k} needs a whole number`);
            i++;
            return n;
        };
        if (k === "--model") { o.model = v; i++; }
        else if (k === "--name") { o.name = v; i++; }
        else if (k === "--host") { o.host = v; i++; }
        else if (k === "--port") o.port = num();
        else if (k === "--threads") o.threads = num();
        else if (k === "--parallel") o.parallel = Math.max(1, num());
        else if (k === "--ctx") o.ctx = num();
        else if (k === "--batch") o.batch = Math.max(1, num());
        else if (k === "-h" || k === "--help") {
            console.log("usage: node llama_peer.mjs --model M.gguf [--port 8090] [--host 127.0.0.1] " +
                "[--threads 2] [--parallel 4] [--ctx N (default: the model's)] [--batch 512] [--name NAME]");
            process.exit(0);
        } else throw new Error(`unknown option ${k}`);
    }
    if (!o.model) throw new Error("--model M.gguf is required");
    o.name = o.name || path.basename(o.model).replace(/\.gguf$/, "");
    return o;
}

let opts;
try {
    opts = parseArgs(process.argv.slice(2));
} catch (e) {
    console.error(`llama_peer: ${e.message}`);
    process.exit(2);
}

const llama = await getLlama({ gpu: false, build: "never", maxThreads: opts.threads,
                               logLevel: LlamaLogLevel.warn });
const model = await llama.loadModel({ modelPath: opts.model, gpuLayers: 0 });
const trainCtx = model.trainContextSize;
const nVocab = Number(model.fileInfo.metadata?.llama?.vocab_size ?? model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length ?? 2 ** 31);
// Every sequence gets the full context: contextSize is per sequence in node-llama-cpp.
const ctxPerSeq = opts.ctx > 0 ? opts.ctx : trainCtx;
const context = await model.createContext({
    contextSize: ctxPerSeq, sequences: opts.parallel, batchSize: opts.batch,
    threads: { ideal: opts.threads, min: opts.threads },
});
const maxLen = context.contextSize;
const free = [];
for (let i = 0; i < opts.parallel; i++) free.push(context.getSequence());
const waiting = [];
function acquire() {
    if (free.length > 0) return Promise.resolve(free.pop());
    return new Promise((resolve) => waiting.push(resolve));
}
function release(seq) {
    const next = waiting.shift();
    if (next) next(seq); else free.push(seq);
}

function sendJson(res, code, obj) {
    const b = JSON.stringify(obj);
    res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(b) });
    res.end(b);
}
function fail(res, code, msg) {
    sendJson(res, code, { error: { message: msg, type: "invalid_request_error", code } });
}

function promptTokens(p) {
    if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) p = p[0];
    if (typeof p === "string") return model.tokenize(p, false);
    if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t) && t >= 0 && t < nVocab)) return p;
    return null;
}

let nextId = 1;
async function complete(req, res, body) {
    const tokens = promptTokens(body.prompt);
    if (tokens === null || tokens.length === 0)
        return fail(res, 400, "prompt must be a non-empty string or a list of token ids in the vocabulary");
    const maxTokens = body.max_tokens == null ? 16 : body.max_tokens;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) return fail(res, 400, "max_tokens must be >= 1");
    if (tokens.length + maxTokens > maxLen)
        return fail(res, 400, `prompt (${tokens.length}) + max_tokens (${maxTokens}) exceed the context (${maxLen})`);
    const stream = body.stream === true;
    const usageWanted = stream && body.stream_options && body.stream_options.include_usage === true;
    const wantLogprobs = body.logprobs != null;
    const temperature = typeof body.temperature === "number" ? body.temperature : 1.0;
    const id = `cmpl-peer-${nextId++}`;
    const created = Math.floor(Date.now() / 1000);
    let closed = false;
    res.on("close", () => { closed = true; });
    const seq = await acquire();
    const out = [];
    let finish = "length";
    try {
        await seq.clearHistory();
        if (stream) {
            res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
        }
        const chunk = (text, tok, fr) => ({
            id, object: "text_completion", created, model: opts.name,
            choices: [{ index: 0, text, finish_reason: fr,
                        logprobs: wantLogprobs && tok != null
                            ? { tokens: [text], token_logprobs: [null], top_logprobs: null, text_offset: [0] }
                            : null }],
        });
        const evalOpts = { temperature: temperature > 0 ? temperature : 0 };
        if (temperature > 0) {
            if (typeof body.top_p === "number") evalOpts.topP = body.top_p;
            if (typeof body.top_k === "number") evalOpts.topK = body.top_k;
            if (Number.isInteger(body.seed)) evalOpts.seed = body.seed;
        }
        for await (const tok of seq.evaluate(tokens, evalOpts)) {
            if (closed) { finish = "abort"; break; }
            if (!body.ignore_eos && model.isEogToken(tok)) { finish = "stop"; break; }
            out.push(tok);
            if (stream) {
                res.write(`data: ${JSON.stringify(chunk(model.detokenize([tok]), tok, null))}\n\n`);
            }
            if (out.length >= maxTokens) break;
        }
        const usage = { prompt_tokens: tokens.length, completion_tokens: out.length,
                        total_tokens: tokens.length + out.length };
        if (closed) return;
        if (stream) {
            const last = chunk("", null, finish);
            res.write(`data: ${JSON.stringify(last)}\n\n`);
            if (usageWanted) {
                res.write(`data: ${JSON.stringify({ id, object: "text_completion", created, model: opts.name, choices: [], usage })}\n\n`);
            }
            res.end("data: [DONE]\n\n");
        } else {
            sendJson(res, 200, { id, object: "text_completion", created, model: opts.name,
                choices: [{ index: 0, text: model.detokenize(out), finish_reason: finish, logprobs: null,
                            tokens: out }],
                usage });
        }
    } catch (e) {
        if (!res.headersSent) fail(res, 500, String(e && e.message || e));
        else res.end(`data: ${JSON.stringify({ error: { message: String(e && e.message || e) } })}\n\n`);
    } finally {
        release(seq);
    }
}

const server = http.createServer((req, res) => {
    const url = req.url.split("?")[0];
    if (req.method === "GET" && url === "/health") return sendJson(res, 200, { status: "ok" });
    if (req.method === "GET" && url === "/v1/models") {
        return sendJson(res, 200, { object: "list", data: [{ id: opts.name, object: "model",
            owned_by: "node-llama-cpp", max_model_len: maxLen }] });
    }
    if (req.method === "POST" && url === "/v1/completions") {
        const parts = [];
        let size = 0;
        req.on("data", (c) => {
            size += c.length;
            if (size > 64 << 20) { fail(res, 413, "body too large"); req.destroy(); } else parts.push(c);
        });
        req.on("end", () => {
            let body;
            try { body = JSON.parse(Buffer.concat(parts).toString("utf8")); } catch { return fail(res, 400, "body is not JSON"); }
            if (body === null || typeof body !== "object") return fail(res, 400, "body must be an object");
            complete(req, res, body).catch((e) => { if (!res.headersSent) fail(res, 500, String(e)); });
        });
        return;
    }
    fail(res, 404, `no route ${req.method} ${url}`);
});
server.keepAliveTimeout = 5000;
server.listen(opts.port, opts.host, () => {
    const a = server.address();
    console.log(`llama_peer: model ${opts.name} (${opts.model}), context ${maxLen} per sequence, ` +
        `${opts.parallel} sequences, ${opts.threads} threads, llama.cpp ${llamaCppTag}`);
    console.log(`listening on http://${opts.host}:${a.port}`);
});
const stop = async () => {
    server.close();
    await context.dispose();
    await model.dispose();
    process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
