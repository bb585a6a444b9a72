"""Launchers for ``attention.cu``: KV store, split-K decode and tiled prefill attention.

Shapes (``cap`` = slots of the layer's ring buffer; all device arrays)::

    q     [T, n_head, head_dim]        float32
    k     [n_kv, cap, head_dim]        float16
    v     [n_kv, cap, head_dim_v]      float16, or K's own rows (``v_of_k``: MLA's latent, ``LayerSpec.v_in_k``)
    kpos  [cap]                        int32, -1 = empty
    qpos  [T]                          int32
    out   [T, n_head, head_dim_v]      float32
    alibi [n_head] or None             float32 ALiBi slopes: score += slope * (key_pos - query_pos)
    sinks [n_head] or None             float32 sink logits (gpt-oss): exp(sink - max) joins the denominator

Same layout and masks as ``ops/cpu/attention.py``.  ALiBi and sinks ride in the kernels behind a flag each (a
model without them passes None: the kernels take ``q`` as a pointer they never read), so the others pay nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K

DECODE_CHUNK = 128  # slots per split: AD_CHUNK in attn_decode.cuh
DECODE_MAX_D = 256  # AD_MAX_D: head_dim the decode kernel keeps in registers
SHARED_LIMIT = 48 * 1024  # dynamic shared memory usable without opting in


def kv_store(k_new: Any, v_new: Any, pos: Any, k: Any, v: Any, kpos: Any) -> None:
    """Write k_new [T, n_kv, D], v_new [T, n_kv, Dv] (float32) at slots pos % cap, as fp16; ``v`` None: K alone (V read
    through K's rows, ``v_new`` ignored)."""
    T, n_kv, D = k_new.shape
    cap = k.shape[1]
    if v is None:  # (the kernel writes no V row of width 0: its pointers are never read)
        K.launch("kv_store_f16", (T * n_kv,), (128,), k_new, k_new, pos, k, k, kpos, n_kv, D, 0, cap)
        return
    K.launch("kv_store_f16", (T * n_kv,), (128,), k_new, v_new, pos, k, v, kpos, n_kv, D, v_new.shape[2], cap)


def v_of_k(k: Any, dv: int) -> Any:
    """V read through K's rows (``LayerSpec.v_in_k``, MLA's latent: K's last ``dv`` channels): K's storage from its first V
    value on, flat and so C-contiguous as a kernel argument must be; the kernels step its rows by K's stride."""
    return k.reshape(-1)[k.shape[2] - dv :]


def _v_rows(k: Any, v: Any, out: Any) -> tuple[int, int]:
    """(Dv, V's row stride): ``v``'s own ``[n_kv, cap, Dv]`` rows, or K's (``v_of_k``'s flat view: out's width, K's stride)."""
    return (v.shape[2], v.shape[2]) if v.ndim == 3 else (out.shape[2], k.shape[2])


def attend_decode(q: Any, k: Any, v: Any, kpos: Any, n_slots: int, qpos: Any, window: int, scale: float, softcap: float, out: Any,
                  *, alibi: Any = None, sinks: Any = None) -> None:
    """Flash-decoding: per-chunk partial softmax, then a reduce over the chunks."""
    xp = K.runtime().xp
    T, H, D = q.shape
    n_kv, cap = k.shape[:2]
    Dv, vs = _v_rows(k, v, out)
    gqa = H // n_kv
    if D > DECODE_MAX_D:
        raise ValueError(f"GPU decode attention supports head_dim <= {DECODE_MAX_D}, got {D}")
    smem = 4 * gqa * (D + DECODE_CHUNK)
    if smem > SHARED_LIMIT:
        raise ValueError(f"GPU decode attention: {gqa} query heads per KV head of dim {D} need {smem} bytes of shared memory")
    n_split = K.cdiv(n_slots, DECODE_CHUNK)
    direct = n_split == 1  # one chunk: the partial kernel normalises and writes out, no reduce launch
    part_o = out if direct else xp.empty((T, H, n_split, Dv), np.float32)  # (unused when direct)
    part_m = xp.empty((T, H, n_split), np.float32)
    part_l = xp.empty((T, H, n_split), np.float32)
    K.launch(
        "attn_decode_partial_f16", (n_split, n_kv, T), (128,),
        q, k, v, kpos, qpos, part_o, part_m, part_l, out, q if alibi is None else alibi, q if sinks is None else sinks,
        n_slots, cap, H, n_kv, D, Dv, window, scale, softcap, int(direct), int(alibi is not None), int(sinks is not None), vs,
        shared_mem=smem,
    )  # fmt: skip
    if not direct:
        decode_reduce(part_o, part_m, part_l, out, sinks)


def decode_reduce(part_o: Any, part_m: Any, part_l: Any, out: Any, sinks: Any = None) -> None:
    """Merge flash-decoding's per-split (max, sum, output) into ``out`` [T, H, Dv], a sink's share in each denominator
    where ``sinks`` [H] is given (the compressed cache's decode ends here too)."""
    T, H, n_split, Dv = part_o.shape
    K.launch("attn_decode_reduce", (H, T), (128,), part_o, part_m, part_l, out, part_m if sinks is None else sinks,
             H, n_split, Dv, int(sinks is not None), shared_mem=4 * n_split)  # fmt: skip


def prefill_tiles(D: int, Dv: int) -> tuple[int, int, int]:
    """(queries per block BQ, keys per tile BKV, shared bytes): the largest tiles that fit 48 KiB."""
    kstride = D + 2 if D % 4 == 0 else D
    for bq, bkv in ((32, 32), (16, 32), (16, 16), (8, 16), (4, 16), (2, 8), (1, 8)):
        smem = 4 * bq * (D + Dv + bkv + 3) + 2 * bkv * (kstride + Dv)
        if smem <= SHARED_LIMIT:
            return bq, bkv, smem
    raise ValueError(f"GPU prefill attention: head_dim {D}/{Dv} is too large for shared memory")


def attend_prefill(q: Any, k: Any, v: Any, kpos: Any, n_slots: int, qpos: Any, window: int, scale: float, softcap: float, out: Any,
                   *, alibi: Any = None, sinks: Any = None) -> None:
    """Tiled causal / sliding-window attention for a block of queries (online softmax)."""
    T, H, D = q.shape
    n_kv, cap = k.shape[:2]
    Dv, vs = _v_rows(k, v, out)
    bq, bkv, smem = prefill_tiles(D, Dv)
    K.launch(
        "attn_prefill_f16", (K.cdiv(T, bq), H), (128,),
        q, k, v, kpos, qpos, out, q if alibi is None else alibi, q if sinks is None else sinks,
        T, n_slots, cap, H, n_kv, D, Dv, window, scale, softcap, bq, bkv, int(alibi is not None), int(sinks is not None), vs,
        shared_mem=smem,
    )  # fmt: skip
