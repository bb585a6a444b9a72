"""One decode step's bookkeeping of a policy-free compressed layer, in one Numba call.

In steady state a decode step of :class:`~kvrun.cache.compressed.CompressedLayerCache`
(no eviction policy, no merge log-weights, pools calibrated) does the same
few things every token: rotate the new value, move the new key into the cache
basis, put both in the fp16 residual window — spilling the window's oldest
token into the quantized pool when it is full — and move the queries into the
cache basis.  Done as ~20 numpy calls that cost about 0.09 ms a layer-step,
as much as the 2-bit attention itself reads at 4096 tokens on Gemma 3; here it
is one call.

The rotations are the orthonormal Sylvester-Hadamard matrix
(:func:`kvrun.cache.quant.hadamard`; block-diagonal where the head is no power of two), applied as a fast
Walsh-Hadamard transform: ``x @ H`` in ``D log D`` adds instead of a ``D x D`` product.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..ops.cpu.arraycopy import copy_into
from ..ops.cpu.f16 import f16_to_f32, f32_to_f16
from ..ops.cpu.hadamard import fwht
from ..ops.cpu.parallel import EXACT_JIT
from ..ops.cpu.qattention import _attend_decode_q, dequant_row, key_similarity
from .policies.base import INSERT_POS, STEP_DECAY, STEP_RESET
from .policies.snapkv import NO_ORDER, pooled_victim
from .quant import quantize_row

_JIT = EXACT_JIT

@nb.njit(**_JIT)
def fwht_rows(x: np.ndarray, out: np.ndarray) -> None:
    """``out[t, h] = x[t, h] @ H`` for x, out: [T, H, D] float32."""
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            row = out[t, h]
            copy_into(row, x[t, h])
            fwht(row)


def fwht_copy(x: np.ndarray) -> np.ndarray:
    """``x @ H`` over the last axis, as a new array of x's dtype (float32 or float64), x left as it is."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    fwht_rows(x.reshape(-1, 1, x.shape[-1]), out.reshape(-1, 1, x.shape[-1]))
    return out


@nb.njit(inline="always", **_JIT)
def _pick(prow: np.ndarray, lo: int, cap: int, rank: np.ndarray) -> tuple[int, bool]:
    """The slot of a pool ``[lo, lo + cap)`` to fill, from its positions ``prow``: the first empty one,
    else the least important by ``rank`` ([cap]), the oldest on ties (``Policy.victim``; ``kvquant.cu``
    kq_pick).  Returns (pool-local slot, was empty).  Without ranks: :func:`_first_empty_or_oldest`."""
    bi, br, bp = -1, np.float32(0.0), 0
    for s in range(cap):
        ps = prow[lo + s]
        if ps < 0:
            return s, True
        r = rank[s]
        if bi < 0 or r < br or (r == br and ps < bp):
            bi, br, bp = s, r, ps
    return bi, False


@nb.njit(inline="always", **_JIT)
def _first_empty_or_oldest(prow: np.ndarray) -> tuple[int, bool]:
    """A pool's slot to fill without ranks: the first empty slot, else the oldest, as the first slot holding the
    least of ``max(position, -1)``.  Two passes that vectorise, where the one-pass compare chain
    took ~5 ns a slot: a full 3500-slot pool cost a decode step 17 us a layer to find its oldest."""
    m = np.int32(2**31 - 1)
    for s in range(prow.shape[0]):
        m = min(m, max(prow[s], np.int32(-1)))
    for s in range(prow.shape[0]):
        if max(prow[s], np.int32(-1)) == m:
            return s, m < 0
    return 0, False  # (not reached: cap > 0)


@nb.njit(inline="always", **_JIT)
def _take_slot(pos: np.ndarray, lo: int, cap: int, free: np.ndarray) -> int:
    """A slot of the pool at ``[lo, lo + cap)`` for all heads (positions shared, row 0): a never-used
    one, else the oldest (as ``CompressedLayerCache._take_shared``); returns its index within the pool."""
    s, empty = _first_empty_or_oldest(pos[0, lo : lo + cap])
    if empty:
        free[0] -= 1
    return s


@nb.njit(**_JIT)
def window_slot(pos: np.ndarray, S: int, F: int) -> tuple[int, bool]:
    """The residual-window slot of ``[S, F)`` a new token takes: the first empty one, else the oldest.

    pos: [P, N] int32 (row 0 read: every row holds the same window).  Returns
    (slot, full): ``full`` when the slot's token must first spill to the pools.
    """
    oldest = S
    for s in range(S, F):
        ps = pos[0, s]
        if ps < 0:
            return s, False
        if ps < pos[0, oldest]:
            oldest = s
    return oldest, True


