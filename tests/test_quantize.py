"""Specification of ``kvrun quantize`` (runtime/quantize.py, ops/cpu/kquantize.py): llama-quantize without llama.cpp.

* Tensor for tensor, the output is llama.cpp's: for every case of ``tiny_quantize.CASES`` (each file type on an
  F32 and an F16 model, a Q4_1 one requantized, the --pure / --output-tensor-type / --token-embedding-type
  options) every tensor gets the type llama.cpp gives it and the same bytes (tests/fixtures/quantize_cases.json,
  made by llama.cpp's own quantizer: tools/make_quantize_fixtures.py).  That covers the recipe (Q6_K output
  head, the "_M" mixes' layers, the fallback of rows that are no multiple of 256) and the K-quant kernels.
* The metadata is the input's, with ``general.file_type`` the new type and ``general.quantization_version`` 2;
  the tensors come in the input's order.
* A quantized input is refused without --allow-requantize; an unknown type is one line naming the known ones;
  no file is left behind by a failure.
* kvrun runs what it writes, close to the float model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

from tiny_quantize import CASES, case_key, write_quantize_model
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.quants import dequantize
from kvrun.ops.cpu.kquantize import quantize_k
from kvrun.runtime.quantize import FILE_TYPES, llama_order, quantize_model, use_more_bits

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "quantize_cases.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny input models, byte for byte the ones llama.cpp quantized for the fixture."""
    d = tmp_path_factory.mktemp("quantize")
    paths = {}
    for name, sha in FIXTURE["models"].items():
        p = write_quantize_model(d / f"{name}.gguf", name)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, f"tiny_quantize writes another {name} than the fixture's"
        paths[name] = p
    return paths


def _digest(path: Path) -> dict[str, str]:
    g = GGUFFile(path)
    try:
        return {n: f"{t.type_name}:{hashlib.sha256(t.data.tobytes()).hexdigest()[:16]}" for n, t in g.tensors.items()}
    finally:
        g.close()


@pytest.mark.parametrize("model, type_name, opts", CASES, ids=[case_key(*c) for c in CASES])
def test_every_tensor_has_llama_cpps_type_and_bytes(models, tmp_path, model, type_name, opts):
    want = FIXTURE["cases"][case_key(model, type_name, opts)]
    out = tmp_path / "out.gguf"
    quantize_model(models[model], out, type_name, **opts)
    got = _digest(out)
    assert set(got) == set(want["tensors"])
    wrong = {n: (got[n], w) for n, w in want["tensors"].items() if got[n] != w}
    assert not wrong, f"{len(wrong)} tensors differ from llama.cpp's (got, llama.cpp): {dict(list(wrong.items())[:4])}"
    assert GGUFFile(out).get("general.file_type") == want["file_type"] == int(FILE_TYPES[type_name].ftype)


def test_the_mix_gives_some_layers_more_bits_and_the_output_head_q6_k(models, tmp_path):
    quantize_model(models["untied"], tmp_path / "m.gguf", "Q4_K_M")
    g = GGUFFile(tmp_path / "m.gguf")
    assert g.tensor("output.weight").type_name == "Q6_K"
    assert g.tensor("token_embd.weight").type_name == "Q4_K"
    # 8 layers: the first and last eighth and every third between (layers 0, 3, 6, 7)
    assert [use_more_bits(i, 8) for i in range(8)] == [True, False, False, True, False, False, True, True]
    assert [g.tensor(f"blk.{i}.attn_v.weight").type_name for i in range(8)] == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    # ffn_down's rows of 320 are no multiple of 256: Q6_K falls back to Q8_0, Q4_K to Q5_0
    assert [g.tensor(f"blk.{i}.ffn_down.weight").type_name for i in range(8)] == ["Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q8_0"]
    assert g.tensor("blk.0.attn_norm.weight").type_name == "F32"  # 1-D: never quantized


