"""A picture's rows that see each other both ways (Gemma 3, Gemma 4), on the plain or the compressed KV cache.

libmtmd feeds such a picture with causal attention off (cache/bidirectional.py): each row sees every cached position
before the picture and every row of its own forward, before or after it.  The plain fp16 cache stores the rows and
recomputes their attention from what it then holds (:func:`.bidirectional.attend_bidirectional`), storing them
without the causal attention that would be overwritten (:meth:`.plain.PlainLayerCache.store`).  A compressed cache
cannot: once stored, a row may already be quantized (a prefill chunk spills out of the fp16 window as it goes in), a
sliding-window layer's ring is only ``window + 4`` slots, so a long chunk overwrites its own first rows, and an eviction
policy may drop a row to make room for the next.  So the attention comes first, from the picture's own float K/V
(rounded through fp16, as the fp16 window and the plain cache hold them) beside the rows stored before the picture, as
the cache holds them (quantized, or evicted, as for any query); only then are the rows stored, compressed, as the
cache's own :meth:`~.base.LayerCache.update_and_attend` stores them (:meth:`.compressed.CompressedLayerCache.store`:
no causal attention, but where an eviction policy scores the rows by its probabilities, as any prompt's, so after the
picture they are kept or evicted as any token).

A picture longer than ``n_batch`` is fed in pieces (Engine.eval_embd, as llama.cpp splits it): its rows fed so far
are kept here in float, per layer, until the whole picture is fed (:class:`PictureRows`, in ``KVCache.media`` while
Engine.eval_embd feeds a picture), so a later piece reads the earlier ones whole, whatever the cache did with them
meanwhile: the picture never loses a row to its own feed.  Float32 numpy per KV head, as bidirectional.py: a few
hundred rows once per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..ops.cpu.f16 import through_f16
from .base import KVCache, Media
from .bidirectional import attend_bidirectional
from .compressed import CompressedLayerCache
from .insert import fwht_rows
from .plain import PlainLayerCache, SharedLayerCache


class PictureRows(Media):
    """Layer ``il``'s rows of the picture being fed so far: ``rows[il] = (first position, K, V)``, float32
    [n, n_kv, D] in the model's basis."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def kept(self, n_past: int) -> None:
        """Nothing: a picture's feed cut short (a failed forward) or copied is over."""
        return None


def update_and_attend_block(cache: KVCache, il: int, q: np.ndarray, k: Any, v: Any, pos: np.ndarray, out: np.ndarray) -> None:
    """Store layer ``il``'s rows of a picture (``k``/``v`` None: a layer that reads another's K/V, Gemma 4's) and write
    their attention, each row seeing the cache before the picture and the picture's rows fed so far, both ways, into
    ``out`` [T, n_head, head_dim_v].  The GPU's caches go to cache/gpu_picture.py (its plain one; the compressed one is
    refused there); a one-line KvrunError where the cache is none of these."""
    layer = cache[il]
    if type(layer) is CompressedLayerCache:
        side = cache.media.get(PictureRows)
        _attend_compressed(layer, q, k, v, pos, out, side.rows if isinstance(side, PictureRows) else {}, il)
        return
    if type(layer).__name__.startswith("GPU"):  # (the GPU's caches: cache/gpu_picture.py, imported only there, as factory.py does)
        from .gpu_picture import update_and_attend_picture

        update_and_attend_picture(layer, q, k, v, pos, out)
        return
    if not isinstance(layer, (PlainLayerCache, SharedLayerCache)):  # (layers sharing K/V over a compressed cache among them)
        raise KvrunError("pictures whose rows see each other both ways (Gemma 3, Gemma 4) take the plain cache where layers "
                         "share K/V (Gemma 4's E2B/E4B), and no other than the CPU's caches and the GPU's plain one; drop the --kv-* options")  # fmt: skip
    if isinstance(layer, PlainLayerCache):  # (a shared layer's source stored this step's rows already)
        layer.store(k, v, pos)
    attend_bidirectional(layer.source if isinstance(layer, SharedLayerCache) else layer, q, pos, out)


def _attend_compressed(layer: CompressedLayerCache, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray,
                       out: np.ndarray, side: dict, il: int) -> None:  # fmt: skip
    """See the module docstring: attention first (stored rows before the picture, the picture's own rows from ``side``
    and this piece), then the store."""
    s = layer.spec
    if s.sink_logits:
        raise KvrunError("images are not supported with attention sinks")
    if s.window < 0:  # (make_cache refuses a compressed cache for chunked attention already)
        raise KvrunError("images are not supported with chunked attention")
    T = len(pos)
    k, v = np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32)
    start, ks, vs = side.get(il, (int(pos[0]), None, None))
    if ks is not None and start + len(ks) != int(pos[0]):  # (not the next piece of the picture fed before: a new one)
        start, ks, vs = int(pos[0]), None, None
    # [n_own, n_kv, D] the picture's rows so far, original basis (copies: k and v are views of the model's step buffers)
    kb = k.copy() if ks is None else np.concatenate([ks, k])
    vb = v.copy() if vs is None else np.concatenate([vs, v])
    side[il] = (start, kb, vb)
    own_pos = np.arange(start, start + len(kb), dtype=np.int64)
    # the cache's basis, where its stored keys are (exact for attention: rotation, centering, smoothing; keybasis.py),
    # which the first spill may fix between two pieces: the own rows kept in float go into it now, then through fp16
    qr = layer.basis.queries(np.ascontiguousarray(q, np.float32))
    kc = through_f16(layer.basis.keys(kb))
    vc = through_f16(layer._rot(vb, layer.rot_v))
    qpos = pos.astype(np.int64)
    o = np.empty((T, s.n_head, s.head_dim_v), np.float32)
    g = s.n_head // s.n_head_kv
    for h in range(s.n_head_kv):
        ids, ka, va = layer.stored_rows(h)
        kpos_all = layer.pos[h if layer.P > 1 else 0, ids].astype(np.int64)
        before = kpos_all < start  # (rows of the picture already stored come from ``side``, whole and in fp16)
        kk = np.concatenate([ka[: len(ids)][before], kc[:, h]])
        vv = np.concatenate([va[: len(ids)][before], vc[:, h]])
        kpos = np.concatenate([kpos_all[before], own_pos])
        bias = np.concatenate([layer.logw[h, ids[before]], np.zeros(len(own_pos), np.float32)]) if layer.logw.size else None
        visible = (qpos[:, None] - kpos[None, :]) < s.window if s.window > 0 else np.ones((T, len(kpos)), bool)
        for j in range(g):
            hh = h * g + j
            sc = (qr[:, hh] @ kk.T) * np.float32(s.scale)  # [T, n]
            if s.softcap > 0:
                sc = np.float32(s.softcap) * np.tanh(sc / np.float32(s.softcap))
            if bias is not None:  # (KeepKV's merge weights, added after scaling and capping as the cache's kernels do)
                sc = sc + bias[None, :]
            sc = np.where(visible, sc, -np.inf)
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            o[:, hh] = (sc @ vv) / sc.sum(axis=-1, keepdims=True)
    layer.store(q, k, v, pos)
    if layer.rot_v is not None:  # back from the cache basis, by the butterflies the cache's own attention uses
        fwht_rows(o, out)
    else:
        out[:] = o
