"""Launching gemma.cu: Gemma 3n's and Gemma 4's own steps on the device (AltUp, the per-layer inputs' gate, sparse
FFN gates, the experts' output scales), as :class:`GemmaOps`, methods the GPU backend takes on.

The models' CPU forwards do these steps in host numpy (models/gemma3n.py, models/gemma4.py); on the GPU each is one
launch reading and writing device buffers, so a decode step copies nothing to the host and is captured as a CUDA
graph.  Shapes are the models': rows ``[T, n]`` float32, C-contiguous; AltUp's streams one ``[n_altup, n_batch,
n_embd]`` array whose stream ``c`` for ``T`` tokens is ``xs[c, :T]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import kernels as K
from .arrays import device_out, to_device

MAX_ALTUP = 16  # GEMMA_MAX_ALTUP in gemma.cu


class GemmaOps:
    """The GPU backend's Gemma 3n / Gemma 4 steps (ops/gpu/backend.py ``GPUBackend`` inherits them).  The CPU's
    models do the same in host numpy, so the CPU backend has none of them."""

    def mul_vec(self, x: Any, w: Any, out: Any) -> None:
        """``out = x * w``: rows ``[T, n]`` times a vector ``[n]``; out may be x (nn.cu's ``mul_vec_f32``, the backend's
        :meth:`~kvrun.ops.gpu.backend.GPUBackend.mul` too)."""
        n, total = x.shape[-1], math.prod(x.shape)
        xd = to_device(x)
        with device_out(out) as od:
            K.launch("mul_vec_f32", K.ew_grid(total), (K.EW_BLOCK,), xd, to_device(w), od, n, total)

    def match_norm(self, a: Any, src: Any, out: Any, accumulate: bool = False) -> None:
        """``out (+)= a * |src| / |a|`` row by row (L2 norms): AltUp's streams rescaled to the norm of another."""
        T, n = a.shape
        ad, sd = to_device(a), to_device(src)
        with device_out(out) as od:
            K.launch("gemma_match_norm_f32", (T,), (K.EW_BLOCK,), ad, sd, od, n, int(accumulate))

    def altup_coefs(self, xr: Any, router: Any, coef: Any, out: Any, inv_n: float, add: float) -> None:
        """``out [T, m] = tanh((xr * inv_n) @ router.T) @ coef.T + add``: AltUp's routed coefficients from the
        router-normed active stream ``xr`` ``[T, n_embd]``; ``router`` ``[n_altup, n_embd]``, ``coef`` ``[m, n_altup]``."""
        T, n_embd = xr.shape
        n_altup, m = router.shape[0], coef.shape[0]
        if n_altup > MAX_ALTUP or coef.shape[1] != n_altup or tuple(out.shape) != (T, m):
            raise ValueError(f"altup coefs: router {tuple(router.shape)}, coef {tuple(coef.shape)}, out {tuple(out.shape)} do not match")
        xd = to_device(xr)
        with device_out(out) as od:
            K.launch("gemma_altup_coefs_f32", (T,), (128,), xd, to_device(router), to_device(coef), od, n_embd, n_altup, m, inv_n, add)

    def altup_predict(self, xs: Any, coefs: Any, pred: Any, T: int) -> None:
        """``pred[r, :T] = sum_c coefs[t, r * n + c] * xs[c, :T] + xs[r, :T]`` over the streams ``[n, n_batch, n_embd]``."""
        n, _, n_embd = xs.shape
        K.launch("gemma_altup_predict_f32", K.ew_grid(n * T * n_embd), (K.EW_BLOCK,), xs, to_device(coefs), pred, n, T, n_embd,
                 xs.shape[1] * n_embd)  # fmt: skip

    def altup_correct(self, pred: Any, out: Any, coefs: Any, xs: Any, T: int, act: int) -> None:
        """``xs[r, :T] = pred[r, :T] + coefs[:, r] * (out - pred[act, :T])`` (``coefs`` ``[T, n]`` already + 1)."""
        n, _, n_embd = xs.shape
        K.launch("gemma_altup_correct_f32", K.ew_grid(n * T * n_embd), (K.EW_BLOCK,), pred, to_device(out), to_device(coefs), xs, n, T,
                 n_embd, xs.shape[1] * n_embd, act)  # fmt: skip

    def gaussian_topk(self, x: Any, std_mul: float) -> None:
        """In place, each row ``x = max(x - (mean + std_mul * std), 0)``, std unbiased (Gemma 3n's sparse gates)."""
        T, n = x.shape
        with device_out(x) as xd:
            K.launch("gemma_gaussian_topk_f32", (T,), (K.EW_BLOCK,), xd, n, std_mul)

    def gelu_mul_strided(self, g: Any, pl: Any, offset: int) -> None:
        """In place, ``g[t] = gelu(g[t]) * pl[t, offset : offset + n]`` (``pl`` ``[T, width]``: every layer's per-layer
        inputs side by side, this layer's at ``offset``)."""
        T, n = g.shape
        with device_out(g) as gd:
            K.launch("gemma_gelu_mul_strided_f32", K.ew_grid(T * n), (K.EW_BLOCK,), gd, to_device(pl), n, pl.shape[1], offset, T * n)

    def scale_by_expert(self, wts: Any, ids: Any, scale: Any) -> None:
        """In place, ``wts[t, j] *= scale[ids[t, j]]`` (the routed weights :meth:`moe_route` wrote)."""
        total = math.prod(wts.shape)
        idd = to_device(ids, np.int32)
        with device_out(wts) as wd:
            K.launch("gemma_scale_by_expert_f32", K.ew_grid(total), (K.EW_BLOCK,), wd, idd, to_device(scale), total)
