"""Launching recurrent.cu: RWKV-6/7's token shift, WKV recurrences and the elementwise work around them, and LFM2's
short gated convolution, on the device (``models/gpu_recurrent.py`` runs the layers, ``cache/gpu_recurrent.py`` keeps
the state).

Every input is a device array the kernels read in place; the layers' small host vectors (the mus, the LoRAs' biases,
the group norms) are uploaded once (:data:`CONSTS`), so a captured decode step uploads nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .arrays import ConstCache

MAX_HEAD = 128  # WKV_MAX_HEAD in recurrent.cu: the head size a block of wkv_f32 keeps
ACTS = {None: 0, "tanh": 1, "sigmoid": 2, "silu": 3}  # rec_act's codes

CONSTS = ConstCache()  #: device copies of the layers' host vectors, by identity


def const(a: np.ndarray) -> Any:
    """The device copy of a layer's host vector (uploaded on first use)."""
    return CONSTS.get(a)


def lerp(xn: Any, ring: Any, ring_col: int, n_ring: int, pos: Any, mu: Any, out: Any, add: Any = None) -> None:
    """``out[j, :T]`` = ``xn + (prev - xn) * (mu[j] + add[j, :T])`` (RWKV's token shift) for ``xn`` [T, n], ``prev`` the
    row before each (the ring's columns ``ring_col ..`` at row ``(pos[0] - 1) % n_ring`` before the chunk); ``out``
    (and ``add``, which may be it) a whole [m, n_batch, n] scratch (a captured step keeps its pointer)."""
    T, n = xn.shape
    m = out.shape[0]
    if T:
        K.launch("rwkv_lerp_f32", K.ew_grid(m * T * n), (K.EW_BLOCK,), xn, ring, pos, mu, out if add is None else add, out,
                 T, n, m, ring.shape[1], ring_col, n_ring, int(add is not None), out.shape[1] * n)  # fmt: skip


def act_split(h: Any, out: Any, act: str | None) -> None:
    """``out[j, :T]`` = ``act`` of ``h`` [T, m * E]'s m column blocks, ``out`` a whole [m, n_batch, E] scratch (or
    ``h[None]``: in place)."""
    m, E = out.shape[0], out.shape[2]
    T = h.shape[0]
    if T:
        K.launch("rwkv_act_split_f32", K.ew_grid(m * T * E), (K.EW_BLOCK,), h, out, T, E, m, ACTS[act], out.shape[1] * E)


def decay(x: Any, base: Any, version: int) -> None:
    """In place: RWKV-7's ``exp(-e^-0.5 sigmoid(x + base))`` or RWKV-6's ``exp(-exp(x + base))``."""
    total = int(np.prod(x.shape))
    if total:
        K.launch("rwkv_decay_f32", K.ew_grid(total), (K.EW_BLOCK,), x, base, x.shape[-1], total, version)


def value_residual(v: Any, v_first: Any, lo: Any, v0: Any) -> None:
    """In place: ``v += (v_first - v) * sigmoid(lo + v0)`` (RWKV-7's layers after the first)."""
    total = int(np.prod(v.shape))
    if total:
        K.launch("rwkv7_vres_f32", K.ew_grid(total), (K.EW_BLOCK,), v, v_first, lo, v0, v.shape[-1], total)


def key_prep(k: Any, lo: Any, a0: Any, k_k: Any, k_a: Any, x: Any, H: int, N: int) -> None:
    """RWKV-7's key ``k (1 + (iclr - 1) k_a)`` in place and the recurrence's ``a = -kk``, ``b = kk iclr`` into the
    columns 4 C and 5 C of ``x`` [T, stride] (``kk`` the L2-normed removal key per head, ``iclr = sigmoid(lo + a0)``)."""
    T = k.shape[0]
    if T:
        K.launch("rwkv7_kprep_f32", (T * H,), (N,), k, lo, a0, k_k, k_a, x, H, N, x.shape[1])


def pack(src: Any, x: Any, col0: int, m: Any = None, mode: int = 0) -> None:
    """``x[:, col0 : col0 + n]`` = ``src`` [T, n] (mode 0), ``src * m`` (1), or ``src *= 1 - m`` then it (2)."""
    T, n = src.shape
    if T:
        K.launch("rwkv_pack_f32", K.ew_grid(T * n), (K.EW_BLOCK,), src, src if m is None else m, x, T, n, x.shape[1], col0, mode)


def repeat_heads(src: Any, dst: Any, kv_heads: int, N: int) -> None:
    """``dst`` [T, H * N]: each of ``src``'s kv_heads heads read by H / kv_heads consecutive heads (ggml_repeat)."""
    T, n = dst.shape
    if T:
        K.launch("rwkv_repeat_heads_f32", K.ew_grid(T * n), (K.EW_BLOCK,), src, dst, T, n // N, kv_heads, N)


def bonus(y: Any, r: Any, k: Any, v: Any, u: Any, N: int, scale: float = 1.0) -> None:
    """In place per head: ``y = (y + v * sum(r * k * u)) * scale`` (u None: ones)."""
    T, n = y.shape
    if T:
        K.launch("rwkv_bonus_f32", (T * (n // N),), (N,), y, r, k, v, y if u is None else u, n // N, N, scale, int(u is not None))


def mul_act(y: Any, g: Any, act: str | None) -> None:
    """In place: ``y *= act(g)``."""
    total = int(np.prod(y.shape))
    if total:
        K.launch("rwkv_mul_act_f32", K.ew_grid(total), (K.EW_BLOCK,), y, g, total, ACTS[act])


def wkv(state: Any, x: Any, y: Any, version: int, ck: Any, n_ck: int, ck_buf: Any) -> None:
    """WKV-7 (WKV-6) of ``y``'s T tokens in place on ``state`` [H, N, N]: ``x`` [T, stride] their r, w, k, v (a, b)
    at columns 0, C, 2 C, ...; ``ck`` holds ``n_ck`` (tokens, slot) pairs of the copies to make into ``ck_buf``."""
    H, N, _ = state.shape
    T = y.shape[0]
    if N > MAX_HEAD:
        raise ValueError(f"wkv: heads of {N} exceed the kernel's {MAX_HEAD}")
    if T:
        K.launch("wkv_f32", (H,), (N,), state, x, y, ck, ck_buf, T, H, N, x.shape[1], version, n_ck)


def shortconv(bcx: Any, ring: Any, pos: Any, w: Any, y: Any) -> None:
    """LFM2's ``y`` [T, n] = ``C *`` the causal depthwise convolution of ``B * x`` (``bcx`` [T, 3 n] the in-projection's
    rows, the positions before the chunk from ``ring`` [n_ring, n] at row ``p % n_ring``); then the chunk's last
    inputs into the ring."""
    T, n = y.shape
    n_ring = ring.shape[0]
    keep = min(T, n_ring)
    if T:
        K.launch("shortconv_f32", K.ew_grid(T * n), (K.EW_BLOCK,), bcx, ring, pos, w, y, T, n, w.shape[1], n_ring)
        K.launch("shortconv_store_f32", K.ew_grid(keep * n), (K.EW_BLOCK,), bcx, ring, pos, T, keep, n, n_ring)
