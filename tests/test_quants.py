"""Specification of ``kvrun.loaders.quants``: GGML block layouts and dequantizers.

* The table knows exactly F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
  Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, the i-quants IQ3_XXS, IQ3_S,
  IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, MXFP4 and the ternary TQ1_0, TQ2_0, with gguf's block sizes and a documented
  field layout per type; anything else is an ``UnsupportedQuantType`` naming it.
* ``dequantize`` and ``dequantize_rows`` equal ``gguf.quants.dequantize`` bit
  for bit, on random blocks and on every tensor of the real models.
* ``dequantize_rows`` reads only the rows asked for.
"""

from __future__ import annotations

import ast
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFReader
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from reference import shared_reader
from kvrun.loaders import quants as Q
from kvrun.loaders.quants import (
    SUPPORTED_TYPES,
    QuantType,
    UnsupportedQuantType,
    dequantize,
    dequantize_rows,
    is_supported,
    quant_info,
    row_bytes,
)

ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
             T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M, T.MXFP4,
             T.TQ1_0, T.TQ2_0]
IDS = [t.name for t in ALL_TYPES]

# byte offset of every field of every block, as the module docstring documents them
LAYOUTS = {
    T.F32: {"f32": 0},
    T.F16: {"f16": 0},
    T.BF16: {"bf16": 0},
    T.Q4_0: {"d": 0, "qs": 2},
    T.Q4_1: {"d": 0, "m": 2, "qs": 4},
    T.Q5_0: {"d": 0, "qh": 2, "qs": 6},
    T.Q5_1: {"d": 0, "m": 2, "qh": 4, "qs": 8},
    T.Q8_0: {"d": 0, "qs": 2},
    T.Q2_K: {"scales": 0, "qs": 16, "d": 80, "dmin": 82},
    T.Q3_K: {"hmask": 0, "qs": 32, "scales": 96, "d": 108},
    T.Q4_K: {"d": 0, "dmin": 2, "scales": 4, "qs": 16},
    T.Q5_K: {"d": 0, "dmin": 2, "scales": 4, "qh": 16, "qs": 48},
    T.Q6_K: {"ql": 0, "qh": 128, "scales": 192, "d": 208},
    T.IQ4_NL: {"d": 0, "qs": 2},
    T.IQ4_XS: {"d": 0, "scales_h": 2, "scales_l": 4, "qs": 8},
    T.IQ3_XXS: {"d": 0, "qs": 2, "scales_signs": 66},
    T.IQ3_S: {"d": 0, "qs": 2, "qh": 66, "signs": 74, "scales": 106},
    T.IQ2_XXS: {"d": 0, "qs": 2},
    T.IQ2_XS: {"d": 0, "qs": 2, "scales": 66},
    T.IQ2_S: {"d": 0, "qs": 2, "signs": 34, "qh": 66, "scales": 74},
    T.IQ1_S: {"d": 0, "qs": 2, "qh": 34},
    T.IQ1_M: {"qs": 0, "qh": 32, "scales": 48},
    T.MXFP4: {"e": 0, "qs": 1},
    T.TQ1_0: {"qs": 0, "qh": 48, "d": 52},
    T.TQ2_0: {"qs": 0, "d": 64},
}

# logical shapes, the last dimension in blocks
SHAPES_IN_BLOCKS = [(1,), (3, 1), (7, 3), (2, 3, 5), (64, 8)]


