#!/usr/bin/python3
"""The measurement of `kvcast eval` in PyTorch: on held-out text, N (prompt, continuation) samples
spread evenly over the tokens, each [BOS] + P-1 prompt tokens + C continuation tokens; for the
modes full (base over the whole prompt), aux (aux alone) and predict (aux over t[0..P-2], the
predictor, the base from t[P-1] on), the mean NLL of the continuation given the prompt, first-token
and greedy agreement with full, and the gap closed (NLL_aux - NLL_predict) / (NLL_aux - NLL_full).

Data: by default the held-out Persuasion tokens of <dir>/eval.bin (--docs names other evaluation
documents, "all" for the whole split); --data FILE.txt tokenizes a text file as kvcast does;
--ids FILE reads token ids. --write-ids FILE writes the tokens used, for
`kvcast eval --ids --data FILE` on exactly the same samples. Never give it training text.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvp_common as K  # noqa: E402


def add_data_args(ap):
    ap.add_argument("--dir", default=K.train_dir_default(), help="training work dir (eval.bin, tokens.json)")
    ap.add_argument("--docs", default="Persuasion", help="comma list of evaluation documents, or 'all'")
    ap.add_argument("--data", default=None, help="a held-out UTF-8 text file instead")
    ap.add_argument("--ids", default=None, help="a held-out token-id file instead")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--cont-len", type=int, default=32)
    ap.add_argument("--samples", type=int, default=64)


def eval_data(args, tokenizer_json):
    if args.ids:
        return K.read_ids(args.ids)
    if args.data:
        return K.text_tokens(args.data, tokenizer_json)
    return K.eval_tokens(args.dir, None if args.docs == "all" else args.docs.split(","))


def run_eval(base, aux, pred, tokens, args, bos, greedy=True):
    s = K.eval_samples(tokens, args.prompt_len, args.cont_len, args.samples, bos)
    return K.evaluate(base, aux, pred, s, args.prompt_len, args.cont_len, greedy=greedy)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="base model dir (HF layout) or ckpt.pt")
    ap.add_argument("--aux", required=True, help="aux model dir (HF layout) or ckpt.pt")
    ap.add_argument("--predictor", default=None)
    add_data_args(ap)
    ap.add_argument("--write-ids", default=None)
    ap.add_argument("--no-greedy", action="store_true", help="NLL only (faster)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    K.setup_torch(args.threads)
    base, aux = K.load_model(args.base), K.load_model(args.aux)
    pred = K.load_predictor(args.predictor) if args.predictor else None
    if pred is not None:
        K.check_pair(base, aux, pred)
    tokjson = os.path.join(args.base, "tokenizer.json") if os.path.isdir(args.base) else \
        os.path.join(args.dir, "tokenizer.json")
    tokens = eval_data(args, tokjson)
    if args.write_ids:
        K.write_ids(args.write_ids, tokens)
    bos = K.load_tokens_meta(args.dir)["eot_id"]
    t0 = time.time()
    res = run_eval(base, aux, pred, tokens, args, bos, greedy=not args.no_greedy)
    res["seconds"] = time.time() - t0
    print(json.dumps(res) if args.json else K.format_eval(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
