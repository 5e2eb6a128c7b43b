// OpenAI SDK conformance: starts `kvcast serve --port 0 --host 127.0.0.1` on the golden test
// model, then drives it with the official `openai` Node SDK exactly as a user would:
// completions with and without `stream`, stop strings, models.list, and the SDK's typed
// errors (404 model, 400 param, 401 key). Checks ids, text, usage and finish_reason.
// Then chat.completions.create against a second server on the embedded tiny pair (which has
// a chat template and a KV predictor), with and without `stream`, in prefill_mode predict and
// full (kvcast's extra body fields), with logprobs, and the 400 for tools.
// Every wait is bounded; the servers must exit 0 on SIGTERM (no LeakSanitizer report).
import { spawn } from 'node:child_process';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [kvcast, root] = process.argv.slice(2);
const KEY = 'conformance-key-123';
const deadline = setTimeout(() => { console.error('openai conformance: timed out'); process.exit(1); }, 240000);

const COMPLETIONS_ARGS = ['--model', 'tests/golden/llama_gqa', '--tokenizer', 'tests/fixtures/tiny_tokenizer',
  '--base-kv-mib', '1', '--served-model-name', 'tiny',
  // Slow steps + a short heartbeat: SSE comments (': ping') arrive between tokens, and the SDK
  // must read past them.
  '--debug-step-delay-ms', '60', '--heartbeat-ms', '50', '--disconnect-check-ms', '20'];
// No prefix cache and no refinement: the streamed predict-mode answer must equal the
// non-stream one, which a cache hit on the exact base KV of the first request would change.
const CHAT_ARGS = ['--bundle', 'models/tiny/kvcast-bundle.json', '--base-kv-mib', '16', '--aux-kv-mib', '8',
  '--served-model-name', 'tiny-chat', '--prefill-dtype', 'f32', '--decode-dtype', 'f32',
  '--no-enable-prefix-caching', '--no-refine'];

function startServer(extra) {
  const args = ['serve', ...extra, '--host', '127.0.0.1', '--port', '0', '--api-key', KEY];
  const child = spawn(kvcast, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve({ code, sig, stderr: () => stderr })));
  const port = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error('server exited before listening:\n' + stderr)));
  });
  return { child, port, exited };
}

