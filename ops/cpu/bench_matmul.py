"""Benchmark of the quantized CPU products: ``python -m kvrun.ops.cpu.bench_matmul [--threads N]``.

matvec (decode): µs per call with the weight hot in cache (the same matrix
again and again) and cold (cycling through copies that together exceed the
L3 cache, as a real forward pass does), and the effective bandwidth
``weight bytes / cold time``.  matmul (prefill): GOP/s with 512 tokens, the
int8 VNNI GEMM beside the tile + BLAS path where the host has AVX-512 VNNI.
The shapes are the linear layers of SmolLM2-135M and Gemma 3 270M.  Each
figure is the best of a few repeats (other processes on a shared machine only
ever make a run slower).
"""

from __future__ import annotations

import argparse
import time

import numba as nb
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from . import qmatmul
from .blas import set_blas_threads

# (model, tensor, type, n_rows, n_cols, count per token)
SMOLLM2 = [
    ("smollm2", "attn_q/o", T.Q4_1, 576, 576, 60),
    ("smollm2", "attn_k/v", T.Q4_1, 192, 576, 60),
    ("smollm2", "ffn_gate/up", T.Q4_1, 1536, 576, 60),
    ("smollm2", "ffn_down", T.Q4_1, 576, 1536, 30),
    ("smollm2", "output", T.Q8_0, 49152, 576, 1),
]
GEMMA3 = [
    ("gemma3", "attn_q", T.Q5_0, 1024, 640, 18),
    ("gemma3", "attn_k/v", T.Q5_0, 256, 640, 27),
    ("gemma3", "attn_v", T.Q8_0, 256, 640, 9),
    ("gemma3", "attn_output", T.Q4_K, 640, 1024, 18),
    ("gemma3", "ffn_gate/up", T.Q5_0, 2048, 640, 36),
    ("gemma3", "ffn_down", T.Q4_K, 640, 2048, 9),
    ("gemma3", "ffn_down", T.Q6_K, 640, 2048, 9),
    ("gemma3", "output", T.Q8_0, 262144, 640, 1),
]
OTHER = [
    ("-", "", T.Q4_0, 1536, 576, 0),
    ("-", "", T.Q5_1, 1536, 576, 0),
    ("-", "", T.Q8_0, 1536, 576, 0),
    ("-", "", T.Q5_K, 640, 2048, 0),
    ("-", "", T.IQ4_NL, 1536, 576, 0),
    ("-", "", T.MXFP4, 1536, 576, 0),
    ("-", "", T.F16, 1536, 576, 0),
    ("-", "", T.BF16, 1536, 576, 0),
    ("-", "", T.F32, 1536, 576, 0),
]
#: BitNet b1.58 2B's attn_q/attn_output (2560 x 2560) as its ternary types and the block types beside them
BITNET = [("bitnet2b", "attn_q/o", qt, 2560, 2560, 0) for qt in (T.TQ2_0, T.TQ1_0, T.Q4_0, T.Q8_0)]
COLD_BYTES = 160 << 20  # > 4x the 32 MiB L3


