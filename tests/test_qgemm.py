"""ops/cpu/qgemm: the VNNI int8 GEMM that prefill's products run on.

It computes W . x_q, x quantized per 32 to int8 (as ``qmatmul.quant_x8``: scale
amax/127, round half to even), exactly up to float32 rounding; the reference
here is that product in float64 from ``gguf.quants.dequantize`` and the
reference forward's quantization of x (``reference.quantize_x8``), so the
tolerance is float32's (1e-5), for every block type.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from kvrun.ops.cpu import qmatmul as Q

from reference import quantize_x8
from test_qmatmul import IQ_TYPES, _ref, _rel, _weights

pytestmark = pytest.mark.skipif(not Q.HAVE_VNNI, reason="no VNNI on this host")

BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, *IQ_TYPES, T.MXFP4]


def _case(qtype, n_rows, n_cols, n_tok, seed=0):
    from kvrun.ops.cpu import qgemm

    w = _weights(qtype, n_rows, n_cols, seed)
    x = (np.random.default_rng(seed + 1).standard_normal((n_tok, n_cols)) * 3).astype(np.float32)
    return qgemm, Q._type(qtype)[0], w, x, quantize_x8(x) @ _ref(w, qtype, n_rows, n_cols).T


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_rows,n_tok", [(67, 13), (32, 8), (5, 1)])  # partial tiles of rows and of tokens
def test_gemm_is_w_dot_quantized_x(qtype, n_rows, n_tok):
    n_cols = 768 if T.Q4_K <= qtype <= T.Q6_K or qtype in (T.Q2_K, T.Q3_K, T.IQ4_XS, *IQ_TYPES) else 96
    qgemm, kind, w, x, ref = _case(qtype, n_rows, n_cols, n_tok)
    out = np.full((n_tok, n_rows), np.nan, np.float32)
    qgemm.matmul(w, kind, x, out, threads=1)
    assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("qtype", [T.Q5_0, T.Q6_K], ids=lambda t: t.name)
def test_threads_give_the_same_bits(qtype, monkeypatch):
    """Split over threads by row tiles, each row is the same arithmetic: prefill does not depend on --threads."""
    qgemm, kind, w, x, ref = _case(qtype, 131, 512, 40, seed=3)
    one, two = (np.empty((40, 131), np.float32) for _ in range(2))
    qgemm.matmul(w, kind, x, one, threads=1)
    monkeypatch.setattr(qgemm, "PAR_MIN_MACS", 0)
    qgemm.matmul(w, kind, x, two, threads=2)
    np.testing.assert_array_equal(one, two)
    assert _rel(one, ref) < 1e-5


def test_strided_weight_rows_and_output_view():
    """Rows of a larger buffer (as in a memory map) and an output that is a column slice."""
    qgemm, kind, w, x, ref = _case(T.Q4_1, 40, 128, 9, seed=5)
    big = np.zeros((40, w.shape[1] + 12), np.uint8)
    big[:, 4 : 4 + w.shape[1]] = w
    full = np.zeros((9, 50), np.float32)
    qgemm.matmul(big[:, 4 : 4 + w.shape[1]], kind, x, full[:, 5:45], threads=1)
    assert _rel(full[:, 5:45], ref) < 1e-5
    assert not full[:, :5].any() and not full[:, 45:].any()


def test_all_zero_x_gives_zeros():
    qgemm, kind, w, _, _ = _case(T.Q4_K, 20, 256, 8)
    out = np.full((8, 20), np.nan, np.float32)
    qgemm.matmul(w, kind, np.zeros((8, 256), np.float32), out, threads=1)
    np.testing.assert_array_equal(out, 0.0)


def test_errors():
    qgemm, kind, w, x, _ = _case(T.Q8_0, 16, 64, 8)
    with pytest.raises(ValueError, match="columns"):
        qgemm.matmul(w, kind, np.zeros((8, 96), np.float32), np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match="shape"):
        qgemm.matmul(w, kind, x, np.zeros((8, 15), np.float32))
    with pytest.raises(ValueError, match="kind"):
        qgemm.matmul(w, Q.F16, x, np.zeros((8, 16), np.float32))


def test_the_8_lane_kernel_of_avx_vnni_hosts(tmp_path):
    """Hosts with AVX-VNNI but not AVX-512 (Intel desktops and laptops since Alder Lake) run the kernel
    on 8-lane ymm vectors, each tile as two halves, 4 tokens a pass.  Forced here in a subprocess
    with a Numba cache of its own (the cache does not see a module constant change)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from gguf import GGMLQuantizationType as T
from reference import quantize_x8
from test_qmatmul import IQ_TYPES, _ref, _rel, _weights
from kvrun.ops.cpu import qgemm, qmatmul as Q
assert (qgemm.LANES, qgemm.TOKENS) == (8, 4)
for qt, n_rows, n_cols, n_tok in [(T.Q4_0, 67, 96, 13), (T.Q6_K, 21, 768, 6), (T.Q4_K, 16, 256, 4)]:
    w = _weights(qt, n_rows, n_cols)
    x = np.random.default_rng(1).standard_normal((n_tok, n_cols)).astype(np.float32)
    out = np.full((n_tok, n_rows), np.nan, np.float32)
    qgemm.matmul(w, Q._type(qt)[0], x, out, threads=1)
    err = _rel(out, quantize_x8(x) @ _ref(w, qt, n_rows, n_cols).T)
    assert err < 1e-5, (qt.name, err)
print("ok")
"""
    env = dict(os.environ, KVRUN_GEMM_LANES="8", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