async function expectError(promise, Klass, status, check) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof Klass, `expected ${Klass.name}, got ${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, status);
    if (check) check(e);
    return;
  }
  assert.fail(`expected ${Klass.name}`);
}

// The port is bound before the model loads: /health answers 503 {"status":"loading"} until
// it is in, so wait for 200 as a probe would.
async function ready(srv) {
  const port = await srv.port;
  for (;;) {
    const r = await fetch(`http://127.0.0.1:${port}/health`).catch(() => null);
    if (r !== null && r.status === 200) return port;
    if (r !== null && r.status !== 503) throw new Error(`/health answered ${r.status}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

// chat.completions.create, with and without stream, in one prefill mode: greedy, so the
// streamed deltas must concatenate to the non-stream content.
async function chatRound(client, mode) {
  const messages = [{ role: 'system', content: 'You are Emma Woodhouse.' }, { role: 'user', content: 'Who is Mr. Knightley?' }];
  const params = { model: 'tiny-chat', messages, max_tokens: 10, temperature: 0, ignore_eos: true, prefill_mode: mode };
  const c = await client.chat.completions.create(params);
  assert.match(c.id, /^chatcmpl-[0-9a-f]+$/);
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.model, 'tiny-chat');
  assert.equal(c.choices.length, 1);
  const msg = c.choices[0].message;
  assert.equal(msg.role, 'assistant');
  assert.equal(typeof msg.content, 'string');
  assert.equal(c.choices[0].finish_reason, 'length');
  assert.equal(c.usage.completion_tokens, 10);
  assert.ok(c.usage.prompt_tokens > 10);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + 10);
  assert.equal(typeof c.usage.prompt_tokens_details.cached_tokens, 'number');
  assert.equal(c.timings.prefill_mode, mode);

  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = ''; let role = null; let finish = null; let usage = null; let chunks = 0; const ids = new Set();
  for await (const chunk of stream) {
    chunks++;
    ids.add(chunk.id);
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const ch of chunk.choices) {
      if (ch.delta.role) { assert.equal(role, null, 'role only in the first delta'); role = ch.delta.role; }
      if (ch.delta.content) { assert.equal(finish, null, 'no content after finish_reason'); text += ch.delta.content; }
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks >= 4, 'role, content, final and usage chunks');
  assert.equal(ids.size, 1);
  assert.match([...ids][0], /^chatcmpl-/);
  assert.equal(role, 'assistant');
  assert.equal(text, msg.content);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 10);
  assert.equal(usage.prompt_tokens, c.usage.prompt_tokens);
  return msg.content;
}

async function chatConformance() {
  const srv = startServer(CHAT_ARGS);
  let failed = false;
  try {
    const port = await ready(srv);
    const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: KEY, maxRetries: 0, timeout: 30000 });
    const predict = await chatRound(client, 'predict');
    const full = await chatRound(client, 'full');
    assert.equal(typeof predict, 'string');
    assert.equal(typeof full, 'string');
    // Logprobs in chat format.
    const lp = await client.chat.completions.create({ model: 'tiny-chat', messages: [{ role: 'user', content: 'Anne' }],
      max_tokens: 4, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 2 });
    const content = lp.choices[0].logprobs.content;
    assert.equal(content.length, 4);
    for (const t of content) {
      assert.equal(typeof t.token, 'string');
      assert.ok(t.logprob <= 0);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
      assert.equal(t.top_logprobs.length, 2);
    }
    // Tool calling is refused with a typed 400 naming the field.
    await expectError(client.chat.completions.create({ model: 'tiny-chat', messages: [{ role: 'user', content: 'hi' }],
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] }),
    OpenAI.BadRequestError, 400, (e) => assert.equal(e.param, 'tools'));
    await expectError(client.chat.completions.create({ model: 'tiny-chat', messages: [{ role: 'wizard', content: 'hi' }] }),
      OpenAI.BadRequestError, 400, (e) => assert.equal(e.param, 'messages'));
    console.log('openai conformance: chat ok');
  } catch (e) {
    failed = true;
    console.error('openai conformance: chat FAILED:', e);
  }
  srv.child.kill('SIGTERM');
  const { code, sig, stderr } = await srv.exited;
  if (code !== 0) {
    console.error(`openai conformance: chat server exited with ${code ?? sig}\n${stderr()}`);
    failed = true;
  }
  return failed;
}

const srv = startServer(COMPLETIONS_ARGS);
let failed = false;
try {
  const port = await ready(srv);
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: KEY, maxRetries: 0, timeout: 30000 });

  // models.list
  const models = await client.models.list();
  assert.equal(models.data[0].id, 'tiny');
  assert.equal(models.data[0].object, 'model');

  // Non-streaming completion.
  const params = { model: 'tiny', prompt: 'the cat sat', max_tokens: 12, temperature: 0, ignore_eos: true };
  const c = await client.completions.create(params);
  assert.match(c.id, /^cmpl-[0-9a-f]+$/);
  assert.equal(c.object, 'text_completion');
  assert.equal(c.model, 'tiny');
  assert.equal(typeof c.created, 'number');
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].index, 0);
  assert.equal(typeof c.choices[0].text, 'string');
  assert.equal(c.choices[0].finish_reason, 'length');
  assert.equal(c.usage.completion_tokens, 12);
  assert.ok(c.usage.prompt_tokens > 0);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + 12);

  // Streaming: same greedy text, one id across chunks, usage at the end.
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = ''; let finish = null; let usage = null; const ids = new Set(); let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    ids.add(chunk.id);
    assert.equal(chunk.object, 'text_completion');
    for (const ch of chunk.choices) {
      text += ch.text;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks >= 2, 'several chunks');
  assert.equal(ids.size, 1);
  assert.match([...ids][0], /^cmpl-/);
  assert.equal(text, c.choices[0].text);
  assert.equal(finish, 'length');
  assert.deepEqual(usage, c.usage);

  // Stop string: cut before it, finish_reason "stop".
  if (c.choices[0].text.length >= 6) {
    const full = c.choices[0].text;
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 2);
    const s = await client.completions.create({ ...params, stop: [stop] });
    assert.equal(s.choices[0].text, full.slice(0, full.indexOf(stop)));
    assert.equal(s.choices[0].finish_reason, 'stop');
  }

  // Token-id prompt and n > 1.
  const multi = await client.completions.create({ model: 'tiny', prompt: [1, 5, 9], max_tokens: 3, n: 2, seed: 3, ignore_eos: true });
  assert.equal(multi.choices.length, 2);
  assert.deepEqual(multi.choices.map((x) => x.index), [0, 1]);
  assert.equal(multi.usage.completion_tokens, 6);

  // Typed errors.
  await expectError(client.completions.create({ ...params, model: 'gpt-4' }), OpenAI.NotFoundError, 404);
  await expectError(client.completions.create({ ...params, max_tokens: -1 }), OpenAI.BadRequestError, 400,
    (e) => assert.equal(e.param, 'max_tokens'));
  await expectError(client.completions.create({ ...params, prompt: [1, 2, 3], max_tokens: 127 }), OpenAI.BadRequestError, 400,
    (e) => assert.equal(e.code, 'context_length_exceeded'));
  const wrong = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'nope', maxRetries: 0, timeout: 30000 });
  await expectError(wrong.completions.create(params), OpenAI.AuthenticationError, 401);
  console.log(`openai conformance: ok (${chunks} stream chunks)`);
} catch (e) {
  failed = true;
  console.error('openai conformance: FAILED:', e);
}
srv.child.kill('SIGTERM');
const { code, sig, stderr } = await srv.exited;
if (code !== 0) {
  console.error(`openai conformance: server exited with ${code ?? sig}\n${stderr()}`);
  failed = true;
}
if (await chatConformance()) failed = true;
clearTimeout(deadline);
process.exit(failed ? 1 : 0);
