"""Specification of ``kvrun imatrix`` and ``kvrun quantize --imatrix`` (runtime/imatrix.py, ops/cpu/iquantize.py),
and of IQ4_NL / IQ4_XS output: llama-imatrix and llama-quantize without llama.cpp.

* The quantizers are ggml's, byte for byte: for every type (Q4_0 ... Q6_K, IQ4_NL, IQ4_XS), on Gaussian rows,
  heavy-tailed rows with outliers, zero and one-signed rows, with no importance matrix, with one and with one that
  has zeros, the bytes are ``ggml_quantize_chunk``'s (tests/fixtures/imatrix_quants.json, made by llama.cpp:
  tools/make_imatrix_fixture.py).
* Whole models: with an importance matrix and for the IQ4 file types, every tensor gets the type and the bytes
  ``llama_model_quantize`` gives it (the recipe's imatrix rules: Q4_0's first ffn_down layers to Q4_1, IQ4's to
  Q5_K only without a matrix; IQ4's attn_v at Q5_K under grouped-query attention; IQ4_XS's fallback to IQ4_NL).
* The collection is llama-imatrix's: on a tiny Llama, the sums of squared activations entering every ``blk.*``
  matrix agree with llama.cpp's (gathered by a callback on its own forward pass) within float rounding, and the
  counts exactly.
* The file is llama.cpp's GGUF imatrix (``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``,
  ``<name>.in_sum2``, ``<name>.counts``); the legacy .dat is read too; a bad or mismatched file is one line.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_imatrix_fixture import (  # noqa: E402
    COLLECT_CHUNKS, COLLECT_CTX, COLLECT_TEXT, MODEL_CASES, TYPES, cases, model_case_key, model_imatrix,
)  # fmt: skip
from tiny_quantize import write_quantize_model  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402

from kvrun.cli import main  # noqa: E402
from kvrun.loaders.gguf_file import GGUFFile  # noqa: E402
from kvrun.runtime.imatrix import Imatrix, collect_imatrix, load_imatrix  # noqa: E402
from kvrun.runtime.quantize import encode, quantize_model  # noqa: E402

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "imatrix_quants.json").read_text())
CASES = cases()


# ----------------------------------------------------------------------------------------------- the quantizers
def test_the_rows_are_the_ones_llama_cpp_quantized():
    for name, (rows, qw) in CASES.items():
        digest = hashlib.sha256(rows.tobytes() + (qw.tobytes() if qw is not None else b"")).hexdigest()[:16]
        assert digest == FIXTURE["inputs"][name], f"make_imatrix_fixture.cases() makes other {name} rows than the fixture's"


@pytest.mark.parametrize("type_name", list(TYPES))
def test_every_type_is_ggml_quantize_chunks_bytes_with_and_without_an_imatrix(type_name):
    wrong = []
    for name, (rows, qw) in CASES.items():
        got = encode(rows, T[type_name], qw).tobytes()
        want = FIXTURE["cases"][f"{type_name}:{name}"]
        if hashlib.sha256(got).hexdigest() != want["sha256"]:
            wrong.append(f"{name} (first block: {got.hex()[:48]} vs llama.cpp's {want['head'][:48]})")
    assert not wrong, f"{type_name} differs from ggml's on {wrong}"


def test_the_importance_matrix_changes_the_rounding_where_ggml_uses_it():
    rows, qw = CASES["heavy/imatrix"]
    for t in ("Q4_K", "Q2_K", "Q4_0", "IQ4_XS"):
        assert encode(rows, T[t], qw).tobytes() != encode(rows, T[t]).tobytes(), t
    assert encode(rows, T.Q8_0, qw).tobytes() == encode(rows, T.Q8_0).tobytes()  # (Q8_0 ignores it, as ggml)


# ----------------------------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The tiny models llama.cpp quantized, and their importance matrices as kvrun's imatrix files."""
    d = tmp_path_factory.mktemp("imatrix")
    out = {}
    for name, sha in FIXTURE["models"].items():
        p = write_quantize_model(d / f"{name}.gguf", name)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha
        w = model_imatrix(p)
        im = Imatrix({k: v.reshape(1, -1) for k, v in w.items()}, {k: np.ones(1, np.float32) for k in w}, ["fixture"], 1, 1)
        im.save(d / f"{name}.imatrix.gguf")
        out[name] = (p, d / f"{name}.imatrix.gguf")
    return out