@nb.njit(**_JIT)
def plan_push(pos: np.ndarray, p: int, S: int, F: int, lo: int, cap: int, free: np.ndarray, lo1: int, cap1: int, free1: np.ndarray) -> tuple[int, int, int]:
    """Choose the slots of one decode token and move the shared positions; no K/V is touched.

    Returns (j, jq, jc): the new token goes to fp16 slot ``j`` (a free window
    slot, else the oldest); ``jq >= 0``: slot j's old token first spills into
    pool 0 slot ``jq`` (pool-local); ``jc >= 0``: pool 0 was full, so that
    slot's old token first cools into pool 1 slot ``jc``.  ``pos`` [1, N] and
    the free counts are updated as if the moves were done: the data moves
    (:func:`decode_push` here, ``kvquant.cu`` on the GPU) read only slots.
    """
    j, full = window_slot(pos, S, F)
    jq = -1
    jc = -1
    if full:
        if cap > 0:
            jq = _take_slot(pos, lo, cap, free)
            if cap1 > 0 and pos[0, lo + jq] >= 0:
                jc = _take_slot(pos, lo1, cap1, free1)
                pos[0, lo1 + jc] = pos[0, lo + jq]
            pos[0, lo + jq] = pos[0, j]
    pos[0, j] = p
    return j, jq, jc


@nb.njit(inline="always", **_JIT)
def chunk_floor(p: int, chunk: int) -> int:
    """The first position of the chunk of ``chunk`` positions holding ``p`` (Llama 4's chunked attention,
    ``LayerSpec.window`` -chunk), 0 where ``chunk`` is 0: held positions below it belong to an older chunk,
    which no query from ``p`` on sees again, so a policy layer's victims are those first (:func:`_victim`,
    :func:`_policy_token`, ``kvquant.cu`` kq_pick)."""
    return p - p % chunk if chunk > 0 else 0


@nb.njit(inline="always", **_JIT)
def spills(pos: np.ndarray, j: int, p: int, chunk: int) -> bool:
    """Whether the token in full fp16 window slot ``j`` moves to the pools as a token at ``p`` takes its place: always,
    but on a chunked layer (``chunk`` > 0) with a policy, where an older chunk's token is dropped instead (kept, it
    would take a pool slot from the current chunk's tokens)."""
    return chunk == 0 or pos[0, j] >= chunk_floor(p, chunk)


@nb.njit(**_JIT)
def plan_policy_tokens(pos: np.ndarray, ppos: np.ndarray, S: int, F: int, free: np.ndarray, free1: np.ndarray, cap1: int, chunk: int = 0) -> np.ndarray:
    """The host's part of tokens (positions ``ppos`` [T]) going in turn into a layer with an eviction policy,
    whose pool slots the device picks: each one's fp16 window slot j (:func:`window_slot`) and whether the
    token there spills, [T, 2] int32.  The window's positions (every row of ``pos`` [n_kv, N]) and each
    head's empty-slot counts follow: a spill fills a head's empty pool-0 slot where it has one, else, the
    victim demoted, an empty pool-1 slot (``cap1`` > 0) where it has one.  ``chunk`` > 0: Llama 4's chunks
    (:func:`spills`), a window token of an older chunk than the new one's is dropped, not spilled."""
    N = pos.shape[1]
    out = np.empty((ppos.shape[0], 2), np.int32)
    for t in range(ppos.shape[0]):
        j, full = window_slot(pos, S, F)
        spill = full and N > F and spills(pos, j, ppos[t], chunk)
        if spill:
            for h in range(free.shape[0]):
                if free[h] > 0:
                    free[h] -= 1
                elif cap1 > 0 and free1[h] > 0:
                    free1[h] -= 1
        pos[:, j] = ppos[t]
        out[t, 0] = j
        out[t, 1] = spill
    return out


@nb.njit(**_JIT)
def plan_chunk(pos: np.ndarray, ppos: np.ndarray, S: int, F: int, lo: int, cap: int, free: np.ndarray, lo1: int, cap1: int, free1: np.ndarray) -> np.ndarray:
    """:func:`plan_push` for each token of a chunk in turn (positions ``ppos`` [T]); returns (j, jq, jc) per token, [T, 3] int32."""
    out = np.empty((ppos.shape[0], 3), np.int32)
    for t in range(ppos.shape[0]):
        j, jq, jc = plan_push(pos, np.int64(ppos[t]), S, F, lo, cap, free, lo1, cap1, free1)  # (int32: a compile of its own)
        out[t, 0], out[t, 1], out[t, 2] = j, jq, jc
    return out


