"""Launchers for ``kvquant.cu``: writing the compressed KV cache on the device.

The device twins of :func:`kvrun.cache.quant.quantize_row` (the MSE-clipped
group quantizer) and :func:`kvrun.cache.insert.decode_push` (one steady-state
decode step of a policy-free compressed layer).  The layouts are
``cache/pool.py``'s and ``kvq.cuh``'s; the clipping ratios are passed in
(``cache/quant.py`` owns them), as a [4, MAX_CLIPS] table, 0-terminated rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import kernels as K
from .qattention import DevicePool

MAX_CLIPS = 8  # KQ_MAX_CLIPS
MAX_THREADS = 1024  # KQ_MAX_T: the widest row


def _threads(*widths: int) -> int:
    return K.cdiv(max(widths), 32) * 32


def supported(D: int, Dv: int, G: int) -> str | None:
    """Why rows of these sizes cannot be written on the device, or None when they can."""
    if G < 4 or G & (G - 1):
        return f"group {G} is not a power of two >= 4"
    if D % G or Dv % G:  # (a block is padded to whole warps: the lanes past a row form whole groups of their own)
        return f"head sizes {D}/{Dv} are not multiples of the group {G}"
    if max(D, Dv) > MAX_THREADS:
        return f"head size {max(D, Dv)} exceeds {MAX_THREADS}"
    return None


def clip_table(rows: list[np.ndarray]) -> np.ndarray:
    """Up to four clipping-ratio lists as the kernels' [4, MAX_CLIPS] float32 table (0 ends a row)."""
    t = np.zeros((4, MAX_CLIPS), np.float32)
    for i, r in enumerate(rows):
        if len(r) > MAX_CLIPS:
            raise ValueError(f"at most {MAX_CLIPS} clipping ratios, got {len(r)}")
        t[i, : len(r)] = r
    return t


def quantize_rows(x: Any, bits: int, G: int, lut: Any, clips: Any, codes: Any, meta: Any) -> None:
    """Quantize rows into codes and (scale, zero) codes, as ``cache.quant.quantize_row`` does each.

    x: [n, Dx] float32; codes: [n, Dx*w/8] uint8; meta: [n, Dx/G, 2] uint8;
    lut: [256] float32; clips: [MAX_CLIPS] float32, 0-terminated (device arrays).
    """
    n, Dx = x.shape
    why = supported(Dx, Dx, G)
    if why or bits not in (2, 3, 4, 8, 16):
        raise ValueError(f"no device quantizer for {bits}-bit rows of {Dx}: {why or 'widths are 2, 3, 4, 8, 16'}")
    K.launch("kvq_quantize_rows", (n,), (_threads(Dx),), x, codes, meta, lut, clips, Dx, bits, G)


class DeviceStore(NamedTuple):
    """One compressed layer's device storage, as the push kernels write it (``cache/gpu_compressed.py`` layout)."""

    k16: Any  # [n_kv, F, D] uint16 fp16 bits
    v16: Any  # [n_kv, F, Dv]
    pool0: DevicePool
    pool1: DevicePool  # 0 slots when there is none
    luts: Any  # [4, 256] float32: klut0, vlut0, klut1, vlut1
    clips: Any  # [4, MAX_CLIPS] float32, the same four (clip_table)
    pos: Any  # [P, N] int32 positions, updated by the kernels: [1, N] shared without a policy, a row per KV head with one
    group: int


def _launch_push(name: str, st: DeviceStore, before: tuple, after: tuple) -> None:
    """Launch a push kernel: a block per KV head, a thread per channel; its arguments ``before``,
    the pools (KQ_POOL_PARAMS), ``after``, then the pool sizes (KQ_POOL_SIZES)."""
    p0, p1 = st.pool0, st.pool1
    arrays = (st.k16, st.v16, p0.kc, p0.km, p0.vc, p0.vm, p1.kc, p1.km, p1.vc, p1.vm, st.luts, st.clips, st.pos)
    sizes = (st.k16.shape[1], p0.kc.shape[1], p1.kc.shape[1], st.k16.shape[2], st.v16.shape[2], st.group, p0.bits_k, p0.bits_v, p1.bits_k, p1.bits_v)
    K.launch(name, (st.k16.shape[0],), (_threads(st.k16.shape[2], st.v16.shape[2]),), *before, *arrays, *after, *sizes)