def _plain(v):
    """A metadata value as plain Python (string arrays and numeric arrays as lists)."""
    return v.tolist() if isinstance(v, np.ndarray) else list(v) if not isinstance(v, (str, int, float, bool)) else v


def test_metadata_is_copied_with_the_new_file_type_and_tensors_keep_their_order(models, tmp_path):
    quantize_model(models["tied"], tmp_path / "q.gguf", "Q5_K_M")
    src, out = GGUFFile(models["tied"]), GGUFFile(tmp_path / "q.gguf")
    assert out.get("general.file_type") == 17 and out.get("general.quantization_version") == 2
    for key, val in src.metadata.items():
        if key != "general.file_type":
            assert out.value_types[key] == src.value_types[key], key
            assert _plain(out.metadata[key]) == _plain(val), key
    assert list(out.tensors) == list(src.tensors)  # the input's order, not llama.cpp's by-layer one
    assert llama_order(["blk.10.a", "blk.2.b", "output.weight", "blk.2.a", "token_embd.weight"]) == [
        "output.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]  # fmt: skip


def test_a_quantized_input_needs_allow_requantize_and_a_failure_leaves_no_file(models, tmp_path):
    out = tmp_path / "r.gguf"
    with pytest.raises(KvrunError, match="already Q4_1.*--allow-requantize"):
        quantize_model(models["requant"], out, "Q4_K_M")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_arguments_are_one_line_errors(models, tmp_path):
    r = CliRunner().invoke(main, ["quantize", str(models["tied"]), str(tmp_path / "o.gguf"), "Q7_K"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "unknown quantization type 'Q7_K'" in r.output and "Q4_K_M" in r.output
    for argv, says in (
        ([str(models["tied"]), str(models["tied"]), "Q8_0"], "would overwrite the input"),
        ([str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"), "Q8_0"], "no such file"),
        ([str(models["tied"]), str(tmp_path / "o.gguf"), "Q8_0", "--output-tensor-type", "iq2_xxs"], "unknown tensor type"),
        ([str(models["requant"]), str(tmp_path / "o.gguf"), "Q8_0"], "--allow-requantize"),
    ):
        r = CliRunner().invoke(main, ["quantize", *argv])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_the_cli_reports_progress_and_the_sizes(models, tmp_path):
    r = CliRunner().invoke(main, ["quantize", str(models["untied"]), str(tmp_path / "o.gguf"), "q4_k_m"])
    assert r.exit_code == 0, r.output
    assert "model size = 14.03 MiB (32.00 BPW), quant size = 2.23 MiB (5.09 BPW)" in r.output
    assert "8 of 75 tensors fell back" in r.output  # (stderr: the ffn_downs)


def test_k_quants_decode_close_to_their_input():
    x = (np.random.default_rng(1).standard_normal((8, 512)) * 0.05).astype(np.float32)
    for qtype, tol in ((T.Q2_K, 0.4), (T.Q3_K, 0.2), (T.Q4_K, 0.1), (T.Q5_K, 0.05), (T.Q6_K, 0.025)):
        back = dequantize(quantize_k(x, qtype), qtype, x.shape)
        assert np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2)) < tol, qtype.name


def test_kvrun_runs_the_quantized_model_close_to_the_float_one(models, tmp_path):
    from kvrun.runtime.api import Model
    from kvrun.runtime.engine import Engine

    ids = [72, 101, 108, 108, 111, 32, 119, 111]
    ref = Model(Engine(models["tied"], n_ctx=64, n_batch=16)).logits(ids)
    for type_name, corr in (("Q8_0", 0.999), ("Q4_K_M", 0.95)):  # (random weights: errors grow layer by layer)
        quantize_model(models["tied"], tmp_path / f"{type_name}.gguf", type_name)
        got = Model(Engine(tmp_path / f"{type_name}.gguf", n_ctx=64, n_batch=16)).logits(ids)
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > corr, type_name
