"""Qwen2.5-VL-style window attention on the device (models/vit_device.py ``_attend_windows``): the windows of a size go
in one launch as heads, whose count CUDA caps at 65535 (grid.y), so a picture with more windows x heads than that is
cut into runs of windows, each run the same attention."""

from __future__ import annotations

import types

import numpy as np
import pytest

from kvrun.models import vit_device
from kvrun.ops.gpu import encoder as E
from kvrun.ops.gpu import kernels as K

ATTEND_FULL = E.attend_full  # (the launcher itself, under the counting stand-in below)


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, groups: list[np.ndarray], scale: float) -> np.ndarray:
    out = np.zeros_like(q, dtype=np.float64)
    for windows in groups:
        for idx in windows:
            s = np.einsum("qhd,khd->hqk", q[idx], k[idx]) * scale
            p = np.exp(s - s.max(-1, keepdims=True))
            out[idx] = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v[idx])
    return out.reshape(q.shape[0], -1)


@pytest.mark.parametrize("most", [None, 6])  # (None: CUDA's own limit, one run; 6: two windows of 3 heads a launch)
def test_window_attention_in_runs_is_the_attention_of_each_window(gpu, monkeypatch, most):
    rng = np.random.default_rng(0)
    T, H, D = 20, 3, 8
    q, k, v = (rng.standard_normal((T, H, D)).astype(np.float32) for _ in range(3))
    order = rng.permutation(T)
    groups = [order[:12].reshape(3, 4), order[12:].reshape(4, 2)]  # (3 windows of 4 patches, 4 of 2)
    if most is not None:
        monkeypatch.setattr(K, "MAX_GRID_Y", most)
    launched = []
    monkeypatch.setattr(E, "attend_full", lambda q, *a: launched.append(q.shape[1]) or ATTEND_FULL(q, *a))
    enc = types.SimpleNamespace(be=gpu)
    got = gpu.to_host(vit_device._attend_windows(enc, *(gpu.xp.asarray(t) for t in (q, k, v)), groups, np.float32(0.35)))
    np.testing.assert_allclose(got, _reference(q, k, v, groups, 0.35), atol=2e-6)
    assert launched == ([9, 12] if most is None else [6, 3, 6, 6])  # (a launch's heads: windows x 3)
    assert max(launched) <= K.MAX_GRID_Y



def test_a_launch_past_cudas_grid_is_refused_in_one_line(gpu):
    q = np.zeros((1, K.MAX_GRID_Y + 1, 1), np.float32)
    with pytest.raises(ValueError, match="at most 65535"):
        E.attend_full(q, q, q, None, 1.0, np.zeros_like(q))
