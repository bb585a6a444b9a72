"""Launchers for ``batch_attention.cu``: a batch of sequences' decode rows stored and attended in one launch each.

A batch's decode step (cache/batch.py, a server's parallel slots) used to store and attend each sequence on its
own (``attention.kv_store`` and ``attention.attend_decode``), 2 launches per sequence and layer; here they are 2 per
layer whatever the number of sequences.  Each kernel finds a row's ring in a :class:`BatchTable` ``[n_rows, 8]``
int64 (the ring's K, V and slot-position addresses, its capacity, the row of ``q`` / ``out``), uploaded once per
batch composition and kept while its caches live, so a captured batch (runtime/batch_graphs.py) replays the same
table: a step uploads nothing and decides nothing on device data.

Every row gets the output it gets alone (the same per-row arithmetic as attention.cu's decode kernel, see the .cu's
header); the number of splits is the batch's longest sequence's (``n_slots``, rounded up to DECODE_CHUNK as
``GPUPlainLayerCache.decode_slots``), a shorter sequence's extra splits empty.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from . import kernels as K
from .attention import DECODE_CHUNK, DECODE_MAX_D, SHARED_LIMIT
from .arrays import to_device

#: attn_decode_batch_f16's own __shared__ (scratch[WARP] and the split counter's `last`), as ptxas lays it out for
#: sm_90: beside the launch's dynamic shared memory within SHARED_LIMIT (tests/test_gpu_emulator.py holds it to ptxas)
STATIC_SHARED = 144

TAB_W = 8  # int64 words per row of a table (TAB_W in batch_attention.cu)


def address(a: Any) -> int:
    """The device address of array ``a``'s first element (CuPy: ``a.data.ptr``; the emulator's numpy arrays: host)."""
    ptr = getattr(getattr(a, "data", None), "ptr", None)
    return int(ptr) if ptr is not None else int(a.ctypes.data)


class BatchTable:
    """Where each decode row of a batch keeps its K/V: ``tab`` [n_rows, TAB_W] int64 on the device, and the kernel's
    split counters ``count`` [n_rows, n_kv] (zeros, left zero by every launch).  ``rings[i]`` is the layer cache of row
    ``i`` (its ``k`` [n_kv, cap, D], ``v`` and ``pos`` arrays, which never move), ``rows[i]`` its row in the batch."""

    def __init__(self, rings: list[Any], rows: list[int]) -> None:
        xp = K.runtime().xp
        h = np.zeros((len(rows), TAB_W), np.int64)
        for i, (L, r) in enumerate(zip(rings, rows)):
            h[i, :5] = address(L.k), address(L.v), address(L.pos), L.capacity, r
        self.n_rows = len(rows)
        self.n_kv = rings[0].k.shape[0]
        self.tab = to_device(h, np.int64)
        self.count = xp.zeros((len(rows), self.n_kv), np.int32)


# (layer ids, rows) -> (weak references to the layers, the table): one table per batch composition and layer, dropped
# with the first of its layers to go (a graph replaying it is dropped with its caches: runtime/batch_graphs.py).
_TABLES: dict[tuple, tuple[list[weakref.ref], BatchTable]] = {}


def table(rings: list[Any], rows: list[int]) -> BatchTable:
    """The :class:`BatchTable` of these rings' rows, made (and uploaded) on a composition's first step only."""
    key = (tuple(map(id, rings)), tuple(rows))
    hit = _TABLES.get(key)
    if hit is not None and all(r() is L for r, L in zip(hit[0], rings)):
        return hit[1]
    t = BatchTable(rings, rows)
    drop = lambda _ref, key=key: _TABLES.pop(key, None)  # noqa: E731
    _TABLES[key] = ([weakref.ref(L, drop) for L in rings], t)
    return t


def fits(n_head: int, n_kv: int, head_dim: int) -> bool:
    """Whether a layer's heads fit the decode kernel (attention.attend_decode's limits; else the sequences go alone)."""
    return head_dim <= DECODE_MAX_D and 4 * (n_head // n_kv) * (head_dim + DECODE_CHUNK) <= SHARED_LIMIT - STATIC_SHARED


def kv_store(k_new: Any, v_new: Any, pos: Any, t: BatchTable) -> None:
    """Write each table row's ``k_new`` [T, n_kv, D], ``v_new`` [T, n_kv, Dv] (float32) at slot pos % cap of its ring."""
    _, n_kv, D = k_new.shape
    K.launch("kv_store_batch_f16", (t.n_rows * n_kv,), (128,), k_new, v_new, pos, t.tab, n_kv, D, v_new.shape[2])


def attend_decode(q: Any, qpos: Any, t: BatchTable, n_slots: int, window: int, scale: float, softcap: float, out: Any,
                  *, alibi: Any = None, sinks: Any = None) -> None:  # fmt: skip
    """Each table row's query ``q[row]`` [n_head, D] over its ring's slots [0, min(cap, n_slots rounded up to whole
    splits)) into ``out[row]``: split-K with the merge in the same launch (one split: no merge)."""
    xp = K.runtime().xp
    _, H, D = q.shape
    Dv = out.shape[2]
    gqa = H // t.n_kv
    n_split = max(1, K.cdiv(n_slots, DECODE_CHUNK))
    part_o = out if n_split == 1 else xp.empty((t.n_rows, H, n_split, Dv), np.float32)  # (unused when direct)
    part_m = xp.empty((t.n_rows, H, n_split), np.float32)
    part_l = xp.empty((t.n_rows, H, n_split), np.float32)
    K.launch(
        "attn_decode_batch_f16", (n_split, t.n_kv, t.n_rows), (128,),
        q, qpos, t.tab, part_o, part_m, part_l, t.count, out, q if alibi is None else alibi, q if sinks is None else sinks,
        H, t.n_kv, D, Dv, window, scale, softcap, int(alibi is not None), int(sinks is not None),
        shared_mem=4 * gqa * (D + DECODE_CHUNK),
    )  # fmt: skip