def decode_push(
    q: Any, k: Any, v: Any, t_k: Any, mu: Any, st: DeviceStore, qr: Any, slots: tuple[int, int, int] | Any, ppos: Any, rot_k: bool, rot_v: bool
) -> None:  # fmt: skip
    """One decode token into a policy-free compressed layer, on the device; its queries into the cache basis.

    q [n_head, D], k [n_kv, D], v [n_kv, Dv], t_k / mu [n_kv, D] float32 (the
    key basis); qr [n_head, D] float32 out; ppos [1] int32 its position
    (device).  ``slots`` = (j, jq, jc) as :func:`kvrun.cache.insert.plan_push`
    chose them (-1: no spill / no cool), or a device [3] int32 array the kernel
    reads them from (a captured CUDA graph: refilled before each replay).
    """
    plan = None if isinstance(slots, tuple) else slots
    scalars = (-1, -1, -1) if plan is not None else slots
    args = (qr, ppos if plan is None else plan, ppos, int(plan is not None), *scalars, q.shape[0], int(rot_k), int(rot_v))
    _launch_push("kv_decode_push", st, (q, k, v, t_k, mu), args)


def fwht_rows(x: Any, out: Any) -> None:
    """out = x @ H over the last axis (the orthonormal Hadamard rotation of ``cache.quant.hadamard``: Sylvester's
    for a power-of-two width, block-diagonal for other even ones, <= MAX_THREADS);
    x and out float32 device arrays of one shape, C-contiguous."""
    n = x.shape[-1]
    if n % 2 or n > MAX_THREADS or tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"fwht_rows: rows of {n} (even, <= {MAX_THREADS}) into {tuple(out.shape)}")
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("fwht_rows: x and out must be C-contiguous")
    K.launch("kv_fwht_rows", (x.size // n,), (_threads(n),), x, out, n)


def push_tokens(k: Any, v: Any, t_k: Any, mu: Any, st: DeviceStore, slots: Any, ppos: Any, rot_k: bool, rot_v: bool) -> None:
    """A prefill chunk's tokens into a policy-free compressed layer, in order, on the device.

    k [T, n_kv, D], v [T, n_kv, Dv] float32; slots [T, 3] int32, (j, jq, jc)
    per token as :func:`kvrun.cache.insert.plan_push` chose them one after
    another; ppos [T] int32 their positions; the rest as :func:`decode_push`.
    """
    _launch_push("kv_push_tokens", st, (k, v, t_k, mu), (slots, ppos, k.shape[0], int(rot_k), int(rot_v)))


class DeviceMerge(NamedTuple):
    """How an evicted token is merged on the device (``cache/merge.py``), for :func:`policy_push`."""

    mode: int  # the merger's code (cache/merge.py Merger.mode): 1 mean, 2 KeepKV
    threshold: float  # least cosine similarity that merges (KeepKV's log-weights: policy_push's logw)
    score: Any  # [n_kv, N] float32 the policy's scores weighing a KeepKV merge, or None
    fold: list[Any]  # [n_kv, N] float32 arrays where the victim's entry adds into the target's (at most 2)


def policy_push(
    q: Any, k: Any, v: Any, t_k: Any, mu: Any, st: DeviceStore, qr: Any, j: int | Any, spill: bool, ppos: Any, rot_k: bool, rot_v: bool,
    rank0: Any, rank1: Any, state: Sequence[Any], merge: DeviceMerge | None = None, logw: Any = None, chunk: int = 0,
) -> None:  # fmt: skip
    """One decode token into a compressed layer with an eviction policy, on the device.

    Each KV head keeps its own tokens (``st.pos`` [n_kv, N]).  The new token
    (its position ``ppos`` [1] int32, device) goes to fp16 slot ``j`` (the
    host's choice, the same for every head; or a device int32 array whose
    first entry the kernel reads, as :func:`decode_push`'s plan);
    with ``spill`` the token there first moves to each head's pool 0: to its
    first empty slot, else over the policy's least important (``rank0``
    [n_kv, C0] float32, or None where no head's pool 0 is full), which is
    demoted to pool 1 (picked over ``rank1`` [n_kv, C1] likewise) when there is
    one, else evicted.  An evicted token is merged as ``merge`` says (None:
    dropped).  ``state``: the policy's per-slot arrays ([n_kv, N] float32, at
    most 3) and ``logw`` (the merge log-weights, or None) move with their
    tokens.  ``chunk`` > 0: Llama 4's chunks of that many positions, a pool's token of an older chunk than
    the new token's goes first (``cache/insert.py`` chunk_floor).  The rest as :func:`decode_push`.
    """
    any_ = lambda a: qr if a is None else a  # noqa: E731  (an unused pointer: any array)
    arrays, flags = _policy_args(state, merge, logw, qr)
    plan = None if isinstance(j, (int, np.integer)) else j
    _launch_push("kv_policy_push", st, (q, k, v, t_k, mu), (
        qr, any_(rank0), any_(rank1), *arrays, ppos if plan is None else plan, ppos, len(state),
        int(plan is not None), -1 if plan is not None else int(j), int(spill), q.shape[0], int(rot_k), int(rot_v),
        int(rank0 is not None), int(rank1 is not None), *flags, int(chunk),
    ))  # fmt: skip


def policy_push_tokens(
    k: Any, v: Any, t_k: Any, mu: Any, st: DeviceStore, plan: Any, ppos: Any, init: Any, rot_k: bool, rot_v: bool,
    state: Sequence[Any], merge: DeviceMerge | None = None, logw: Any = None, pool_width: int = 0, chunk: int = 0,
) -> None:  # fmt: skip
    """A prefill chunk's tokens, in order, into a compressed layer whose policy ranks by its score (``state[0]``,
    read as each token comes, max-pooled over ``pool_width`` neighbours in position order when > 0:
    ``Policy.ranks_by_score``, ``Policy.rank_pool``), on the device: each as :func:`policy_push` but for the queries.

    k [T, n_kv, D], v [T, n_kv, Dv] float32 (the model's basis); plan [T, 2] int32
    (fp16 window slot, spill) as the host chose them token by token; ppos [T]
    int32 the positions; init [len(state), n_kv, T] float32 the state each token
    starts with (``Policy.insert_chunk``).  The rest as :func:`policy_push`.
    """
    T = k.shape[0]
    if tuple(plan.shape) != (T, 2) or tuple(init.shape) != (len(state), k.shape[1], T):
        raise ValueError(f"policy_push_tokens: plan {tuple(plan.shape)}, init {tuple(init.shape)} for {T} tokens")
    if (plan.dtype, ppos.dtype, init.dtype) != (np.int32, np.int32, np.float32):
        raise ValueError(f"policy_push_tokens: plan, ppos int32 and init float32, not {plan.dtype}, {ppos.dtype}, {init.dtype}")
    arrays, flags = _policy_args(state, merge, logw, init)
    xp = K.runtime().xp
    n_kv, C0, C1 = k.shape[1], st.pool0.kc.shape[1], st.pool1.kc.shape[1]
    rs = xp.empty((n_kv, C0 + C1) if pool_width else (1,), np.float32)  # pooled ranks, per token
    ri = xp.empty((n_kv, 2, max(C0, C1)) if pool_width else (1,), np.int32)  # their scratch: order and rank
    _launch_push(
        "kv_policy_push_tokens", st, (k, v, t_k, mu),
        (*arrays, plan, ppos, init, rs, ri, T, len(state), int(rot_k), int(rot_v), pool_width, *flags, int(chunk)),
    )  # fmt: skip


def _policy_args(state: Sequence[Any], merge: DeviceMerge | None, logw: Any, filler: Any) -> tuple[list, tuple]:
    """The policy-push kernels' state pointers (ps0..2, logw, score, fold0, fold1; ``filler`` where unused)
    and their merge flags (mode, threshold, has_logw, has_score, n_fold)."""
    if len(state) > 3 or (merge is not None and len(merge.fold) > 2):
        raise ValueError(f"at most 3 per-slot policy arrays and 2 folded ones, got {len(state)}")
    mode, thr, score, fold = (0, 0.0, None, []) if merge is None else (merge.mode, merge.threshold, merge.score, merge.fold)
    arrays = [*[*state, filler, filler, filler][:3], filler if logw is None else logw, filler if score is None else score, *[*fold, filler, filler][:2]]
    return arrays, (mode, float(thr), int(logw is not None), int(score is not None), len(fold))
