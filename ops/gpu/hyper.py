"""Launching hyper.cu: the hyper-connections' streams on the device (HY V4's iHC, models/hy_v4.py; GLM-5.3-Flash's
mHC, models/glm5_next.py), as :class:`HyperConnections`.

The residual is ``n_hc`` streams of ``n_embd`` a token, one ``[T, n_hc, n_embd]`` array.  The CPU's forward turns a
site's mixes into its weights (and mHC's Sinkhorn stream mix), reduces the streams into the block's input and spreads
the block's output back in host numpy; here each of those is one launch reading and writing device buffers, so a decode
step copies nothing to the host and is captured as a CUDA graph.  Rows are float32, C-contiguous.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np

from . import kernels as K
from .arrays import ConstCache, device_out, to_device

MAX_HC = 16  # HYPER_MAX_HC in hyper.cu


class HyperConnections:
    """One model's hyper-connections on the device: its ``eps`` (added to every pre weight), ``magnitude`` (the post
    weights' factor) and ``post_eps`` (added to every post weight: HY V4's ``eps``, where not given; GLM's none).  A
    site's ``base`` is handed in as the host array the model loaded and uploaded once (a captured step uploads
    nothing)."""

    def __init__(self, eps: float, magnitude: float, post_eps: float | None = None) -> None:
        self.eps, self.magnitude = float(eps), float(magnitude)
        self.post_eps = self.eps if post_eps is None else float(post_eps)
        self._bases = ConstCache()

    def pre(self, mixes: Any, base: np.ndarray, scale: np.ndarray, streams: Any, cur: Any, post: Any = None) -> None:
        """``cur[t] = sum_h pre[t, h] streams[t, h]``, ``pre = sigmoid(mixes[:, :n_hc] * scale[0] + base[:n_hc])
        + eps``; with ``post`` ``[T, n_hc]`` (a layer's site: ``mixes`` ``[T, 2 n_hc]``, or mHC's ``[T, (2 + n_hc)
        n_hc]``, whose last ``n_hc^2`` are :meth:`sinkhorn`'s) also ``post = magnitude * sigmoid(mixes[:, n_hc:2 n_hc]
        * scale[1] + base[n_hc:2 n_hc]) + post_eps``.  Without it ``mixes`` is ``[T, n_hc]``: the output head's reduce."""
        T, n_hc, n_embd = streams.shape
        n_mix = mixes.shape[1]
        mix_counts = (n_hc,) if post is None else (2 * n_hc, (2 + n_hc) * n_hc)
        if n_hc > MAX_HC or n_mix not in mix_counts or base.size != n_mix or tuple(cur.shape) != (T, n_embd) \
                or (post is not None and tuple(post.shape) != (T, n_hc)) or mixes.shape[0] != T:  # fmt: skip
            raise ValueError(f"hyper-connections' pre: mixes {tuple(mixes.shape)}, base {base.shape}, streams {tuple(streams.shape)}, "
                             f"cur {tuple(cur.shape)}, post {None if post is None else tuple(post.shape)} do not match")  # fmt: skip
        s_post = float(scale[1]) if post is not None else 0.0
        md, bd, sd = to_device(mixes), self._bases.get(base), to_device(streams)
        with device_out(cur) as cd, (nullcontext(cd) if post is None else device_out(post)) as pd:  # (no post: its pointer unread)
            K.launch("hc_pre_f32", (T,), (K.EW_BLOCK,), md, bd, sd, cd, pd, n_hc, n_mix, n_embd, float(scale[0]), s_post, self.eps,
                     self.post_eps, self.magnitude)  # fmt: skip

    def sinkhorn(self, mixes: Any, base: np.ndarray, scale: np.ndarray, comb: Any, n_iter: int) -> None:
        """mHC's stream mix: ``comb`` ``[T, n_hc, n_hc]`` (``[src, dst]``) of the logits ``mixes[:, 2 n_hc:] * scale[2]
        + base[2 n_hc:]`` (``mixes`` ``[T, (2 + n_hc) n_hc]``), as models/glm5_next.py ``sinkhorn`` with ``eps``: a
        softmax over ``dst`` plus ``eps``, then columns and rows normalised in turn, ``n_iter`` times the columns."""
        T, n_hc = comb.shape[0], comb.shape[1]
        n_mix = (2 + n_hc) * n_hc
        if n_hc > MAX_HC or tuple(comb.shape) != (T, n_hc, n_hc) or tuple(mixes.shape) != (T, n_mix) or base.size != n_mix or n_iter < 1:
            raise ValueError(f"hyper-connections' sinkhorn: mixes {tuple(mixes.shape)}, base {base.shape}, comb {tuple(comb.shape)}, "
                             f"{n_iter} iterations do not match")  # fmt: skip
        block = K.cdiv(n_hc * n_hc, 32) * 32  # (a thread an element of the matrix)
        md, bd = to_device(mixes), self._bases.get(base)
        with device_out(comb) as cd:
            K.launch("hc_sinkhorn_f32", (T,), (block,), md, bd, cd, n_hc, n_mix, float(scale[2]), int(n_iter), self.eps)

    @staticmethod
    def mix(streams: Any, post: Any, comb: Any, out: Any) -> None:
        """mHC's spread: ``streams[:, d] = post[:, d, None] * out + sum_s comb[:, s, d, None] * streams[:, s]`` in place
        (models/glm5_next.py ``hc_post``)."""
        T, n_hc, n_embd = streams.shape
        if n_hc > MAX_HC or tuple(post.shape) != (T, n_hc) or tuple(comb.shape) != (T, n_hc, n_hc) or tuple(out.shape) != (T, n_embd):
            raise ValueError(f"hyper-connections' mix: streams {tuple(streams.shape)}, post {tuple(post.shape)}, comb {tuple(comb.shape)}, "
                             f"out {tuple(out.shape)} do not match")  # fmt: skip
        pd, cd, od = to_device(post), to_device(comb), to_device(out)
        with device_out(streams) as sd:
            K.launch("hc_mix_f32", (T,), (K.EW_BLOCK,), sd, pd, cd, od, n_hc, n_embd)

    @staticmethod
    def mean(streams: Any, x: Any) -> None:
        """``x`` = the streams' mean ``[T, n_embd]`` (the row GLM's final norm reads)."""
        T, n_hc, n_embd = streams.shape
        if tuple(x.shape) != (T, n_embd):
            raise ValueError(f"hyper-connections' mean: streams {tuple(streams.shape)}, x {tuple(x.shape)} do not match")
        total = T * n_embd
        sd = to_device(streams)
        with device_out(x) as xd:
            K.launch("hc_mean_f32", K.ew_grid(total), (K.EW_BLOCK,), sd, xd, n_hc, n_embd, 1.0 / n_hc, total)

    @staticmethod
    def post(streams: Any, post: Any, out: Any) -> None:
        """``streams += post[:, :, None] * out[:, None, :]``: each stream its share of a block's output ``out``
        ``[T, n_embd]``."""
        T, n_hc, n_embd = streams.shape
        if tuple(post.shape) != (T, n_hc) or tuple(out.shape) != (T, n_embd):
            raise ValueError(f"hyper-connections' post: streams {tuple(streams.shape)}, post {tuple(post.shape)}, "
                             f"out {tuple(out.shape)} do not match")  # fmt: skip
        total = math.prod(streams.shape)
        pd, od = to_device(post), to_device(out)
        with device_out(streams) as sd:
            K.launch("hc_post_f32", K.ew_grid(total), (K.EW_BLOCK,), sd, pd, od, n_hc, n_embd, total)

    @staticmethod
    def fill(streams: Any, x: Any) -> None:
        """``streams[...] = x[:, None, :]``: every stream the row ``x`` ``[T, n_embd]`` (a token's embedding)."""
        T, n_hc, n_embd = streams.shape
        if tuple(x.shape) != (T, n_embd):
            raise ValueError(f"hyper-connections' fill: streams {tuple(streams.shape)}, x {tuple(x.shape)} do not match")
        total = math.prod(streams.shape)
        xd = to_device(x)
        with device_out(streams) as sd:
            K.launch("hc_fill_f32", K.ew_grid(total), (K.EW_BLOCK,), xd, sd, n_hc, n_embd, total)
