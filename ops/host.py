"""Host numpy that the CPU backend and the models' host work share, so both compute the same numbers.

No Numba here: the models import this at the top, and ``kvrun info`` imports a model's module without its kernels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def whole_runs(op: str, x: Any, s: Any, name: str = "s") -> tuple[int, int]:
    """``x``'s and ``s``'s sizes where ``x`` is a whole number of ``s``'s (an element-wise product of ``x`` by ``s``
    repeated over runs or rows: the gates' and gains' layout), else a one-line ValueError, the same on every backend.
    (Sizes from the shapes, so a device array serves as well as a host one.)"""
    n, m = math.prod(x.shape), math.prod(s.shape)
    if m == 0 or n % m:
        raise ValueError(f"{op}: x {tuple(x.shape)} is not a whole number of {name} {tuple(s.shape)}")
    return n, m


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)`` as ``0.5 + 0.5 tanh(x / 2)``: no overflow for large negative x, and the GPU's kernels' form,
    so a gate multiplies by the same numbers on either device.  (AFMoE's family multiplies by the exp form, ggml's
    ``ggml_sigmoid``, on purpose: ``models/afmoe.py``.)"""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + e^x)``, ``x`` itself above 20 (ggml's ``ggml_compute_softplus_f32``: where exp would overflow; the
    minimum keeps the branch not taken from overflowing too), float32."""
    return np.where(x > np.float32(20.0), x, np.log1p(np.exp(np.minimum(x, np.float32(20.0))))).astype(np.float32)
