"""Launchers for ``qattention.cu``: decode attention over a compressed KV cache, read in place.

The device twin of :func:`kvrun.ops.cpu.qattention.attend_decode_q` (see its
docstring and ``kvq.cuh`` for the code layout).  Shapes (all device arrays)::

    q      [T, n_head, D]            float32, in the cache's (rotated) basis
    qpos   [T]                       int32
    k16    [n_kv, F, D]              uint16 fp16 bits (sinks + residual window)
    v16    [n_kv, F, Dv]             uint16
    pool i: kc [n_kv, Ci, D*w/8], km [n_kv, Ci, D/G, 2], vc, vm  uint8 (Ci may be 0)
    luts   [4, 256]                  float32: klut0, vlut0, klut1, vlut1
    kpos   [P, N]                    int32, -1 = empty; P = 1 or n_kv
    logw   [n_kv, N] or empty        float32 log merge weights added to the logits
    alibi  [n_head] or None          float32 ALiBi slopes: logit += slope * (key_pos - query_pos)
    out    [T, n_head, Dv]           float32
    acc    [n_kv, N] or None         float32: receives (overwritten, not added)
                                     the probabilities summed over each KV
                                     head's query heads and the T queries
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import kernels as K
from .attention import decode_reduce

DECODE_CHUNK = 128  # slots per split: QA_CHUNK in qattention.cu
SHARED_LIMIT = 48 * 1024  # shared memory usable without opting in
STATIC_SHARED = 4 * 4 * 256  # the kernel's on-chip copy of the four scale tables
WIDTHS = (16, 8, 4, 3, 2)


class DevicePool(NamedTuple):
    """One quantized pool's arrays on the device (``cache/pool.py`` layout) and its widths."""

    kc: Any  # [n_kv, C, D*wk/8] uint8
    km: Any  # [n_kv, C, D/G, 2] uint8 ([n_kv, C, 0, 2] at 16 bits)
    vc: Any  # [n_kv, C, Dv*wv/8] uint8
    vm: Any  # [n_kv, C, Dv/G, 2] uint8
    bits_k: int
    bits_v: int


