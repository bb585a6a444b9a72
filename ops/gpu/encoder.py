"""Launchers for ``encoder.cu``: attention with every query row's scores held whole, without a causal mask over one batch in
float32 (the text encoders', models/bert.py and its family, models/gemma_embedding.py, and T5's cross-attention), or over
T5's plain fp16 ring with its relative-position bias (the decoder's self-attention); and for t5.cu's element-wise ops.

Shapes (host or device arrays; host ones are uploaded and the output written back, ops/gpu/arrays.py): q [Tq, n_head, D],
k [Tk, n_kv, D], v [Tk, n_kv, Dv], bias [n_head or 1, Tq, Tk] or [Tq, Tk] (shared by the heads) or None, out [Tq, n_head, Dv].  A block keeps a query row's
Tk scores in shared memory, so a batch fits while :func:`fits` says so (48 KiB, the default a launch may take: 12,000
keys less the head size); beyond that the caller attends on the host.
"""

from __future__ import annotations

from typing import Any

from . import kernels as K
from .arrays import device_out, to_device

SHARED_FLOATS = 48 * 1024 // 4  #: the floats of shared memory a launch takes without opting in to more


def fits(n_keys: int, head_dim: int) -> bool:
    """Whether a row of ``n_keys`` scores and its query of ``head_dim`` fit one block's shared memory."""
    return n_keys + head_dim + 32 <= SHARED_FLOATS


def attend_full(q: Any, k: Any, v: Any, bias: Any, scale: float, out: Any) -> None:
    """out = softmax(q k^T * scale + bias) v, every query row over every key row (grouped heads share a K/V head).
    A launch's grid.y is the heads: at most ``K.MAX_GRID_Y`` (a caller folding windows into heads cuts them into runs)."""
    Tq, H, D = q.shape
    Tk, n_kv, Dv = v.shape
    if H > K.MAX_GRID_Y:
        raise ValueError(f"attention over {H} heads in one launch: at most {K.MAX_GRID_Y} (CUDA's grid.y)")
    qd, kd, vd = to_device(q), to_device(k), to_device(v)
    if bias is not None and tuple(bias.shape[-2:]) != (Tq, Tk):  # (a bias broadcast over the queries or the keys: spelt out)
        xp = K.runtime().xp
        bias = xp.ascontiguousarray(xp.broadcast_to(to_device(bias), (bias.shape[0] if bias.ndim == 3 else 1, Tq, Tk)))
    bd = qd if bias is None else to_device(bias)
    bias_hs = 0 if bias is None or bias.ndim < 3 or bias.shape[0] == 1 else Tq * Tk  # (a mask shared by the heads: stride 0)
    with device_out(out) as od:
        K.launch("attn_full_f32", (Tq, H), (128,), qd, kd, vd, bd, qd, qd, od, Tq, Tk, H, n_kv, D, Dv, scale, int(bias is not None), bias_hs,
                 0, shared_mem=4 * (Tk + D + 32))  # fmt: skip  (bias mode 1 or 0; kpos, qpos: a batch reads none)


def attend_relative_ring(q: Any, k: Any, v: Any, kpos: Any, qpos: Any, n_slots: int, bias_d: Any, out: Any) -> None:
    """T5's decoder self-attention (encoder.cu's kernel on the ring, bias mode 2): the device queries ``q`` [T, n_head, D]
    at device positions ``qpos`` over the first ``n_slots`` slots of a plain fp16 ring (k [n_kv, cap, D], v [n_kv, cap,
    Dv], ``kpos`` [cap]), unscaled, plus ``bias_d`` [n_head, n_dist] of each query-minus-key distance (the last entry for
    longer ones), causal; into the device ``out`` [T, n_head, Dv].  Everything it reads is on the device: a decode step's
    launch a CUDA graph holds."""
    T, H, D = q.shape
    n_kv, cap, Dv = v.shape
    if not fits(n_slots, D):
        raise ValueError(f"t5 on the GPU attends over at most {SHARED_FLOATS - D - 32} of its tokens")
    K.launch("attn_full_f32", (T, H), (128,), q, k, v, bias_d, kpos, qpos, out, T, n_slots, H, n_kv, D, Dv, 1.0, 2, bias_d.shape[1],
             cap, shared_mem=4 * (n_slots + D + 32))  # fmt: skip


def _elementwise(kernel: str, out: Any, *xs: Any) -> None:
    n = out.size
    K.launch(kernel, (min(K.cdiv(n, 256), 8192),), (256,), *xs, out, n)


def gelu_f16(x: Any, out: Any) -> None:
    """out = ggml's CPU GELU of x (models/bert.py ``gelu``: the float16 table) on device arrays; out may be x."""
    _elementwise("gelu_f16_f32", out, x)


def gelu_f16_glu(g: Any, u: Any, out: Any) -> None:
    """out = gelu_f16(g) * u on device arrays (T5 v1.1's gated FFN); out may be g."""
    _elementwise("gelu_f16_glu_f32", out, g, u)


def relu(x: Any, out: Any) -> None:
    """out = max(x, 0) on device arrays; out may be x."""
    _elementwise("relu_f32", out, x)