@pytest.mark.parametrize("model, type_name, with_imatrix", MODEL_CASES, ids=[model_case_key(*c) for c in MODEL_CASES])
def test_every_tensor_has_llama_quantizes_type_and_bytes(models, tmp_path, model, type_name, with_imatrix):
    inp, imatrix = models[model]
    want = FIXTURE["model_cases"][model_case_key(model, type_name, with_imatrix)]
    quantize_model(inp, tmp_path / "q.gguf", type_name, imatrix=imatrix if with_imatrix else None)
    g = GGUFFile(tmp_path / "q.gguf")
    got = {n: f"{t.type_name}:{hashlib.sha256(t.data.tobytes()).hexdigest()[:16]}" for n, t in g.tensors.items()}
    assert g.get("general.file_type") == want["file_type"]
    g.close()
    wrong = {n: (got.get(n), w) for n, w in want["tensors"].items() if got.get(n) != w}
    assert not wrong, f"{len(wrong)} tensors differ from llama.cpp's (got, llama.cpp): {dict(list(wrong.items())[:4])}"


def test_iq4_xs_takes_llama_cpps_mix(models, tmp_path):
    inp, imatrix = models["untied"]
    quantize_model(inp, tmp_path / "plain.gguf", "IQ4_XS")
    quantize_model(inp, tmp_path / "im.gguf", "IQ4_XS", imatrix=imatrix)
    plain, im = GGUFFile(tmp_path / "plain.gguf"), GGUFFile(tmp_path / "im.gguf")
    assert plain.tensor("output.weight").type_name == "Q6_K"
    assert plain.tensor("blk.3.attn_q.weight").type_name == "IQ4_XS"
    # ffn_down's rows of 320 are no multiple of 256: IQ4_XS falls back to IQ4_NL; the first eighth of the
    # layers gets Q5_K (falling back to Q5_1), but only without an importance matrix
    assert plain.tensor("blk.0.ffn_down.weight").type_name == "Q5_1"
    assert im.tensor("blk.0.ffn_down.weight").type_name == "IQ4_NL"
    assert plain.tensor("blk.5.ffn_down.weight").type_name == "IQ4_NL"


# ----------------------------------------------------------------------------------------------- the collection
def test_the_sums_and_counts_are_llama_imatrixs(tmp_path):
    want = FIXTURE["collect"]
    p = write_tiny_model(tmp_path / "tiny.gguf", "llama")
    assert hashlib.sha256(p.read_bytes()).hexdigest() == want["model"]
    im = collect_imatrix(p, COLLECT_TEXT, COLLECT_CTX, COLLECT_CHUNKS)
    assert im.chunk_count == want["chunks"] and im.chunk_size == COLLECT_CTX
    assert sorted(im.sums) == sorted(want["sums"])  # every blk.* matrix, nothing else (not the output head)
    for name, sums in want["sums"].items():
        assert int(im.counts[name][0]) == want["counts"][name], name
        np.testing.assert_allclose(im.sums[name][0], np.array(sums, np.float32), rtol=2e-4, err_msg=name)