# A pool's arguments travel as one tuple (Numba takes heterogeneous tuples), in this order:
#   (lo, free, kc, km, vc, vm, bits_k, bits_v, klut, vlut, clips_k, clips_v)
# lo: its first slot in the layer's numbering; free: [P] its never-used slots per position row;
# kc/km/vc/vm: codes and meta [n_kv, C, ...]; luts and clips as kvrun.cache.quant.quantize_row takes
# them (``CompressedLayerCache._pool_args``).  Pool 1 has C = 0 when there is none.
@nb.njit(**_JIT)
def decode_push(q: np.ndarray, k: np.ndarray, v: np.ndarray, p: int, rot_k: bool, rot_v: bool, t_k: np.ndarray, mu: np.ndarray,
                k16: np.ndarray, v16: np.ndarray, pos: np.ndarray, S: int, F: int, G: int, pool0: tuple, pool1: tuple,
                tmp: np.ndarray, qr: np.ndarray) -> None:  # fmt: skip
    """Store one token and move its queries into the cache basis.

    q: [n_head, D], k: [n_kv, D], v: [n_kv, Dv] float32 in the model's basis;
    p: its position (>= S).  The cache basis: keys ``(k * t_k) @ H - mu``,
    values ``v @ H``, queries ``(q / t_k) @ H`` (``H`` only where ``rot_*``);
    t_k, mu: [n_kv, D] float32.  k16/v16: [n_kv, F, D/Dv] uint16 fp16 area
    (sinks then the residual window ``[S, F)``); pos: [1, N] int32 shared
    positions; pool0, pool1: the pools' tuples (above; G values a group): with
    a warm tier, pool 0 holds the newest quantized tokens and, when it is
    full, its oldest token is re-quantized into pool 1 to make room; tmp:
    [2G] int32; qr: [n_head, D] float32 output.
    """
    n_kv, D = k.shape
    kf = np.empty(D, np.float32)
    vf = np.empty(v.shape[1], np.float32)
    j, jq, jc = _plan(pos, np.int64(p), S, F, pool0, pool1)  # (decode_step's positions are int32, push_tokens' int64)
    for h in range(n_kv):
        _move_token(h, j, jq, jc, k16, v16, G, pool0, pool1, kf, vf, tmp)
        _new_token(h, j, q, k, v, rot_k, rot_v, t_k, mu, k16, v16, qr, kf, vf)


@nb.njit(**_JIT)
def decode_step(q: np.ndarray, k: np.ndarray, v: np.ndarray, qpos: np.ndarray, rot_k: bool, rot_v: bool, t_k: np.ndarray, mu: np.ndarray,
                k16: np.ndarray, v16: np.ndarray, pos: np.ndarray, S: int, F: int, G: int, pool0: tuple, pool1: tuple,
                tmp: np.ndarray, qr: np.ndarray, logw: np.ndarray, window: int, scale: float, softcap: float,
                o: np.ndarray, out: np.ndarray, s_all: np.ndarray, split_for: int, int_keys: bool, sink_logits: np.ndarray,
                alibi: np.ndarray) -> None:  # fmt: skip
    """A whole steady-state decode step in one call: each token stored by :func:`decode_push`,
    then the step's queries attend (``attend_decode_q``'s kernel) and, with ``rot_v``, the
    output is rotated back.  Three calls and their Python between cost ~25 us a layer-step,
    as much as the 4-bit attention over a few hundred tokens.

    q: [T, n_head, D], k: [T, n_kv, D], v: [T, n_kv, Dv] float32; qpos: [T] int32;
    qr: [T, n_head, D] scratch for the rotated queries; logw: merge log-weights or [0, 0];
    o: [T, n_head, Dv] attention output in the cache basis (``out`` itself without
    ``rot_v``); out: [T, n_head, Dv]; s_all: [n_kv, gqa, N] scratch; int_keys, sink_logits, alibi: as ``attend_decode_q``'s
    (sink_logits, alibi empty: none).
    The rest as :func:`decode_push`.
    """
    for t in range(q.shape[0]):
        decode_push(q[t], k[t], v[t], qpos[t], rot_k, rot_v, t_k, mu, k16, v16, pos, S, F, G, pool0, pool1, tmp, qr[t])
    kc, km, vc, vm, bits_k, bits_v, klut, vlut = pool0[2:10]
    kc1, km1, vc1, vm1, bits_k1, bits_v1, klut1, vlut1 = pool1[2:10]
    no_probs = np.empty((0, 0), np.float32)
    _attend_decode_q(qr, qpos, k16, v16, kc, km, vc, vm, bits_k, bits_v, kc1, km1, vc1, vm1, bits_k1, bits_v1,
                     klut, vlut, klut1, vlut1, G, pos, logw, window, scale, softcap, o, s_all, no_probs, split_for, int_keys,
                     sink_logits, alibi)  # fmt: skip
    if rot_v:
        fwht_rows(o, out)


