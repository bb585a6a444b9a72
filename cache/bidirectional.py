"""Attention of a block of rows that see each other whole: an image's embedding rows in Gemma 3.

llama.cpp evaluates an image chunk with causal attention off (``mtmd_decode_use_non_causal`` is true for
Gemma 3's projector; ``mtmd_helper_eval_chunks`` then calls ``llama_set_causal_attn(false)``): each row of the
batch sees every cached position before the batch and every row of the batch, before or after it, and a
sliding-window layer still hides a key ``p0`` from a query ``p1`` when ``p1 - p0 >= window`` (llama.cpp's
``is_masked_swa``; a key after the query is never too old).  The cache's own attention is causal, so the
model stores the block as usual (:meth:`LayerCache.update_and_attend`) and this recomputes the block's output
from what the cache then holds, under that mask.  An image is a few hundred rows once per image: float32
numpy, per KV head.  (A compressed cache cannot give the rows back as they went in: cache/picture_block.py attends
before it stores.)
"""

from __future__ import annotations

import numpy as np

from ..loaders.errors import KvrunError
from .base import LayerCache
from .plain import PlainLayerCache


def attend_bidirectional(layer: LayerCache, q: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
    """Overwrite ``out`` [T, n_head, head_dim_v] with the attention of ``q`` [T, n_head, head_dim] (positions
    ``pos``, just stored in ``layer``) over the layer's cache, the block's rows seeing one another both ways."""
    if type(layer) is not PlainLayerCache:
        raise KvrunError("images need the plain fp16 KV cache on the CPU: drop the --kv-* flags (and --device gpu)")
    s = layer.spec
    slots = np.flatnonzero((layer.pos >= 0) & (layer.pos <= pos[-1]))
    kpos = layer.pos[slots]
    visible = np.ones((len(pos), len(slots)), bool)
    if s.window > 0:
        visible = (pos[:, None].astype(np.int64) - kpos[None, :]) < s.window
    elif s.window < 0:  # (a chunked layer, Llama 4's: no model with images has one)
        raise KvrunError("images are not supported with chunked attention")
    g = s.n_head // s.n_head_kv
    for kh in range(s.n_head_kv):
        k = layer.k[kh, slots].view(np.float16).astype(np.float32)  # [n, D]
        v = layer.v[kh, slots].view(np.float16).astype(np.float32)
        for j in range(g):
            h = kh * g + j
            sc = (q[:, h].astype(np.float32) @ k.T) * np.float32(s.scale)  # [T, n]
            if s.softcap > 0:
                sc = np.float32(s.softcap) * np.tanh(sc / np.float32(s.softcap))
            sc = np.where(visible, sc, -np.inf)
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            if s.sink_logits:
                raise KvrunError("images are not supported with attention sinks")
            out[:, h] = (sc @ v) / sc.sum(axis=-1, keepdims=True)
