#!/usr/bin/python3
"""gguf_read.py — the tests' own GGUF reader (independent of tools/bench/hf_to_gguf.py): header,
metadata, tensor infos, and every tensor as float32, F32/F16 as stored and Q8_0/Q4_0 through
ggml's dequantize_row_* written out here. Used by test_hf_to_gguf.py and test_gguf_quant.py."""
import struct

import numpy as np


def deq(raw, gtype, n):
    """This test's own dequantizer (ggml's dequantize_row_*), not hf_to_gguf's."""
    if gtype == 0:
        return np.frombuffer(raw, "<f4", n).copy()
    if gtype == 1:
        return np.frombuffer(raw, "<f2", n).astype(np.float32)
    out = np.empty(n, np.float32)
    bs = 34 if gtype == 8 else 18
    for i in range(n // 32):
        blk = raw[i * bs:(i + 1) * bs]
        d = np.float32(struct.unpack("<e", blk[:2])[0])
        if gtype == 8:
            q = np.frombuffer(blk[2:], np.int8).astype(np.float32)
        else:
            b = np.frombuffer(blk[2:], np.uint8)
            q = np.concatenate([b & 15, b >> 4]).astype(np.float32) - 8
        out[i * 32:(i + 1) * 32] = d * q
    return out


def read_gguf(path):
    b = open(path, "rb").read()
    o = [0]

    def take(fmt):
        v = struct.unpack_from("<" + fmt, b, o[0])
        o[0] += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        n = take("Q")
        o[0] += n
        return b[o[0] - n:o[0]].decode()

    scal = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scal[t])

    assert take("I") == 0x46554747 and take("I") == 3
    nt, nkv = take("Q"), take("Q")
    kv = {}
    for _ in range(nkv):
        k = string()
        kv[k] = value(take("I"))
    infos = []
    for _ in range(nt):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    base = (o[0] + align - 1) // align * align
    sizes = {0: 4, 1: 2, 8: 34 / 32, 2: 18 / 32}
    tensors, end = {}, 0
    for name, dims, t, off in infos:
        assert off % align == 0 and off >= end, (name, off, end)
        n = int(np.prod(dims))
        nbytes = int(n * sizes[t])
        end = off + nbytes
        tensors[name] = (deq(b[base + off:base + end], t, n).reshape(list(reversed(dims))), t)
    assert len(b) == base + end + (-end) % align, (len(b), base + end)
    return kv, tensors