@nb.njit(inline="always", **_JIT)
def _plan(pos, p, S, F, pool0, pool1):
    """:func:`plan_push` with the pools' tuples."""
    return plan_push(pos, p, S, F, pool0[0], pool0[2].shape[1], pool0[1], pool1[0], pool1[2].shape[1], pool1[1])


# The helpers of the one-call steps below are plain calls, not inline="always": Numba inlines by
# copying the callee's IR block by block, each copy carrying the function's whole scope, and
# inlining these five took ~6 s of a first --kv-bits 2 run.  Their flags are the callers' (_JIT is
# EXACT_JIT here), so they compute what the inlined code did, bit for bit.
@nb.njit(**_JIT)
def dequant_pair(kc, km, klut, bits_k, vc, vm, vlut, bits_v, G, kf, vf) -> None:
    """One slot's key and value rows dequantized as the one-call steps here read them (and ``Pool.read_row``)."""
    dequant_row(kc, km, klut, bits_k, G, kf)
    dequant_row(vc, vm, vlut, bits_v, G, vf)


@nb.njit(**_JIT)
def _move_token(h, j, jq, jc, k16, v16, G, pool0, pool1, kf, vf, tmp):
    """Head ``h``'s data moves before a new token takes fp16 slot ``j`` (positions apart).

    jc >= 0: pool 0 slot jq's token is re-quantized into pool 1 slot jc (a
    warm tier's cooling, a policy's demotion); jq >= 0: fp16 slot j's token is
    quantized into pool 0 slot jq.  kf, vf: [D], [Dv] float32 scratch.
    """
    kc, km, vc, vm, bits_k, bits_v, klut, vlut, clips_k, clips_v = pool0[2:]
    kc1, km1, vc1, vm1, bits_k1, bits_v1, klut1, vlut1, clips_k1, clips_v1 = pool1[2:]
    if jc >= 0:
        dequant_pair(kc[h, jq], km[h, jq], klut, bits_k, vc[h, jq], vm[h, jq], vlut, bits_v, G, kf, vf)
        quantize_row(kf, bits_k1, G, klut1, clips_k1, kc1[h, jc], km1[h, jc], tmp)
        quantize_row(vf, bits_v1, G, vlut1, clips_v1, vc1[h, jc], vm1[h, jc], tmp)
    if jq >= 0:
        for d in range(kf.shape[0]):
            kf[d] = f16_to_f32(k16[h, j, d])
        for d in range(vf.shape[0]):
            vf[d] = f16_to_f32(v16[h, j, d])
        quantize_row(kf, bits_k, G, klut, clips_k, kc[h, jq], km[h, jq], tmp)
        quantize_row(vf, bits_v, G, vlut, clips_v, vc[h, jq], vm[h, jq], tmp)


@nb.njit(**_JIT)
def _new_token(h, j, q, k, v, rot_k, rot_v, t_k, mu, k16, v16, qr, kf, vf):
    """Head ``h``'s new key ``(k t_k) H - mu`` and value ``v H`` into fp16 slot ``j``; its queries ``(q / t_k) H`` into qr."""
    _store_token(h, j, k, v, rot_k, rot_v, t_k, mu, k16, v16, kf, vf)
    _head_queries(h, q, t_k, rot_k, qr)


@nb.njit(**_JIT)
def _head_queries(h, q, t_k, rot_k, qr):
    """The queries of KV head ``h`` into the cache basis: ``(q / t_k) H`` into qr [n_head, D]."""
    n_kv, D = t_k.shape
    gqa = q.shape[0] // n_kv
    for i in range(gqa):
        r = qr[h * gqa + i]
        for d in range(D):
            r[d] = q[h * gqa + i, d] / t_k[h, d]
        if rot_k:
            fwht(r)


@nb.njit(**_JIT)
def _store_token(h, j, k, v, rot_k, rot_v, t_k, mu, k16, v16, kf, vf):
    """Head ``h``'s new key ``(k t_k) H - mu`` and value ``v H`` into fp16 slot ``j``."""
    D = k.shape[1]
    Dv = v.shape[1]
    for d in range(D):
        kf[d] = k[h, d] * t_k[h, d]
    if rot_k:
        fwht(kf)
    for d in range(D):
        k16[h, j, d] = f32_to_f16(kf[d] - mu[h, d])
    for d in range(Dv):
        vf[d] = v[h, d]
    if rot_v:
        fwht(vf)
    for d in range(Dv):
        v16[h, j, d] = f32_to_f16(vf[d])