# ----------------------------------------------------------------- helpers
def random_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` finite float16 scales: mostly ordinary magnitudes, some zeros, subnormals and extremes."""
    v = rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 0, n)
    special = np.array([0.0, -0.0, 2.0**-24, -(2.0**-20), 6.1e-5, 1.0, 65504.0, -65504.0])
    pick = rng.random(n) < 0.1
    v[pick] = rng.choice(special, pick.sum())
    h = v.astype(np.float16)
    assert np.isfinite(h).all()
    return h


def random_blocks(rng: np.random.Generator, qtype: int, n_blocks: int) -> np.ndarray:
    """``[n_blocks, type_size]`` valid blocks: random quant bits, finite f16/bf16/f32 fields."""
    info = quant_info(qtype)
    b = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    for name, size in info.fields:
        o = info.offset(name)
        if name in ("d", "m", "dmin", "f16"):
            assert size == 2
            b[:, o : o + 2] = random_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        elif name == "bf16":
            f = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-5, 3, n_blocks)).astype(np.float32)
            b[:, o : o + 2] = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
        elif name == "f32":
            f = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-30, 30, n_blocks)).astype(np.float32)
            b[:, o : o + 4] = f.view(np.uint8).reshape(n_blocks, 4)
        elif name == "e":  # MXFP4's E8M0 scale, subnormals included; up to 250 no weight overflows (gguf would warn)
            b[:, o] = rng.integers(0, 251, n_blocks)
    if qtype == T.IQ1_M:  # its f16 d is the top nibbles of the four u16 scales (bytes 48-55)
        h = random_halves(rng, n_blocks).view(np.uint16)
        for k in range(4):
            b[:, 49 + 2 * k] = (b[:, 49 + 2 * k] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    return b


def logical_shape(qtype: int, shape_in_blocks: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape_in_blocks[:-1], shape_in_blocks[-1] * quant_info(qtype).block_size)


def random_tensor(rng: np.random.Generator, qtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """Raw bytes ``[n_rows, row_bytes]`` of a random tensor of logical ``shape``."""
    info = quant_info(qtype)
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    n_blocks = n_rows * shape[-1] // info.block_size
    return random_blocks(rng, qtype, n_blocks).reshape(n_rows, row_bytes(qtype, shape[-1]))


def reference(raw2d: np.ndarray, qtype: int) -> np.ndarray:
    """gguf's float32 decoding of ``[n_rows, row_bytes]`` bytes."""
    return np.asarray(gguf_dequantize(np.ascontiguousarray(raw2d).view(np.uint8), T(qtype)), dtype=np.float32)


def assert_bit_exact(ours: np.ndarray, ref: np.ndarray, qtype: int, raw: np.ndarray) -> None:
    """Equal float32 bits; on failure name the first and the worst differing block and its bytes."""
    info = quant_info(qtype)
    assert ours.dtype == np.float32
    assert ours.size == ref.size, (ours.shape, ref.shape)
    a = ours.reshape(-1, info.block_size)
    r = ref.reshape(-1, info.block_size)
    bad = np.flatnonzero((a.view(np.uint32) != r.view(np.uint32)).any(axis=1))
    if bad.size == 0:
        return
    with np.errstate(all="ignore"):
        err = np.nan_to_num(np.abs(a[bad].astype(np.float64) - r[bad]), nan=np.inf).max(axis=1)
    worst = int(bad[np.argmax(err)])
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, info.type_size)
    j = int(np.flatnonzero(a[worst].view(np.uint32) != r[worst].view(np.uint32))[0])
    pytest.fail(
        f"{info.name}: {bad.size} of {a.shape[0]} blocks differ from gguf; first block {bad[0]}, "
        f"worst block {worst} (max |diff| {err.max():.3g}), first bad element {j}: "
        f"ours {a[worst, j]!r} ({a[worst, j].view(np.uint32):#010x}) vs gguf {r[worst, j]!r} "
        f"({r[worst, j].view(np.uint32):#010x}); block bytes {blocks[worst].tobytes().hex()}"
    )


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ----------------------------------------------------------------- the table
def test_supported_types_are_exactly_these() -> None:
    assert set(SUPPORTED_TYPES) == {int(t) for t in ALL_TYPES}
    assert all(type(t) is int for t in SUPPORTED_TYPES)
    assert len(SUPPORTED_TYPES) == len(set(SUPPORTED_TYPES))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_quant_info_matches_gguf_sizes(qtype: T) -> None:
    info = quant_info(qtype)
    assert isinstance(info, QuantType)
    assert (info.qtype, info.name) == (int(qtype), qtype.name)
    assert (info.block_size, info.type_size) == GGML_QUANT_SIZES[qtype]
    assert quant_info(int(qtype)) == info
    assert is_supported(qtype) and is_supported(int(qtype))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_documented_block_layout(qtype: T) -> None:
    info = quant_info(qtype)
    assert sum(n for _, n in info.fields) == info.type_size
    assert {name: info.offset(name) for name, _ in info.fields} == LAYOUTS[qtype]
    with pytest.raises(KeyError):
        info.offset("nope")


@pytest.mark.parametrize("qtype", [T.Q8_1, T.Q8_K, 999, -1], ids=str)
def test_unsupported_type_is_named(qtype: int) -> None:
    assert not is_supported(qtype)
    label = qtype.name if isinstance(qtype, T) else str(qtype)
    for call in (
        lambda: quant_info(qtype),
        lambda: row_bytes(qtype, 256),
        lambda: dequantize(np.zeros(256, np.uint8), qtype, (256,)),
        lambda: dequantize_rows(np.zeros((1, 256), np.uint8), qtype, 0),
    ):
        with pytest.raises(UnsupportedQuantType) as e:
            call()
        msg = str(e.value)
        assert label in msg
        assert "Q4_K" in msg and "Q8_0" in msg and "BF16" in msg  # lists what is supported
        assert isinstance(e.value, ValueError)
        assert e.value.qtype == qtype


def test_is_supported_rejects_non_ids() -> None:
    assert not is_supported("Q4_0")  # type: ignore[arg-type]
    assert not is_supported(None)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedQuantType, match="Q4_0"):
        quant_info("Q4_0")  # type: ignore[arg-type]


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_row_bytes(qtype: T) -> None:
    bs, ts = GGML_QUANT_SIZES[qtype]
    assert row_bytes(qtype, 0) == 0
    assert row_bytes(qtype, bs) == ts
    assert row_bytes(qtype, 5 * bs) == 5 * ts
    if bs > 1:
        with pytest.raises(ValueError, match=str(bs)):
            row_bytes(qtype, bs + 1)
    with pytest.raises(ValueError):
        row_bytes(qtype, -bs)


def test_row_bytes_examples() -> None:
    assert row_bytes(T.Q8_0, 576) == 612  # SmolLM2 token_embd row
    assert row_bytes(T.Q8_0, 640) == 680  # Gemma 3 token_embd row
    assert row_bytes(T.Q4_1, 1536) == 960
    assert row_bytes(T.F32, 3) == 12
    with pytest.raises(ValueError, match="Q4_K"):
        row_bytes(T.Q4_K, 640)  # not a multiple of 256


def test_module_imports_nothing_from_kvrun() -> None:
    tree = ast.parse(Path(Q.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "numpy", "gguf", "math", "operator", "os", "threading", "collections", "concurrent", "dataclasses", "typing"}


# ----------------------------------------------------------------- dequantize == gguf, bit for bit
@pytest.mark.parametrize("shape_in_blocks", SHAPES_IN_BLOCKS, ids=str)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_dequantize_matches_gguf(qtype: T, shape_in_blocks: tuple[int, ...], rng: np.random.Generator) -> None:
    shape = logical_shape(qtype, shape_in_blocks)
    raw = random_tensor(rng, qtype, shape)
    out = dequantize(raw.reshape(-1), qtype, shape)
    assert out.shape == shape and out.dtype == np.float32
    assert_bit_exact(out, reference(raw, qtype), qtype, raw)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_dequantize_large_tensor_matches_gguf(qtype: T, rng: np.random.Generator) -> None:
    """Big enough to be decoded in chunks on several threads."""
    shape = (384, 4096 if qtype != T.F32 else 2048)
    raw = random_tensor(rng, qtype, shape)
    assert_bit_exact(dequantize(raw, qtype, shape), reference(raw, qtype), qtype, raw)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_dequantize_uneven_chunks_on_threads(qtype: T, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    info = quant_info(qtype)
    monkeypatch.setattr(Q, "_CHUNK_WEIGHTS", 3 * info.block_size)
    monkeypatch.setattr(Q, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(Q, "_n_threads", lambda: 3)
    shape = logical_shape(qtype, (5, 7))  # 35 blocks: 11 chunks of 3 and one of 2
    raw = random_tensor(rng, qtype, shape)
    assert_bit_exact(dequantize(raw, qtype, shape), reference(raw, qtype), qtype, raw)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_any_bytes_match_gguf_without_warnings(qtype: T, rng: np.random.Generator) -> None:
    """Arbitrary bytes (NaN/inf scales included) decode like gguf, silently."""
    shape = logical_shape(qtype, (16, 32))
    raw = rng.integers(0, 256, (16, row_bytes(qtype, shape[-1])), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(raw, qtype, shape)
    with np.errstate(all="ignore"):
        ref = reference(raw, qtype)
    assert_bit_exact(out, ref, qtype, raw)


def test_mxfp4_scale_is_half_the_e8m0_value_for_every_byte() -> None:
    """MXFP4's scale byte e means 2^(e - 127) and its table holds the E2M1 values doubled, so a weight is
    2^(e - 128) * value: the subnormals 2^-128, 2^-127 for e = 0, 1 and 2^127 (not NaN) for 255, as
    ggml's GGML_E8M0_TO_FP32_HALF; 2^127 times 2 or more overflows to inf, silently, as in gguf."""
    raw = np.zeros((256, 17), np.uint8)
    raw[:, 0] = np.arange(256)
    raw[:, 1:] = np.arange(16, dtype=np.uint8) * 0x11  # codes 0..15, low and high nibbles alike
    want = np.ldexp(np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float64), (np.arange(256) - 128)[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(raw, T.MXFP4, (256, 32))
    with np.errstate(over="ignore"):
        assert np.array_equal(out, np.tile(want, 2).astype(np.float32))
    assert np.isinf(out[255, 7]) and float(out[255, 1]) == 2.0**127 and float(out[0, 1]) == 2.0**-128
    with np.errstate(all="ignore"):
        assert_bit_exact(out, reference(raw, T.MXFP4), T.MXFP4, raw)


def test_dequantize_accepts_any_byte_container(rng: np.random.Generator, tmp_path: Path) -> None:
    shape = (6, 64)
    raw = random_tensor(rng, T.Q4_1, shape)
    want = reference(raw, T.Q4_1)
    # a read-only memory map, as the GGUF loader hands them out
    f = tmp_path / "t.bin"
    raw.tofile(f)
    mm = np.memmap(f, dtype=np.uint8, mode="r")
    out = dequantize(mm, T.Q4_1, shape)
    assert_bit_exact(out, want, T.Q4_1, raw)
    assert type(out) is np.ndarray and out.flags.writeable and not np.shares_memory(out, mm)
    # [n_rows, row_bytes] and non-contiguous views (copied, C order)
    wide = np.zeros((6, raw.shape[1] + 7), np.uint8)
    wide[:, : raw.shape[1]] = raw
    assert_bit_exact(dequantize(wide[:, : raw.shape[1]], T.Q4_1, shape), want, T.Q4_1, raw)
    # F32 tensors may come as float32 arrays (gguf.GGUFReader); the result is a copy
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    out = dequantize(f32, T.F32, (3, 5))
    assert np.array_equal(out.view(np.uint32), f32.view(np.uint32)) and not np.shares_memory(out, f32)


def test_dequantize_checks_sizes(rng: np.random.Generator) -> None:
    raw = random_tensor(rng, T.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(raw, T.Q8_0, (5, 64))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(raw.reshape(-1)[:-1], T.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="blocks of 32"):
        dequantize(raw, T.Q8_0, (8, 34))
    with pytest.raises(ValueError):
        dequantize(raw, T.Q8_0, ())
    assert dequantize(np.zeros(0, np.uint8), T.Q8_0, (0, 64)).shape == (0, 64)


# ----------------------------------------------------------------- dequantize_rows
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=IDS)
def test_dequantize_rows_equals_slicing_full_result(qtype: T, rng: np.random.Generator) -> None:
    shape = logical_shape(qtype, (37, 3))
    raw = random_tensor(rng, qtype, shape)
    full = dequantize(raw, qtype, shape)
    for rows in (0, 36, -1, [3, 1, 3], np.array([[0, 2], [5, 5]]), np.array([], np.int64), np.arange(37, dtype=np.uint32)):
        got = dequantize_rows(raw, qtype, rows)
        want = full[np.asarray(rows, dtype=np.intp)]
        assert got.shape == want.shape == np.shape(rows) + (shape[-1],)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), rows


def test_dequantize_rows_errors(rng: np.random.Generator) -> None:
    raw = random_tensor(rng, T.Q8_0, (10, 64))
    with pytest.raises(IndexError):
        dequantize_rows(raw, T.Q8_0, [0, 10])
    with pytest.raises(TypeError):
        dequantize_rows(raw, T.Q8_0, np.array([1.0]))
    with pytest.raises(ValueError, match="n_rows"):
        dequantize_rows(raw.reshape(-1), T.Q8_0, 0)
    with pytest.raises(ValueError, match="34"):
        dequantize_rows(raw[:, :-1], T.Q8_0, 0)


def test_dequantize_rows_reads_only_the_rows_asked_for(rng: np.random.Generator) -> None:
    """A 10M-row table (a zero-stride view: 10 GB if it were decoded whole) costs a few rows."""
    row = random_tensor(rng, T.Q6_K, (1, 256))
    table = np.broadcast_to(row, (10_000_000, row.shape[1]))
    want = reference(row, T.Q6_K)
    t0 = time.perf_counter()
    got = dequantize_rows(table, T.Q6_K, [0, 9_999_999, 1234567])
    assert time.perf_counter() - t0 < 0.5
    for r in got:
        assert np.array_equal(r.view(np.uint32), want[0].view(np.uint32))


# ----------------------------------------------------------------- real models
SAMPLE_ROWS = 64


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real_model(request: pytest.FixtureRequest) -> GGUFReader:
    """The real model through conftest's fixtures (pulled through kvrun's store when absent)."""
    return shared_reader(request.getfixturevalue(f"{request.param}_path"))


def _tensor_rows(tensor) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """A GGUFReader tensor as raw ``[n_rows, row_bytes]`` uint8 and its ``n_cols``."""
    n_cols = int(tensor.shape[0])  # ggml ne[0] is the contiguous dimension
    data = tensor.data
    return data.reshape(-1, data.shape[-1]).view(np.uint8), n_cols


@pytest.mark.real_model
def test_real_model_every_tensor_matches_gguf(real_model: GGUFReader) -> None:
    """The first rows of every tensor decode like gguf; every tensor's type is supported."""
    seen = set()
    for tensor in real_model.tensors:
        qtype = int(tensor.tensor_type)
        seen.add(tensor.tensor_type.name)
        assert is_supported(qtype), f"{tensor.name}: {tensor.tensor_type.name}"
        rows, n_cols = _tensor_rows(tensor)
        assert rows.shape[1] == row_bytes(qtype, n_cols), tensor.name
        assert rows.shape[0] * n_cols == int(tensor.n_elements), tensor.name
        sample = rows[:SAMPLE_ROWS]
        out = dequantize(sample, qtype, (sample.shape[0], n_cols))
        assert_bit_exact(out, reference(sample, qtype), qtype, sample)
    assert seen & {"Q4_1", "Q4_K", "Q6_K", "Q5_0"}, seen


@pytest.mark.real_model
def test_real_model_embedding_rows(real_model: GGUFReader) -> None:
    """Embedding lookups: scattered rows of token_embd, the last one included."""
    tensor = next(t for t in real_model.tensors if t.name == "token_embd.weight")
    rows, n_cols = _tensor_rows(tensor)
    qtype = int(tensor.tensor_type)
    idx = np.array([0, 1, 2, 17, rows.shape[0] // 2, rows.shape[0] - 1, 1])
    got = dequantize_rows(rows, qtype, idx)
    assert got.shape == (idx.size, n_cols)
    assert_bit_exact(got, reference(rows[idx], qtype), qtype, rows[idx])


@pytest.mark.real_model
def test_real_model_whole_embedding_table(real_model: GGUFReader) -> None:
    """The largest tensor, decoded whole (chunked, threaded) from the memory map."""
    tensor = next(t for t in real_model.tensors if t.name == "token_embd.weight")
    rows, n_cols = _tensor_rows(tensor)
    qtype = int(tensor.tensor_type)
    out = dequantize(tensor.data, qtype, (rows.shape[0], n_cols))
    assert_bit_exact(out, reference(rows, qtype), qtype, rows)
