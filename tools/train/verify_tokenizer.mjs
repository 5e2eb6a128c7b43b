// verify_tokenizer.mjs — checks that tokenizers.js (@huggingface/tokenizers) loads the trained
// tokenizer.json and produces exactly the ids the Python trainer's encoder produced.
// Usage: node verify_tokenizer.mjs <tokenizers.mjs path> <tokenizer dir> <cases.json>
// cases.json: [{"text": ..., "ids": [...]}] (ids include the BOS the config adds).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modPath, dir, casesPath] = process.argv.slice(2);
const { Tokenizer } = await import(pathToFileURL(modPath).href);
const tj = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
const tc = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
const tok = new Tokenizer(tj, tc);
const cases = JSON.parse(readFileSync(casesPath, "utf8"));
let bad = 0, ntok = 0;
for (const c of cases) {
  const ids = tok.encode(c.text).ids;
  ntok += ids.length;
  const same = ids.length === c.ids.length && ids.every((v, i) => v === c.ids[i]);
  const dec = ids.length > 1 ? tok.decode(ids.slice(1), { skip_special_tokens: false }) : "";
  if (!same || dec !== c.text) {
    if (bad < 5) {
      console.log("MISMATCH", JSON.stringify(c.text.slice(0, 80)), same ? "(decode)" : "(ids)");
      if (!same) console.log(" js:", ids.slice(0, 40).join(","), "\n py:", c.ids.slice(0, 40).join(","));
      else console.log(" decoded:", JSON.stringify(dec.slice(0, 80)));
    }
    bad++;
  }
}
console.log(`verify_tokenizer: ${cases.length} cases, ${ntok} tokens, ${bad} mismatches`);
process.exit(bad ? 1 : 0);