@nb.njit(**_JIT)
def push_tokens(k: np.ndarray, v: np.ndarray, ppos: np.ndarray, rot_k: bool, rot_v: bool, t_k: np.ndarray, mu: np.ndarray,
                k16: np.ndarray, v16: np.ndarray, pos: np.ndarray, S: int, F: int, G: int, pool0: tuple, pool1: tuple,
                tmp: np.ndarray) -> None:  # fmt: skip
    """A prefill chunk's tokens, in order, each stored as :func:`decode_push` stores one (no queries).

    k: [T, n_kv, D], v: [T, n_kv, Dv] float32 in the model's basis; ppos: [T]
    their positions (each >= S); the rest as :func:`decode_push`.  The CPU's
    twin of ``kvquant.cu`` kv_push_tokens: one call a chunk instead of a
    Python step per token.
    """
    T, n_kv, D = k.shape
    kf = np.empty(D, np.float32)
    vf = np.empty(v.shape[2], np.float32)
    for t in range(T):
        j, jq, jc = _plan(pos, ppos[t], S, F, pool0, pool1)
        for h in range(n_kv):
            _move_token(h, j, jq, jc, k16, v16, G, pool0, pool1, kf, vf, tmp)
            _store_token(h, j, k[t], v[t], rot_k, rot_v, t_k, mu, k16, v16, kf, vf)


# ----------------------------------------------------------------- with an eviction policy
@nb.njit(**_JIT)
def _merge(h, v, prow, G, pool, mode, threshold, logw, score, folds, n_fold, kf, vf, kt, vt, sims, tmp):
    """Fold head ``h``'s token in slot ``v`` of ``pool`` (pool-local; the pool's tuple starts with its first slot) into the
    kept token of that pool whose key is most similar, when at least ``threshold``
    (cache/merge.py ``Merger.evict``; ``kvquant.cu`` kq_merge).  mode 1: mean, 2: KeepKV
    (``logw`` [n_kv, N]; ``score``: the policy's, or [0, 0] when it has none); ``folds``:
    a tuple of [n_kv, N] arrays, the first ``n_fold`` add the victim's entry into the target's."""
    lo = pool[0]
    kc, km, vc, vm, bits_k, bits_v, klut, vlut, clips_k, clips_v = pool[2:]
    C = kc.shape[1]
    D, Dv = kf.shape[0], vf.shape[0]
    dequant_pair(kc[h, v], km[h, v], klut, bits_k, vc[h, v], vm[h, v], vlut, bits_v, G, kf, vf)
    key_similarity(kf, kc, km, klut, bits_k, G, h, sims)  # the host path's function: the same target on ties
    t, st = -1, np.float32(-np.inf)
    for s in range(C):
        if s != v and prow[lo + s] >= 0 and (t < 0 or sims[s] > st):
            t, st = s, sims[s]
    if t < 0 or not st >= threshold:
        return  # nothing similar enough: dropped
    dequant_pair(kc[h, t], km[h, t], klut, bits_k, vc[h, t], vm[h, t], vlut, bits_v, G, kt, vt)
    je, jt = lo + v, lo + t
    if mode == 1:
        w = np.float32(st)
        for d in range(D):
            kt[d] = (kt[d] + w * kf[d]) / (np.float32(1.0) + w)
        for d in range(Dv):
            vt[d] = (vt[d] + w * vf[d]) / (np.float32(1.0) + w)
    else:
        ne, nt = math.exp(float(logw[h, je])), math.exp(float(logw[h, jt]))
        ae, at = ne, nt
        if score.shape[0] > 0:
            ae *= max(float(score[h, je]), 1e-6)
            at *= max(float(score[h, jt]), 1e-6)
        we, wt = np.float32(ae / (ae + at)), np.float32(at / (ae + at))
        for d in range(D):
            kt[d] = wt * kt[d] + we * kf[d]
        for d in range(Dv):
            vt[d] = wt * vt[d] + we * vf[d]
        logw[h, jt] = np.float32(math.log(ne + nt))
    quantize_row(kt, bits_k, G, klut, clips_k, kc[h, t], km[h, t], tmp)
    quantize_row(vt, bits_v, G, vlut, clips_v, vc[h, t], vm[h, t], tmp)
    for i in range(n_fold):
        folds[i][h, jt] += folds[i][h, je]


