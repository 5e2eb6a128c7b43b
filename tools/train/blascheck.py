#!/usr/bin/python3
"""Checks that PyTorch's CPU matmul is both fast and correct on this machine, and says which BLAS
shared library the process actually loaded.

Debian's python3-torch calls the system libblas.so.3; with the reference BLAS this is ~20x slower
than OpenBLAS. The recipe installs libopenblas0-pthread (selected through update-alternatives) and
sets OPENBLAS_CORETYPE=SkylakeX because OpenBLAS mis-detects this virtual CPU. Exit status 1 if
the result is wrong against a float64 reference or the speed is below --min-gflops.
"""
import argparse
import os
import sys
import time

import torch


def loaded_blas():
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in p or "lapack" in p:
                libs.add(os.path.realpath(p))
    return sorted(libs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-gflops", type=float, default=40.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a = torch.randn(512, 256 * 4)
    b = torch.randn(256 * 4, 688)
    c = a @ b  # warm-up
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        c = a @ b
    dt = time.perf_counter() - t0
    gflops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * n / dt / 1e9
    ref = a.double() @ b.double()
    rel = ((c.double() - ref).abs().max() / ref.abs().max()).item()
    # also the transposed layouts autograd uses
    g = torch.randn(512, 688)
    e1 = ((g @ b.t()).double() - g.double() @ b.double().t()).abs().max().item()
    e2 = ((a.t() @ g).double() - a.double().t() @ g.double()).abs().max().item()
    print("blascheck: OPENBLAS_CORETYPE=%s libraries=%s" % (os.environ.get("OPENBLAS_CORETYPE"), loaded_blas()))
    print("blascheck: f32 matmul 512x1024x688, 1 thread: %.1f GFLOP/s; max rel err vs f64 %.2e; "
          "transposed abs err %.2e %.2e" % (gflops, rel, e1, e2))
    ok = rel < 1e-5 and e1 < 1e-2 and e2 < 1e-2
    if not ok:
        print("blascheck: FAIL: matmul result disagrees with the float64 reference")
        return 1
    if gflops < args.min_gflops:
        print("blascheck: FAIL: %.1f GFLOP/s < %.1f (reference BLAS in use?)" % (gflops, args.min_gflops))
        return 1
    print("blascheck: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
