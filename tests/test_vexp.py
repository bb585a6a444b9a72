"""The vectorisable float32 exp of decode attention's softmax."""

from __future__ import annotations

import numba as nb
import numpy as np

from kvrun.ops.cpu.vexp import exp32


def test_exp32_matches_exp_to_4e_7_and_gives_masked_logits_zero_weight():
    """``exp32`` (softmax of decode attention) against float64 exp: relative error < 4e-7 on
    [-87, 88], exp(0) = 1 exactly, and masked logits (-1e30 and anything below -87) weigh 0."""
    @nb.njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = exp32(x[i])

    x = np.concatenate([np.linspace(-87, 88, 400_001, dtype=np.float32), np.float32([0.0, -1e30, -87.5, -300.0])])
    y = np.empty_like(x)
    apply(x, y)
    ref = np.exp(x[:-4].astype(np.float64))
    assert np.max(np.abs(y[:-4] - ref) / ref) < 4e-7
    assert y[-4] == 1.0
    assert (y[-3:] == 0.0).all()