@nb.njit(inline="always", **_JIT)
def _follow(a, h, j, jq, jc, lo, lo1):
    """Per-slot state [n_kv, N] follows head ``h``'s tokens (``Policy.move``): jc <- jq, jq <- j."""
    if jc >= 0:
        a[h, lo1 + jc] = a[h, lo + jq]
    if jq >= 0:
        a[h, lo + jq] = a[h, j]


def ranking_scratch(n_kv: int, C0: int, C1: int, pool_width: int) -> tuple:
    """Where :func:`policy_push` and :func:`policy_push_tokens` pick victims, kept by the layer from call
    to call: (victim0, victim1 [n_kv] int64, then each pool's position order and the positions it is
    of, ``snapkv.pooled_victim``'s, [n_kv, 0] unless ``pool_width`` > 0: order0, prev0, order1, prev1).
    A decode step moves one or two slots of a pool, so its order is repaired, not sorted again."""
    k0, k1 = (C0, C1) if pool_width > 0 else (0, 0)
    return (
        np.zeros(n_kv, np.int64), np.zeros(n_kv, np.int64),
        np.empty((n_kv, k0), np.int64), np.full((n_kv, k0), NO_ORDER, np.int32),
        np.empty((n_kv, k1), np.int64), np.full((n_kv, k1), NO_ORDER, np.int32),
    )  # fmt: skip


@nb.njit(**_JIT)
def _spill_victims(pos, pool0, pool1, state, pool_width, ranking, floor=0) -> None:
    """Each head's slot (pool-local) that a spilling token takes in pool 0, and, where that holds a
    token, the one of pool 1 that token is demoted to: the first empty slot, else the least
    important by the policy's ranks (``Policy.rank_rows``: ``state[0]``, max-pooled over
    ``pool_width`` neighbours in position order when > 0), the oldest on ties (``Policy.victim``;
    ``kvquant.cu`` kq_pick), into ranking's victim0 / victim1.  The ranks are computed only where a
    head has no empty slot (while the pools fill, SnapKV's pooling had cost 3.5 ms a layer-chunk).  ``floor`` > 0
    (:func:`chunk_floor`): a pool's oldest token, where it is below, goes first, whatever its rank."""
    lo, lo1 = pool0[0], pool1[0]
    C0, C1 = pool0[2].shape[1], pool1[2].shape[1]
    free0, free1 = pool0[1], pool1[1]
    v0, v1, order0, prev0, order1, prev1 = ranking
    s = state[0]
    for h in range(free0.shape[0]):
        prow = pos[h]
        v0[h] = _victim(prow, lo, C0, s[h], free0[h] > 0, pool_width, order0, prev0, h, floor)
        if C1 > 0 and free0[h] == 0:
            v1[h] = _victim(prow, lo1, C1, s[h], free1[h] > 0, pool_width, order1, prev1, h, floor)


@nb.njit(inline="always", **_JIT)
def _victim(prow, lo, cap, srow, has_empty, pool_width, order, prev, h, floor) -> int:
    """:func:`_spill_victims` for one head and pool ``[lo, lo + cap)``."""
    if has_empty:
        return _first_empty_or_oldest(prow[lo : lo + cap])[0]
    if floor > 0:  # an older chunk's tokens are the oldest: the oldest goes, where it is one
        s = _first_empty_or_oldest(prow[lo : lo + cap])[0]
        if prow[lo + s] < floor:
            return s
    if pool_width > 0:
        return pooled_victim(srow[lo : lo + cap], prow[lo : lo + cap], pool_width, order[h], prev[h])
    return _pick(prow, lo, cap, srow[lo : lo + cap])[0]


