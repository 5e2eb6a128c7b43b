// OpenAI SDK conformance: starts `kvcast serve --port 0 --host 127.0.0.1` on the golden test
// model, then drives it with the official `openai` Node SDK exactly as a user would:
// completions with and without `stream`, stop strings, models.list, and the SDK's typed
// errors (404 model, 400 param, 401 key). Checks ids, text, usage and finish_reason.
// Every wait is bounded; the server must exit 0 on SIGTERM (no LeakSanitizer report).
import { spawn } from 'node:child_process';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [kvcast, root] = process.argv.slice(2);
const KEY = 'conformance-key-123';
const deadline = setTimeout(() => { console.error('openai conformance: timed out'); process.exit(1); }, 120000);

function startServer() {
  const args = ['serve', '--model', 'tests/golden/llama_gqa', '--tokenizer', 'tests/fixtures/tiny_tokenizer',
    '--host', '127.0.0.1', '--port', '0', '--base-kv-mib', '1', '--served-model-name', 'tiny', '--api-key', KEY,
    // Slow steps + a short heartbeat: SSE comments (': ping') arrive between tokens, and the SDK
    // must read past them.
    '--debug-step-delay-ms', '60', '--heartbeat-ms', '50', '--disconnect-check-ms', '20'];
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

const srv = startServer();
let failed = false;
try {
  const port = await srv.port;
  // The port is bound before the model loads: /health answers 503 {"status":"loading"} until
  // it is in, so wait for 200 as a probe would.
  for (let ready = false; !ready;) {
    const r = await fetch(`http://127.0.0.1:${port}/health`).catch(() => null);
    if (r !== null && r.status === 200) ready = true;
    else if (r !== null && r.status !== 503) throw new Error(`/health answered ${r.status}`);
    else await new Promise((res) => setTimeout(res, 50));
  }
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
clearTimeout(deadline);
if (code !== 0) {
  console.error(`openai conformance: server exited with ${code ?? sig}\n${stderr()}`);
  failed = true;
}
process.exit(failed ? 1 : 0);