def random_weight(qtype: int, n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid raw blocks ``[n_rows, row_bytes]``: random quant bytes, small finite f16 scales."""
    bs, ts = GGML_QUANT_SIZES[T(qtype)]
    nb_ = n_cols // bs
    if qtype in (T.F32, T.F16):
        dt = np.float32 if qtype == T.F32 else np.float16
        return rng.standard_normal((n_rows, n_cols)).astype(dt).view(np.uint8)
    if qtype == T.BF16:
        return (rng.standard_normal((n_rows, n_cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (n_rows, nb_, ts), dtype=np.uint8)
    if qtype == T.MXFP4:  # an E8M0 scale byte: 2^-10 .. 2^-4 (subnormal or huge ones would time something else)
        raw[:, :, 0] = rng.integers(118, 125, (n_rows, nb_))
        return raw.reshape(n_rows, nb_ * ts)

    def f16(off: int, lo: float, hi: float) -> None:
        raw[:, :, off : off + 2] = rng.uniform(lo, hi, (n_rows, nb_, 1)).astype(np.float16).view(np.uint8)

    if qtype in (T.TQ1_0, T.TQ2_0):  # (d last)
        f16(ts - 2, 1e-3, 1e-2)
    elif qtype == T.Q6_K:
        f16(208, 1e-3, 1e-2)
    else:
        f16(0, 1e-3, 1e-2)
        if qtype in (T.Q4_1, T.Q5_1, T.Q4_K, T.Q5_K):
            f16(2, -1e-1, 1e-1)
    return raw.reshape(n_rows, nb_ * ts)


def _best(fn, reps: int, repeats: int = 5) -> tuple[float, float]:
    """Best mean seconds per call over ``repeats`` runs of ``reps`` calls: (wall, this thread's CPU time)."""
    fn(0)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        for i in range(reps):
            fn(i)
        best = min(best, (time.perf_counter() - t) / reps)
        cpu = min(cpu, (time.thread_time() - c) / reps)
    return best, cpu


def bench_matvec(rows, rng, quick: bool) -> float:
    """Print the matvec table; return the estimated matvec ms per token of the model rows."""
    nt = nb.get_num_threads()
    print(f"\nmatvec (decode), {nt} thread(s); GB/s = weight bytes / cold wall time" + ("; cpu: / cold CPU time of this thread" if nt == 1 else ""))
    print(f"{'model':8s} {'tensor':12s} {'type':5s} {'shape':>12s} {'MB':>7s} {'hot us':>9s} {'cold us':>9s} {'GB/s':>6s}" + (f" {'cpu':>6s}" if nt == 1 else ""))
    per_tok = 0.0
    for model, name, qt, n, k, count in rows:
        w0 = random_weight(qt, n, k, rng)
        mb = w0.nbytes / 1e6
        x = rng.standard_normal(k).astype(np.float32)
        out = np.zeros(n, np.float32)
        budget = 0.15 if quick else 0.4  # seconds per measurement
        hot_reps = max(3, int(budget / max(w0.nbytes / 20e9, 2e-6)))
        hot, _ = _best(lambda i: qmatmul.matvec(w0, qt, x, out), hot_reps)
        n_copy = max(1, COLD_BYTES // w0.nbytes)
        ws = [w0] + [w0.copy() for _ in range(n_copy - 1)]
        cold_reps = max(n_copy, int(budget / max(w0.nbytes / 8e9, 2e-6)))
        cold, cpu = _best(lambda i: qmatmul.matvec(ws[i % n_copy], qt, x, out), cold_reps, 3)
        ws.clear()  # (the copies go before the next matrix: the lambda above keeps the list itself)
        per_tok += count * cold
        extra = f" {w0.nbytes / cpu / 1e9:6.2f}" if nt == 1 else ""
        print(f"{model:8s} {name:12s} {T(qt).name:5s} {f'{n}x{k}':>12s} {mb:7.2f} {hot * 1e6:9.1f} {cold * 1e6:9.1f} {w0.nbytes / cold / 1e9:6.2f}" + extra)
    return per_tok * 1e3


def bench_matmul(rows, rng, n_tok: int, quick: bool) -> None:
    """Print the matmul table: the default path (the VNNI int8 GEMM where the host has it), then tile + BLAS."""
    vnni = qmatmul.HAVE_VNNI
    print(f"\nmatmul (prefill), {n_tok} tokens, {nb.get_num_threads()} thread(s); GOP/s = 2 n_tok n_rows n_cols / time")
    print(f"{'model':8s} {'tensor':12s} {'type':5s} {'shape':>12s} {'ms':>9s} {'GOP/s':>8s}" + (f" {'BLAS ms':>9s} {'GOP/s':>8s}" if vnni else "")
          + ("  (int8 GEMM, then tile + BLAS)" if vnni else "  (tile + BLAS: no AVX-512 VNNI here)"))
    for model, name, qt, n, k, _ in rows:
        if n * k > 8_000_000:  # the output layer runs on the last token only
            continue
        w = random_weight(qt, n, k, rng)
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        out = np.zeros((n_tok, n), np.float32)
        line = f"{model:8s} {name:12s} {T(qt).name:5s} {f'{n}x{k}':>12s}"
        for use_vnni in (True, False) if vnni else (False,):
            qmatmul._USE_VNNI = use_vnni
            set_blas_threads(1 if use_vnni else nb.get_num_threads())  # BLAS's spinning pool would slow Numba's
            try:
                dt, _ = _best(lambda i: qmatmul.matmul(w, qt, x, out), 1 if quick else 2, 3)
            finally:
                qmatmul._USE_VNNI = vnni
            line += f" {dt * 1e3:9.2f} {2 * n_tok * n * k / dt / 1e9:8.1f}"
        print(line)


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens for the matmul table")
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--only", choices=["matvec", "matmul"], default=None)
    a = ap.parse_args(argv)
    if a.threads:
        nb.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"numba {nb.__version__}, threading layer {nb.config.THREADING_LAYER}, {nb.get_num_threads()} thread(s); {_load()}")
    if a.only != "matmul":
        s = bench_matvec(SMOLLM2, rng, a.quick)
        g = bench_matvec(GEMMA3, rng, a.quick)
        bench_matvec(OTHER, rng, a.quick)
        bench_matvec(BITNET, rng, a.quick)
        print(f"\nmatvec time per token (cold wall, sum over the layers): smollm2 {s:.2f} ms, gemma3 {g:.2f} ms; {_load()}")
    if a.only != "matvec":
        bench_matmul(SMOLLM2 + GEMMA3, rng, a.tokens, a.quick)


if __name__ == "__main__":
    main()