@nb.njit(**_JIT)
def policy_push(
    q, k, v, p, rot_k, rot_v, t_k, mu, k16, v16, pos, S, F, G, pool0, pool1, tmp,
    state, n_state, folds, n_fold, logw, mode, threshold, score, pool_width, ranking, qr, chunk=0,
) -> int:  # fmt: skip
    """One decode token into a compressed layer with an eviction policy: ``kvquant.cu`` kv_policy_push on the CPU.
    Returns the fp16 window slot it took (the host's ``Policy.on_insert`` gives it its state there).

    Each KV head keeps its own tokens (pos [n_kv, N]).  The new token goes to
    the fp16 window slot of ``[S, F)`` :func:`window_slot` gives; when the
    window is full the token there first moves to each head's pool 0: its
    first empty slot, else the least important by the policy's ranks
    (:func:`_spill_victims`, from ``state[0]``), which is demoted to pool 1
    (picked likewise) when there is one, else evicted; an evicted token (pool
    0's without a pool 1, pool 1's to make room) is merged (``mode`` 1 mean,
    2 KeepKV; 0 drops it, see :func:`_merge`).  ``state``: a tuple of the
    policy's per-slot arrays [n_kv, N], the first ``n_state`` moving with
    their tokens; ``folds``: a tuple of those a merged token's entry adds
    into, the first ``n_fold``; ``logw`` [n_kv, N] the merge log-weights
    ([0, 0]: none), moved too; ``ranking``: :func:`ranking_scratch`.  The
    pools' ``free`` [n_kv]: empty slots per head, kept up to date.  ``chunk`` > 0:
    Llama 4's chunks of that many positions, whose older tokens go first
    (:func:`spills`, :func:`chunk_floor`).  The rest as :func:`decode_push`.
    """
    j, full = window_slot(pos, S, F)
    spill = full and pos.shape[1] > F and spills(pos, j, p, chunk)
    floor = chunk_floor(p, chunk)
    if spill:
        _spill_victims(pos, pool0, pool1, state, pool_width, ranking, floor)
    _policy_token(
        k, v, p, rot_k, rot_v, t_k, mu, k16, v16, pos, j, spill, G, pool0, pool1, ranking[0], ranking[1],
        state, n_state, folds, n_fold, logw, mode, threshold, score, logw[:0], False, tmp, floor,
    )  # fmt: skip
    for h in range(k.shape[0]):
        _head_queries(h, q, t_k, rot_k, qr)
    return j


@nb.njit(**_JIT)
def policy_push_tokens(
    k, v, ppos, rot_k, rot_v, t_k, mu, k16, v16, pos, S, F, G, pool0, pool1, tmp,
    state, n_state, folds, n_fold, logw, mode, threshold, score, init, pool_width, ranking, chunk=0,
) -> None:  # fmt: skip
    """A prefill chunk's tokens, in order, into a layer with a policy (the ranks read in place as each
    token comes, :func:`_spill_victims`): ``kvquant.cu`` kv_policy_push_tokens on the CPU.

    k [T, n_kv, D], v [T, n_kv, Dv] (values in the cache basis when not
    ``rot_v``); ppos [T] their positions; each takes the window slot
    :func:`window_slot` gives, spilling when the window is full; init
    [n_state, n_kv, T] float32 the state each starts with
    (``Policy.insert_chunk``).  The rest as :func:`policy_push`.
    """
    N = pos.shape[1]
    for t in range(k.shape[0]):
        j, full = window_slot(pos, S, F)
        spill = full and N > F and spills(pos, j, ppos[t], chunk)
        floor = chunk_floor(ppos[t], chunk)
        if spill:  # the victims as the token comes (the state moved with the last one)
            _spill_victims(pos, pool0, pool1, state, pool_width, ranking, floor)
        _policy_token(
            k[t], v[t], ppos[t], rot_k, rot_v, t_k, mu, k16, v16, pos, j, spill, G, pool0, pool1, ranking[0], ranking[1],
            state, n_state, folds, n_fold, logw, mode, threshold, score, init[:, :, t], True, tmp, floor,
        )  # fmt: skip


@nb.njit(**_JIT)
def _policy_token(
    k, v, p, rot_k, rot_v, t_k, mu, k16, v16, pos, j, spill, G, pool0, pool1, victim0, victim1,
    state, n_state, folds, n_fold, logw, mode, threshold, score, init, has_init, tmp, floor=0,
) -> None:  # fmt: skip
    """One token into every head of a layer with a policy (:func:`policy_push` but for the queries): with
    ``spill``, the token in fp16 slot j first moves to each head's pool-0 slot ``victim0[h]``, whose token
    (if any) is demoted to pool-1 slot ``victim1[h]`` (:func:`_spill_victims`) or, without a pool 1,
    evicted.  With ``has_init`` its state starts at ``init`` [n_state, n_kv] (else left to the policy's on_insert).
    A victim below ``floor`` (an older chunk's, :func:`chunk_floor`) is never merged, nor demoted but into an empty slot."""
    n_kv, D = k.shape
    Dv = v.shape[1]
    kf, vf = np.empty(D, np.float32), np.empty(Dv, np.float32)
    kt, vt = np.empty(D, np.float32), np.empty(Dv, np.float32)
    lo, free, lo1, free1 = pool0[0], pool0[1], pool1[0], pool1[1]
    C0, C1 = pool0[2].shape[1], pool1[2].shape[1]
    sims0, sims1 = np.empty(C0, np.float32), np.empty(C1, np.float32)
    for h in range(n_kv):
        prow = pos[h]
        jq, jc = -1, -1
        if spill:
            jq = victim0[h]
            if prow[lo + jq] < 0:
                free[h] -= 1
            elif C1 > 0:
                jc = victim1[h]
                if prow[lo1 + jc] < 0:
                    free1[h] -= 1
                elif prow[lo + jq] < floor:  # an older chunk's token, with no empty slot to go to: dropped
                    jc = -1
                elif mode and prow[lo1 + jc] >= floor:
                    _merge(h, jc, prow, G, pool1, mode, threshold, logw, score, folds, n_fold, kf, vf, kt, vt, sims1, tmp)
            elif mode and prow[lo + jq] >= floor:
                _merge(h, jq, prow, G, pool0, mode, threshold, logw, score, folds, n_fold, kf, vf, kt, vt, sims0, tmp)
        _move_token(h, j, jq, jc, k16, v16, G, pool0, pool1, kf, vf, tmp)
        # positions and per-slot state follow their tokens (Policy.move): jc <- jq, jq <- j
        _follow(pos, h, j, jq, jc, lo, lo1)
        prow[j] = p
        for i in range(n_state):
            _follow(state[i], h, j, jq, jc, lo, lo1)
            if has_init:
                state[i][h, j] = init[i, h]
        if logw.shape[0] > 0:
            _follow(logw, h, j, jq, jc, lo, lo1)
            logw[h, j] = 0.0
        _store_token(h, j, k, v, rot_k, rot_v, t_k, mu, k16, v16, kf, vf)


