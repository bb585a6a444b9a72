"""The i-quants (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M): what the type-generic tests
(test_quants, test_qmatmul, test_qgemm, test_gpu_kernels) do not already hold.

* The grid tables: kvrun reads ggml's from gguf-py once (``loaders.quants``); the CUDA header
  ``ops/gpu/iqgrids.cuh`` is generated from them and must be exactly that text; the sign table is
  ggml's rule (the index, bit 7 its parity), which the CPU dot computes instead of looking up.
* Every grid entry and every sign index: the generic tests draw a few thousand random groups, which
  leave some of IQ1's 2048 entries unvisited; here enough rows that each entry is met many times,
  through get_rows (bit for bit), the decode dot and the VNNI GEMM (W . x_q, float32 rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from kvrun.loaders import quants as LQ
from kvrun.ops.cpu import qmatmul as Q

from reference import quantize_x8
from test_qmatmul import IQ_TYPES, _ref, _rel, _weights

# grid entries of each type (IQ1_M indexes IQ1_S's grid)
N_ENTRIES = {T.IQ3_XXS: 256, T.IQ3_S: 512, T.IQ2_XXS: 256, T.IQ2_XS: 512, T.IQ2_S: 1024, T.IQ1_S: 2048, T.IQ1_M: 2048}


def test_cuda_grid_header_is_generated_from_the_tables():
    from kvrun.ops.gpu.iqgrids import HEADER, cuda_source

    assert HEADER.read_text() == cuda_source(), "ops/gpu/iqgrids.cuh is stale: python -m kvrun.ops.gpu.iqgrids"


def test_grid_tables():
    assert [g.shape for g in (LQ.IQ2XXS_GRID, LQ.IQ2XS_GRID, LQ.IQ2S_GRID, LQ.IQ3XXS_GRID, LQ.IQ3S_GRID, LQ.IQ1S_GRID)] == [
        (256, 8), (512, 8), (1024, 8), (256, 4), (512, 4), (2048, 8)]  # fmt: skip
    assert set(np.unique(LQ.IQ2S_GRID)) == {8, 25, 43} and set(np.unique(LQ.IQ3XXS_GRID)) <= set(range(4, 63))
    assert set(np.unique(LQ.IQ3S_GRID)) == set(range(1, 16, 2)) and set(np.unique(LQ.IQ1S_GRID)) == {-1, 0, 1}
    # a few entries as ggml-common.h spells them (one u64 / u32 a row, value j in byte j)
    assert LQ.IQ2XXS_GRID[[1, 255]].astype(np.uint8).view(np.uint64).ravel().tolist() == [0x080808080808082B, 0x2B2B2B1908081908]
    assert LQ.IQ3XXS_GRID[[1, 255]].astype(np.uint8).view(np.uint32).ravel().tolist() == [0x04040414, 0x3E341C04]
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in i])
    np.testing.assert_array_equal(LQ.KSIGNS, i | parity << 7)


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
def test_every_grid_entry(qtype):
    n_groups = 16 * N_ENTRIES[qtype]  # groups of 8 weights: each entry drawn ~16 times
    k = 512
    n = max(16, n_groups * 8 // k)
    w = _weights(qtype, n, k, seed=int(qtype))
    W = _ref(w, qtype, n, k)
    got = np.full((n, k), np.nan, np.float32)
    Q.get_rows(w, qtype, np.arange(n), got)
    np.testing.assert_array_equal(got.view(np.uint32), W.astype(np.float32).view(np.uint32))
    x = (np.random.default_rng(7).standard_normal((9, k)) * 3).astype(np.float32)
    xq = quantize_x8(x)
    out = np.full(n, np.nan, np.float32)
    Q.matvec(w, qtype, x[0], out)
    assert _rel(out, W @ xq[0]) < 1e-5
    if Q.HAVE_VNNI:
        from kvrun.ops.cpu import qgemm

        outm = np.full((9, n), np.nan, np.float32)
        qgemm.matmul(w, Q.kernel_kind(qtype), x, outm, threads=1)
        assert _rel(outm, xq @ W.T) < 1e-5


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
def test_block_size(qtype):
    """256 weights a block, the bytes gguf says, and rows of another length refused."""
    assert Q._type(qtype)[1:] == GGML_QUANT_SIZES[qtype] == (256, LQ.quant_info(qtype).type_size)
    w = _weights(qtype, 4, 256)
    with pytest.raises(ValueError):
        Q.matvec(w, qtype, np.zeros(512, np.float32), np.zeros(4, np.float32))
