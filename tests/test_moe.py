"""Mixture-of-experts FFN (models/moe.py, ops/cpu/moe.py): the router's choice, and decode's one-call
kernel against the product-by-product path prefill takes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

from kvrun.models.moe import route
from kvrun.ops.cpu import qmatmul
from kvrun.ops.cpu.moe import moe_token


def test_the_router_takes_the_top_k_by_softmax_and_renormalises_their_weights():
    logits = np.array([[0.0, 3.0, 1.0, 3.0, -1.0]], np.float32)
    top, wts = route(logits, 3, norm_weights=True)
    assert top.tolist() == [[1, 3, 2]]  # ties to the lower index
    p = np.exp(logits[0] - 3.0) / np.exp(logits[0] - 3.0).sum()
    np.testing.assert_allclose(wts[0], p[[1, 3, 2]] / p[[1, 3, 2]].sum(), rtol=1e-6)
    _, raw = route(logits, 3, norm_weights=False)
    np.testing.assert_allclose(raw[0], p[[1, 3, 2]], rtol=1e-6)


@pytest.mark.parametrize("gu,down", [(T.Q4_0, T.Q4_0), (T.Q8_0, T.Q4_1), (T.Q4_0, T.Q8_0)], ids=lambda t: t.name)
def test_one_token_in_one_call_equals_expert_by_expert(gu, down):
    rng = np.random.default_rng(0)
    n_expert, n_embd, n_ff = 6, 64, 96
    def stacked(qt, rows, cols):
        return np.ascontiguousarray(quantize((rng.standard_normal((n_expert * rows, cols)) * 0.1).astype(np.float32), qt)).view(np.uint8)
    g, u, d = stacked(gu, n_ff, n_embd), stacked(gu, n_ff, n_embd), stacked(down, n_embd, n_ff)
    xn = rng.standard_normal(n_embd).astype(np.float32)
    experts, wts = np.array([4, 0, 2]), np.array([0.5, 0.3, 0.2], np.float32)
    x = rng.standard_normal(n_embd).astype(np.float32)
    want = x.astype(np.float64).copy()
    for e, wt in zip(experts, wts):
        gg, uu, dd = np.zeros(n_ff, np.float32), np.zeros(n_ff, np.float32), np.zeros(n_embd, np.float32)
        qmatmul.matvec(g[e * n_ff : (e + 1) * n_ff], gu, xn, gg)
        qmatmul.matvec(u[e * n_ff : (e + 1) * n_ff], gu, xn, uu)
        h = (gg / (1 + np.exp(-gg)) * uu).astype(np.float32)
        qmatmul.matvec(d[e * n_embd : (e + 1) * n_embd], down, h, dd)
        want += wt * dd
    got = x.copy()
    assert moe_token(g, gu, u, gu, d, down, n_ff, experts, wts, xn, got)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_float_experts_are_left_to_the_product_path():
    w = np.zeros((2 * 32, 32 * 4), np.uint8)
    assert not moe_token(w, T.F32, w, T.F32, w, T.F32, 32, np.array([0]), np.ones(1, np.float32), np.zeros(32, np.float32), np.zeros(32, np.float32))


def test_kvrun_info_states_the_experts(tmp_path):
    from click.testing import CliRunner
    from tinymodel import write_tiny_model

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_model(tmp_path / "moe.gguf", "qwen3moe"))])
    assert r.exit_code == 0 and "2 of 4 experts a token, each 64 wide" in r.output, r.output