# ----------------------------------------------------------------- a policy's whole decode step
@nb.njit(**_JIT)
def policy_decode_step(
    q, k, v, qpos, rot_k, rot_v, t_k, mu, k16, v16, pos, S, F, G, pool0, pool1, tmp,
    state, n_state, folds, n_fold, logw, mode, threshold, score, pool_width, ranking, qr,
    insert_kind, step_kind, decay, acc, window, scale, softcap, o, out, s_all, split_for, int_keys, sink_logits, alibi, chunk=0,
) -> None:  # fmt: skip
    """A decode step (T tokens) of a layer with a policy whose hooks :meth:`Policy.fused_hooks` describes, in
    one call: each token in by :func:`policy_push` and given its state (``on_insert``), then ``before_step``,
    the step's attention adding its probabilities into ``acc`` (``[0, 0]``: a policy that needs none), then
    ``after_step`` and the values' rotation back.  The same arithmetic, in the same order, as
    ``CompressedLayerCache``'s Python path through the hooks, ~15 us a layer-step cheaper.

    The arguments as :func:`policy_push` (per token: q [T, n_head, D], k [T, n_kv, D], v [T, n_kv, Dv], qpos
    [T]) and :func:`decode_step` (o, out, s_all, split_for, int_keys, sink_logits, alibi); state[0] is the policy's score;
    chunk as :func:`policy_push`'s.
    """
    for t in range(q.shape[0]):
        j = policy_push(
            q[t], k[t], v[t], np.int64(qpos[t]), rot_k, rot_v, t_k, mu, k16, v16, pos, S, F, G, pool0, pool1, tmp,
            state, n_state, folds, n_fold, logw, mode, threshold, score, pool_width, ranking, qr[t], chunk,
        )  # fmt: skip
        for a in range(n_state):  # Policy.on_insert, every head's slot j
            col = state[a]
            for h in range(col.shape[0]):
                col[h, j] = np.float32(qpos[t]) if insert_kind == INSERT_POS and a == 0 else np.float32(0.0)
    s0 = state[0]
    if step_kind == STEP_DECAY or step_kind == STEP_RESET:  # (loops, not `acc[:] = 0`: see ops/cpu/arraycopy.py)
        z = acc if step_kind == STEP_DECAY else s0
        for h in range(z.shape[0]):
            for i in range(z.shape[1]):
                z[h, i] = 0.0
    kc, km, vc, vm, bits_k, bits_v, klut, vlut = pool0[2:10]
    kc1, km1, vc1, vm1, bits_k1, bits_v1, klut1, vlut1 = pool1[2:10]
    _attend_decode_q(qr, qpos, k16, v16, kc, km, vc, vm, bits_k, bits_v, kc1, km1, vc1, vm1, bits_k1, bits_v1,
                     klut, vlut, klut1, vlut1, G, pos, logw, window, scale, softcap, o, s_all, acc, split_for, int_keys,
                     sink_logits, alibi)  # fmt: skip
    if step_kind == STEP_DECAY:  # numpy's `score *= decay; score += acc`: two roundings (EXACT_JIT contracts no FMA)
        d = np.float32(decay)
        for h in range(s0.shape[0]):
            for i in range(s0.shape[1]):
                x = s0[h, i] * d
                s0[h, i] = x + acc[h, i]
    if rot_v:
        fwht_rows(o, out)
