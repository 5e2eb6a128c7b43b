#!/usr/bin/python3
"""Measures the embedded pair's KV Prediction with the C engine (`kvcast eval`) on held-out
Persuasion and writes <dir>/kvp/eval.json for the model card. Two rows, on the same samples
(the ids of `kvp_eval.py --write-ids`, prompt 128, continuation 32):
  calibration   the auxiliary model as first trained + the ridge predictor (`kvcast calibrate`'s
                maths, kvp_ridge.py), before any joint training
  joint         the shipped pair: jointly trained aux + predictor (models/tiny)
Each row gives full, aux and predict NLL, the gap closed and the TTFT ratio.
"""
import argparse
import json
import os
import subprocess
import sys


def run_eval(kvcast, ids, args_pair, samples):
    cmd = [kvcast, "eval", "--ids", "--data", ids, "--prompt-len", "128", "--cont-len", "32",
           "--samples", str(samples), "--threads", "1", "--json"] + args_pair
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    res["command"] = " ".join(cmd)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.environ.get("KC_TRAIN_DIR", "build/train"))
    ap.add_argument("--models", default="models/tiny")
    ap.add_argument("--kvcast", default="build/release/tools/kvcast")
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    kd = os.path.join(args.dir, "kvp")
    ids = os.path.join(kd, "persuasion.ids")
    rows = {
        "calibration": ["--base", os.path.join(args.models, "base"),
                        "--aux", os.path.join(kd, "aux-pretrained"),
                        "--predictor", os.path.join(kd, "predictor-ridge.safetensors")],
        "joint": ["--bundle", os.path.join(args.models, "kvcast-bundle.json")],
    }
    report = {}
    for name, pair in rows.items():
        r = run_eval(args.kvcast, ids, pair, args.samples)
        report[name] = r
        m = r["modes"]
        print("kvp_report: %-11s full %.4f aux %.4f predict %.4f gap closed %.1f%% "
              "TTFT predict/full %.2f" % (name, m["full"]["nll"], m["aux"]["nll"],
                                          m["predict"]["nll"], 100 * r["gap_closed"],
                                          m["predict"]["ttft_ms_median"] / m["full"]["ttft_ms_median"]))
    with open(os.path.join(kd, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