def test_the_file_is_llama_cpps_gguf_imatrix_and_reads_back(tmp_path):
    sums = {"blk.0.ffn_up.weight": np.arange(8, dtype=np.float32).reshape(1, 8) * 3,
            "blk.0.ffn_exps.weight": np.ones((2, 4), np.float32)}  # fmt: skip
    counts = {"blk.0.ffn_up.weight": np.array([3], np.float32), "blk.0.ffn_exps.weight": np.array([2, 0], np.float32)}
    Imatrix(sums, counts, ["calib.txt"], 5, 512).save(tmp_path / "m.gguf")
    r = GGUFReader(tmp_path / "m.gguf")
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["calib.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 5 and r.fields["imatrix.chunk_size"].contents() == 512
    assert "general.architecture" not in r.fields
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in r.tensors}  # (ggml order: columns first)
    assert shapes["blk.0.ffn_up.weight.in_sum2"] == (8, 1) and shapes["blk.0.ffn_up.weight.counts"] == (1, 1)
    assert shapes["blk.0.ffn_exps.weight.in_sum2"] == (4, 2) and shapes["blk.0.ffn_exps.weight.counts"] == (1, 2)
    means = load_imatrix(tmp_path / "m.gguf").means()
    np.testing.assert_array_equal(means["blk.0.ffn_up.weight"], np.arange(8, dtype=np.float32))
    # an expert that saw no token weighs its columns 1, as llama-quantize
    np.testing.assert_array_equal(means["blk.0.ffn_exps.weight"], [0.5] * 4 + [1.0] * 4)


def test_the_legacy_dat_is_read(tmp_path):
    vals = np.array([2.0, 4.0, 6.0], np.float32)  # (the .dat holds mean * ncall)
    name = b"blk.0.attn_q.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 2, 3) + vals.tobytes()
    raw += struct.pack("<i", 7) + struct.pack("<i", 4) + b"wiki"
    (tmp_path / "old.dat").write_bytes(raw)
    im = load_imatrix(tmp_path / "old.dat")
    np.testing.assert_array_equal(im.means()["blk.0.attn_q.weight"], [1.0, 2.0, 3.0])
    assert im.chunk_count == 7 and im.datasets == ["wiki"]


# ----------------------------------------------------------------------------------------------- the commands
def test_kvrun_imatrix_then_quantize_with_it(tmp_path, models):
    text = tmp_path / "calib.txt"
    text.write_text(COLLECT_TEXT)
    tiny = write_tiny_model(tmp_path / "tiny.gguf", "llama")
    r = CliRunner().invoke(main, ["imatrix", str(tiny), "-f", str(text), "-o", str(tmp_path / "im.gguf"), "--ctx", "64"])
    assert r.exit_code == 0, r.output
    assert "14 tensors over 10 chunks of 64 tokens" in r.output  # (640 tokens)
    inp, imatrix = models["untied"]
    r = CliRunner().invoke(main, ["quantize", str(inp), str(tmp_path / "q.gguf"), "IQ4_XS", "--imatrix", str(imatrix)])
    assert r.exit_code == 0, r.output
    assert GGUFFile(tmp_path / "q.gguf").tensor("blk.1.attn_q.weight").type_name == "IQ4_XS"


def test_bad_importance_matrices_are_one_line(tmp_path, models):
    inp, _ = models["untied"]
    (tmp_path / "junk.dat").write_bytes(b"\x00" * 3)
    for im, says in ((tmp_path / "nope.gguf", "no such importance matrix"), (tmp_path / "junk.dat", "not an importance matrix")):
        r = CliRunner().invoke(main, ["quantize", str(inp), str(tmp_path / "q.gguf"), "Q4_K_M", "--imatrix", str(im)])
        assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output, r.output
    # another model's matrix: its columns do not fit
    Imatrix({"blk.0.attn_q.weight": np.ones((1, 100), np.float32)}, {"blk.0.attn_q.weight": np.ones(1, np.float32)}).save(
        tmp_path / "other.gguf")  # fmt: skip
    r = CliRunner().invoke(main, ["quantize", str(inp), str(tmp_path / "q.gguf"), "Q4_K_M", "--imatrix", str(tmp_path / "other.gguf")])
    assert r.exit_code != 0 and "another model" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "q.gguf").exists()
