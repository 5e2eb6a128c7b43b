// reference.mjs — expected token ids from Hugging Face's own JS implementation
// (@huggingface/tokenizers) for a tokenizer directory and a corpus of JSON-string lines.
//
//   node reference.mjs TOKENIZER_DIR corpus.jsonl > expected.jsonl
//
// Each output line: {"ids": [...], "text": decode(ids), "text_skip": decode(ids, skip special),
// "text_clean": decode(ids) with clean_up_tokenization_spaces}; the first two without the
// clean-up (kvcast's default; it is lossy).
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tokenizer } from "@huggingface/tokenizers";

// tokenizers.js hard-codes GPT-2's regex for the ByteLevel pre-tokenizer (use_regex: true) with
// JavaScript's \s, which includes U+FEFF and leaves out U+0085. Hugging Face's Rust library
// (Oniguruma) and tokenizers.js's own Split patterns mean Unicode White_Space instead; patch the
// reference so it follows the Rust library, which is what `transformers` runs.
const GPT2_WHITE_SPACE =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

function fixByteLevelRegex(pre) {
  if (!pre) return;
  if ("byte_encoder" in pre && "use_regex" in pre && "pattern" in pre) {
    pre.pattern = GPT2_WHITE_SPACE;
  }
  for (const child of pre.tokenizers ?? []) fixByteLevelRegex(child);
}

export function loadReference(dir) {
  const json = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
  const cfgPath = join(dir, "tokenizer_config.json");
  const config = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, "utf8")) : {};
  const tok = new Tokenizer(json, config);
  fixByteLevelRegex(tok.pre_tokenizer);
  return { tok, json, config };
}

export function readCorpus(path) {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l));
}

export function expected(tok, text) {
  const ids = tok.encode(text).ids;
  const dec = (opts) =>
    ids.length === 0 ? "" : tok.decode(ids, { clean_up_tokenization_spaces: false, ...opts });
  return {
    ids,
    text: dec({}),
    text_skip: dec({ skip_special_tokens: true }),
    text_clean: dec({ clean_up_tokenization_spaces: true }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.length !== 4) {
    console.error("usage: node reference.mjs TOKENIZER_DIR corpus.jsonl");
    process.exit(2);
  }
  const { tok } = loadReference(process.argv[2]);
  for (const text of readCorpus(process.argv[3])) {
    process.stdout.write(JSON.stringify(expected(tok, text)) + "\n");
  }
}
