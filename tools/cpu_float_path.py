"""Run a kvrun command on the CPU with float activations in every weight product.  (developer tool)

The CPU's decode products quantize x to int8 per 32 values, as llama.cpp's do
(and a compressed cache's 2- and 4-bit keys meet int8 queries on VNNI hosts);
the GPU's keep x in float32.  This tool patches the CPU backend so every
product is ``x @ dequant(W).T`` in float32 (and keys meet float queries) (each matrix dequantized once, with
the ``gguf`` package's reference dequantizers), then runs the ``kvrun``
command line: the CPU's arithmetic with the GPU's choice of activations.  It
separates what a GPU result owes to that choice from what it owes to the
device, e.g. in ``kv-eval``:

    OPENBLAS_NUM_THREADS=1 python tools/cpu_float_path.py kv-eval MODEL -f TEXT --ctx 1024 --configs "16; 4; 2" --json

(one BLAS thread: OpenBLAS's spinning threads otherwise starve Numba's, 10x slower).

Seen (stop 27, GPL-3, ctx 1024), perplexity at 16 / 4 / 2 bits:

    SmolLM2 Q4_1   CPU, int8 x (default)     19.8246  20.0241  20.0466
                   CPU, float x (this tool)  19.8489  19.9850  20.2453
                   H200 (--device gpu)       19.8489  19.9850  20.2379
    Gemma 3 270M   CPU, int8 x (default)     15.8980  16.0794  16.2438
                   CPU, float x (this tool)  15.9664  16.0713  16.2511
                   H200 (--device gpu)       15.9662  16.1460  16.1913

With the fp16 cache the GPU matches the CPU's float path to 1e-5; on SmolLM2
also at 4 bits, and to 0.04% at 2 bits, so its +0.95% against the default CPU
there is the int8 activations' rounding moving 2-bit codes across their
boundaries.  The greedy text follows the same line: on SmolLM2 the GPU's 32
tokens equal this tool's (and llama.cpp's), the default CPU's part at the
second token, where its top two logits are 0.005 apart.  On Gemma the GPU
parts from the float path at 4 and 2 bits (+0.46%, -0.37%): not explained yet
(the emulator is too slow for Gemma's 262k-row output to replay kv-eval).
Stop 28 found that the compressed cache's decode attention rounded one way in the
run that compiled it and another way when Numba loaded it from its cache (fixed:
both ways now compile alike, ``tests/test_jit_cache.py``); those CPU figures may
be of the two variants (the int8 one comes first in ``gpu_checks.sh``).  After the fix, on another CPU
(AMD EPYC), SmolLM2 at 16 / 4 / 2 bits:

    ctx 1024   CPU, int8 x   19.8794  19.9722  20.0361
               CPU, float x  19.8489  19.9710  20.0540
    ctx 2048   CPU, int8 x   20.2397  20.3533  20.7427   (kv-eval's default context)
               CPU, float x  20.2051  20.3588  20.7757

so the H200's stop-27 figures above equal the float path as it was then, not as it
is now (2 bits: 20.2379 against 20.0540); the GPU has not been measured since.
At ctx 2048 the two CPU paths are within 0.17% of each other at every width.
Slow (about 25 tok/s on SmolLM2 here): float copies of every matrix.
"""

from __future__ import annotations

import sys

import gguf
import numpy as np

from kvrun.ops.backend import Weight
from kvrun.ops.cpu import nn
from kvrun.ops.cpu.backend import CPUBackend

_FLOAT: dict[int, tuple[Weight, np.ndarray]] = {}  # id(weight) -> (weight, its float32 matrix); the weight kept so its id stays unique


def dequantized(w: Weight) -> np.ndarray:
    """``w`` as a float32 [rows, cols] matrix, made once per weight."""
    hit = _FLOAT.get(id(w))
    if hit is None:
        d = w.data
        if d.dtype in (np.float32, np.float16):
            f = d.astype(np.float32)
        else:
            f = gguf.quants.dequantize(d, gguf.GGMLQuantizationType(w.qtype))
        hit = _FLOAT[id(w)] = (w, np.ascontiguousarray(f.reshape(w.shape), dtype=np.float32))
    return hit[1]


def linear(self, w, x, out) -> None:
    np.matmul(x, dequantized(w).T, out=out)


def linear_many(self, ws, x, outs) -> None:
    for w, out in zip(ws, outs, strict=True):
        linear(self, w, x, out)


def norm_linear_many(self, x, norm_w, eps, xn, ws, outs) -> None:
    nn.rms_norm(x, norm_w, eps, xn)
    linear_many(self, ws, xn, outs)


def linear_add(self, w, x, out) -> None:
    out += x @ dequantized(w).T


def linear_glu(self, w, gate, up, out, act, accumulate=False) -> None:
    (nn.silu_mul if act == "silu" else nn.gelu_mul)(gate, up, gate)
    (linear_add if accumulate else linear)(self, w, gate, out)


def patch() -> None:
    """Every CPU backend made after this computes its products in float (the fused decode kernels bypassed),
    and compressed caches score their keys with float queries (the float tiles, not ``ops/cpu/qkeys.py``)."""
    from kvrun.cache.compressed import CompressedLayerCache

    for f in (linear, linear_many, norm_linear_many, linear_add, linear_glu):
        setattr(CPUBackend, f.__name__, f)
    CompressedLayerCache.int_keys = False


if __name__ == "__main__":
    patch()
    from kvrun.cli import main

    sys.argv = ["kvrun", *sys.argv[1:]]
    main()