def attend_decode_q(
    q: Any,
    qpos: Any,
    k16: Any,
    v16: Any,
    pool0: DevicePool,
    pool1: DevicePool,
    luts: Any,
    group: int,
    kpos: Any,
    logw: Any,
    window: int,
    scale: float,
    softcap: float,
    out: Any,
    acc: Any | None = None,
    sinks: Any = None,
    alibi: Any = None,
) -> None:
    """Attention of a few queries over the fp16 area and two quantized pools (flash-decoding).

    Parameters
    ----------
    q, qpos, k16, v16, luts, kpos, logw, out
        Device arrays, shapes in the module docstring.
    pool0, pool1 : DevicePool
        The two pools (pool 1 with 0 slots when there is none).
    group : int
        Values per quantization group ``G`` (divides ``D`` and ``Dv``).
    window : int
        Sliding window in tokens (0: global attention).
    scale, softcap : float
        Logit multiplier; soft-capping (0: off), applied before ``logw`` is added.
    acc : device array or None
        ``[n_kv, N]`` float32 to receive the per-slot probabilities, or None to skip.
    sinks : device array or None
        ``[n_head]`` float32 sink logits (gpt-oss: each joins its head's softmax denominator), or None.
    alibi : device array or None
        ``[n_head]`` float32 ALiBi slopes: each logit gets ``slope * (kpos - qpos)``, the slot's stored position (after
        ``logw``), or None.

    Raises
    ------
    ValueError
        A width, or keys too wide for one head's queries and logits in shared memory (past ~11900).
    """
    xp = K.runtime().xp
    T, H, D = q.shape
    n_kv, F, Dv = v16.shape
    C0, C1 = pool0.kc.shape[1], pool1.kc.shape[1]
    N = F + C0 + C1
    gqa = H // n_kv
    P = kpos.shape[0]
    if tuple(kpos.shape) != (P, N) or P not in (1, n_kv):
        raise ValueError(f"kpos {tuple(kpos.shape)} must be [1 or {n_kv}, {N}]")
    for w in (pool0.bits_k, pool0.bits_v, pool1.bits_k, pool1.bits_v):
        if w not in WIDTHS:
            raise ValueError(f"no GPU decode for {w}-bit codes; widths are {WIDTHS}")
    # keys of any width (past QA_MAX_D, 256, in passes: MLA's latent 576, Gemma 4's 512); MLA's one KV head
    # for all the heads takes its queries a block of heads at a time
    n_hb, hb = head_blocks(gqa, D)
    smem = 4 * hb * (D + DECODE_CHUNK)
    use_logw = int(logw.size > 0)
    if use_logw and tuple(logw.shape) != (n_kv, N):
        raise ValueError(f"logw {tuple(logw.shape)} must be [{n_kv}, {N}] or empty")
    if acc is not None and tuple(acc.shape) != (n_kv, N):
        raise ValueError(f"acc {tuple(acc.shape)} must be [{n_kv}, {N}]")
    dummy = None
    if not use_logw or acc is None:
        dummy = xp.zeros(1, np.float32)  # never read: the kernel takes a pointer either way
    n_split = K.cdiv(N, DECODE_CHUNK)
    part_o = xp.empty((T, H, n_split, Dv), np.float32)
    part_m = xp.empty((T, H, n_split), np.float32)
    part_l = xp.empty((T, H, n_split), np.float32)
    scores = xp.empty((T, H, N), np.float32) if acc is not None else dummy
    K.launch(
        "qattn_decode_partial", (n_split, n_kv * n_hb, T), (128,),
        q, qpos, k16, v16,
        pool0.kc, pool0.km, pool0.vc, pool0.vm, pool1.kc, pool1.km, pool1.vc, pool1.vm,
        luts, kpos, logw if use_logw else dummy, part_o, part_m, part_l, scores,
        F, C0, C1, H, n_kv, D, Dv, group, pool0.bits_k, pool0.bits_v, pool1.bits_k, pool1.bits_v,
        P, use_logw, int(acc is not None), window, scale, softcap, q if alibi is None else alibi, int(alibi is not None),
        shared_mem=smem,
    )  # fmt: skip
    decode_reduce(part_o, part_m, part_l, out, sinks)
    if acc is not None:
        K.launch("qattn_decode_probs", (K.cdiv(N, 128), n_kv), (128,), scores, part_m, part_l, acc, part_m if sinks is None else sinks,
                 T, H, n_kv, N, n_split, int(sinks is not None), shared_mem=8 * T * gqa)  # fmt: skip


def head_blocks(gqa: int, D: int) -> tuple[int, int]:
    """(blocks a KV head's ``gqa`` query heads are cut into, heads a block): as few blocks as keep a block's
    queries and logits ([hb, D + DECODE_CHUNK] floats) within shared memory beside the scale tables."""
    fit = (SHARED_LIMIT - STATIC_SHARED) // (4 * (D + DECODE_CHUNK))
    if fit < 1:
        raise ValueError(f"GPU compressed decode attention: keys {D} wide need more shared memory than a block has")
    n_hb = K.cdiv(gqa, fit)
    return n_hb, K.cdiv(gqa, n_hb)


def gather_f16(x16: Any, pool0: DevicePool, pool1: DevicePool, luts: Any, group: int, ids: Any, out: Any, values: bool = False) -> None:
    """Rows ``ids`` of the keys (or ``values``) of every KV head, as fp16 bits, into ``out[:, :len(ids)]``.

    x16: the fp16 area [n_kv, F, Dx]; ids: [n] int32 slot numbers; out:
    [n_kv, stride, Dx] uint16 (stride >= n).  Quantized rows are dequantized,
    fp16 rows copied.
    """
    n_kv, F, Dx = x16.shape
    n = ids.shape[0]
    p0 = (pool0.vc, pool0.vm, pool0.bits_v) if values else (pool0.kc, pool0.km, pool0.bits_k)
    p1 = (pool1.vc, pool1.vm, pool1.bits_v) if values else (pool1.kc, pool1.km, pool1.bits_k)
    lut0, lut1 = (luts[1], luts[3]) if values else (luts[0], luts[2])
    K.launch(
        "qattn_gather_f16", (n, n_kv), (128,),
        x16, p0[0], p0[1], p1[0], p1[1], lut0, lut1, ids, out,
        F, p0[0].shape[1], p1[0].shape[1], Dx, group, p0[2], p1[2], out.shape[1],
    )  # fmt: skip
