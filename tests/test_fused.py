"""ops/cpu/fused: a decode step's norm / activation, products and residual add in one call,
bit for bit what the separate kernels give (the serial and the parallel kernel)."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from test_qmatmul import _weights

from kvrun.ops.backend import Weight
from kvrun.ops.cpu import fused, nn, qmatmul

N_EMBD = 512


def _w(qtype: T, n_rows: int, n_cols: int = N_EMBD, seed: int = 0) -> Weight:
    return Weight(_weights(qtype, n_rows, n_cols, seed), int(qtype), (n_rows, n_cols))


def _row(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)


@pytest.fixture(params=["one thread", "two threads"])
def threads(request):
    """The serial kernel, or two threads with every group taking the parallel one."""
    old = (nb.get_num_threads(), qmatmul.PAR_MIN_BYTES)
    if request.param == "two threads":
        nb.set_num_threads(min(2, nb.config.NUMBA_NUM_THREADS))
        qmatmul.PAR_MIN_BYTES = 0
    else:
        nb.set_num_threads(1)
    yield
    nb.set_num_threads(old[0])
    qmatmul.PAR_MIN_BYTES = old[1]


GROUPS = {
    "qkv Q4_1": [(T.Q4_1, 131), (T.Q4_1, 45), (T.Q4_1, 45)],
    "qkv Q4_K Q4_K Q6_K": [(T.Q4_K, 64), (T.Q4_K, 32), (T.Q6_K, 32)],
    "gate/up Q8_0": [(T.Q8_0, 200), (T.Q8_0, 200)],
    "one Q5_0": [(T.Q5_0, 77)],
}


@pytest.mark.parametrize("group", GROUPS, ids=list(GROUPS))
def test_norm_then_products_equal_the_separate_calls(group, threads):
    ws = [_w(q, n, seed=i) for i, (q, n) in enumerate(GROUPS[group])]
    x, nw = _row(N_EMBD, 1), _row(N_EMBD, 2)[0]
    xn = np.full_like(x, np.nan)
    outs = [np.full((1, w.n_rows), np.nan, np.float32) for w in ws]
    assert fused.matvecs(fused.NORM, x, None, nw, 1e-6, xn, ws, outs)
    want_xn = np.empty_like(x)
    nn.rms_norm(x, nw, 1e-6, want_xn)
    np.testing.assert_array_equal(xn, want_xn)
    for w, out in zip(ws, outs):
        want = np.empty(w.n_rows, np.float32)
        qmatmul.matvec(w.data, w.qtype, want_xn[0], want)
        np.testing.assert_array_equal(out[0], want)


@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["into out", "added into out"])
@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K, T.Q8_0], ids=lambda t: t.name)
def test_gated_activation_then_down_product_equal_the_separate_calls(act, accumulate, qtype, threads):
    n_ff = 1024
    w = _w(qtype, N_EMBD, n_ff)
    gate, up, res = _row(n_ff, 3), _row(n_ff, 4), _row(N_EMBD, 5)
    g_want = np.empty_like(gate)
    (nn.silu_mul if act == "silu" else nn.gelu_mul)(gate, up, g_want)
    want = np.empty(N_EMBD, np.float32)
    qmatmul.matvec(w.data, w.qtype, g_want[0], want)
    if accumulate:
        want = res[0] + want
    out, tmp = res.copy(), np.full_like(res, np.nan)
    pre = fused.SILU if act == "silu" else fused.GELU
    assert fused.matvecs(pre, gate, up, None, 0.0, gate, (w,), (tmp if accumulate else out,), out if accumulate else None)
    np.testing.assert_array_equal(gate, g_want)  # the activation is left in gate, as silu_mul(gate, up, gate) leaves it
    np.testing.assert_array_equal(out[0], want)


def test_a_product_added_into_the_residual_stream(threads):
    w = _w(T.Q4_0, N_EMBD)
    x, res = _row(N_EMBD, 6), _row(N_EMBD, 7)
    want = np.empty(N_EMBD, np.float32)
    qmatmul.matvec(w.data, w.qtype, x[0], want)
    want = res[0] + want
    tmp = np.empty_like(res)
    assert fused.matvecs(fused.NONE, x, None, None, 0.0, x, (w,), (tmp,), res)
    np.testing.assert_array_equal(res[0], want)


@pytest.mark.parametrize("group", [[(T.F16, 16)], [(T.Q8_0, 16), (T.Q4_1, 16)]], ids=["float rows", "int16 and int8 activations"])
def test_declines_what_it_does_not_fuse_and_touches_nothing(group):
    ws = [_w(q, n, seed=i) for i, (q, n) in enumerate(group)]
    x, nw = _row(N_EMBD, 1), _row(N_EMBD, 2)[0]
    xn = np.full_like(x, np.nan)
    outs = [np.full((1, w.n_rows), np.nan, np.float32) for w in ws]
    assert not fused.matvecs(fused.NORM, x, None, nw, 1e-6, xn, ws, outs)
    assert np.isnan(xn).all() and all(np.isnan(o).all() for o in outs)


@pytest.mark.parametrize("group", [*GROUPS, "float rows", "int16 and int8 activations"])
def test_backend_products_sharing_an_input_are_each_product(group, threads):
    """CPUBackend.linear_many for a decode token: fused where it applies, one matvec each where it declines."""
    from kvrun.ops.cpu.backend import CPUBackend

    spec = GROUPS.get(group) or ([(T.F16, 16)] if group == "float rows" else [(T.Q8_0, 16), (T.Q4_1, 24)])
    ws = [_w(q, n, seed=i) for i, (q, n) in enumerate(spec)]
    x = _row(N_EMBD, 8)
    outs = [np.full((1, w.n_rows), np.nan, np.float32) for w in ws]
    CPUBackend().linear_many(ws, x, outs)
    for w, out in zip(ws, outs):
        want = np.empty(w.n_rows, np.float32)
        qmatmul.matvec(w.data, w.qtype, x[0], want)
        np.testing.assert_array_equal(out[0], want)


def test_a_weight_first_in_two_groups_keeps_a_plan_for_each(threads):
    """The weights' part of the arguments is worked out on a group's first call and kept on its first weight, by the
    group: the same first weight with other weights after it, or alone, still gives each group its own products, and
    a group that declines keeps declining."""
    wq, wk, wf = _w(T.Q4_1, 40, seed=1), _w(T.Q4_1, 24, seed=2), _w(T.F16, 16, seed=3)
    x = _row(N_EMBD, 9)
    for _ in range(2):  # (the second time from the plans)
        for group in ([wq, wk], [wq], [wq, wf]):
            outs = [np.full((1, w.n_rows), np.nan, np.float32) for w in group]
            fused_it = fused.matvecs(fused.NONE, x, None, None, 0.0, x, group, outs)
            assert fused_it == all(w is not wf for w in group)
            for w, out in zip(group, outs) if fused_it else ():
                want = np.empty(w.n_rows, np.float32)
                qmatmul.matvec(w.data, w.qtype, x[0], want)
                np.testing.assert_array_equal(out[0], want)
    assert len(wq.plans) == 3 and not wk.plans
