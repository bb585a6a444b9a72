"""Host numpy that the CPU backend and the models' host work share, so both compute the same numbers.

No Numba here: the models import this at the top, and ``kvrun info`` imports a model's module without its kernels.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)`` as ``0.5 + 0.5 tanh(x / 2)``: no overflow for large negative x, and the GPU's kernels' form,
    so a gate multiplies by the same numbers on either device.  (AFMoE's family multiplies by the exp form, ggml's
    ``ggml_sigmoid``, on purpose: ``models/afmoe.py``.)"""
    return 0.5 + 0.5 * np.tanh(0.5 * x)
