"""clip.cpp's ports of Pillow's resampling (``resize_lanczos_pillow``, ``resize_bicubic_pillow``), array-wise: one
separable pass at a time over uint8 pixels, with Pillow's fixed-point weights (``precompute_coeffs``), each pass
clipped to bytes.  models/idefics3_image.py resizes with Lanczos-3, models/qwen2vl_image.py with bicubic.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

PRECISION_BITS = 22  # Pillow's (and clip.cpp's) fixed-point weights: 32 - 8 - 2


def _lanczos(x: float) -> float:
    if not -3.0 <= x < 3.0:
        return 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    return sinc(x) * sinc(x / 3.0)


def _bicubic(x: float) -> float:
    """Pillow's bicubic filter (a = -0.5), support 2."""
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


Filter = tuple[Callable[[float], float], float]  #: a filter and its support (Pillow's)
LANCZOS: Filter = (_lanczos, 3.0)
BICUBIC: Filter = (_bicubic, 2.0)


def weights(n_in: int, n_out: int, filt: Filter) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs``: each output pixel's first input pixel [n_out] and its fixed-point weights
    [n_out, ksize] (zero past the pixels it reads)."""
    kernel, width = filt
    scale = n_in / n_out
    filterscale = max(scale, 1.0)  # (upsampling keeps the filter's width; downsampling widens it)
    support = width * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.zeros(n_out, np.int64)
    w = np.zeros((n_out, ksize), np.int64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        k = [kernel((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(k)
        for x, v in enumerate(k):
            v = v / total if total != 0.0 else v
            w[xx, x] = int(v * (1 << PRECISION_BITS) + (-0.5 if v < 0 else 0.5))  # (+-0.5, truncated toward zero)
        first[xx] = xmin
    return first, w


def resample(a: np.ndarray, n_out: int, axis: int, filt: Filter) -> np.ndarray:
    """One separable pass of uint8 ``a`` along ``axis`` to ``n_out`` pixels, clipped to bytes.  (The sums are int64;
    Pillow's are int32, which they never overflow: the same bytes.)"""
    a = np.moveaxis(a, axis, 0)
    first, w = weights(a.shape[0], n_out, filt)
    acc = np.full((n_out,) + a.shape[1:], 1 << (PRECISION_BITS - 1), np.int64)
    src = a.astype(np.int64)
    extra = (1,) * (a.ndim - 1)
    for k in range(w.shape[1]):
        idx = np.minimum(first + k, a.shape[0] - 1)  # (past the pixels read: weight 0)
        acc += src[idx] * w[:, k].reshape(-1, *extra)
    return np.moveaxis(np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)


def resize_axes(img: np.ndarray, width: int, height: int, filt: Filter) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> [height, width, 3] as clip.cpp's resizes run in the oracle (Pillow's port):
    the horizontal pass, then the vertical, each clipped to bytes and skipped where that side is kept."""
    if img.shape[1] != width:
        img = resample(img, width, 1, filt)
    if img.shape[0] != height:
        img = resample(img, height, 0, filt)
    return img


def resize_padded(img: np.ndarray, width: int, height: int, filt: Filter) -> np.ndarray:
    """clip.cpp's ``img_tool::resize`` with PAD_CEIL: scaled by the smaller of width/w and height/h (sides rounded
    up, float32) by :func:`resize_axes`, centred on black [height, width, 3]; a picture already that size kept."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    f32 = np.float32
    scale = min(f32(width) / f32(w), f32(height) / f32(h))
    nw, nh = min(int(math.ceil(f32(w) * scale)), width), min(int(math.ceil(f32(h) * scale)), height)
    out = np.zeros((height, width, 3), np.uint8)
    ox, oy = (width - nw) // 2, (height - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = resize_axes(img, nw, nh, filt)
    return out
