"""LoRA adapters (loaders/lora.py): merged into the weights as the model loads, the logits are
llama.cpp's with the same adapter and scale (tests/fixtures/lora_llama.npz, tools/make_lora_fixture.py);
an adapter that does not fit the model is refused in one line."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from tinymodel import Q, write_tiny_lora, write_tiny_model

from kvrun.loaders.errors import KvrunError
from kvrun.runtime.engine import Engine

FIX = np.load(__import__("pathlib").Path(__file__).parent / "fixtures" / "lora_llama.npz")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    model = write_tiny_model(d / "m.gguf", "llama")
    lora = write_tiny_lora(d / "lora.gguf", model)
    for p, key in ((model, "sha256_model"), (lora, "sha256_lora")):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[key]), "the fixture was made from other files"
    return model, lora


def _logits(model, lora=None, **kw) -> np.ndarray:
    e = Engine(model, n_ctx=64, lora=lora, **kw)
    return e.eval(e.new_cache(), FIX["ids"], logits_all=True)


def test_the_adapted_model_gives_llama_cpps_logits(files):
    model, lora = files
    got, ref = _logits(model, [(str(lora), float(FIX["scale"]))]), FIX["logits"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-3
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(_logits(model) - ref).max() > 1.0  # (the adapter matters: without it the logits are far)


def test_scale_zero_is_the_base_model_and_scales_add_up(files):
    model, lora = files
    np.testing.assert_array_equal(_logits(model, [(str(lora), 0.0)]), _logits(model))
    half_twice = _logits(model, [(str(lora), 0.35), (str(lora), 0.35)])  # two adapters merge into one weight
    np.testing.assert_allclose(half_twice, _logits(model, [(str(lora), 0.7)]), atol=2e-3)


def test_a_quantized_base_takes_the_adapter_in_q8_0(files, tmp_path):
    """A 4-bit weight plus its low-rank update is stored as Q8_0 (the others stay as they were): the
    merged weight is W + scale * alpha/r * B @ A to within Q8_0's rounding."""
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.loaders.lora import LoraAdapter
    from kvrun.loaders.quants import dequantize

    _, lora = files
    q4 = write_tiny_model(tmp_path / "q4.gguf", "llama", qtype=Q.Q4_0)
    e = Engine(q4, n_ctx=64, lora=[(str(lora), 0.7)])
    assert e.gguf.tensors["blk.1.ffn_down.weight"].qtype == Q.Q8_0 and e.gguf.tensors["blk.0.attn_k.weight"].qtype == Q.Q4_0
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
        t, m = GGUFFile(q4).tensors[name], e.gguf.tensors[name]
        want = dequantize(t.data, t.qtype, t.shape).reshape(t.shape) + LoraAdapter.open(lora, 0.7).delta(name, t.shape)
        got = dequantize(m.data, m.qtype, m.shape).reshape(m.shape)
        assert np.abs(got - want).max() <= np.abs(want).max() / 127  # (Q8_0: a step of a block's max / 127 at most)
    assert e.eval(e.new_cache(), FIX["ids"]).shape == (1, 262)


def test_an_adapter_that_does_not_fit_is_refused_in_one_line(files, tmp_path):
    model, lora = files
    other = write_tiny_lora(tmp_path / "qwen.gguf", model, arch="qwen2")
    with pytest.raises(KvrunError, match="the adapter is for 'qwen2', the model is 'llama'"):
        Engine(model, lora=[(str(other), 1.0)])
    with pytest.raises(KvrunError, match="not a LoRA adapter"):
        Engine(model, lora=[(str(model), 1.0)])
    small = write_tiny_model(tmp_path / "qwen3.gguf", "qwen3")  # wider heads: other shapes
    wrong = write_tiny_lora(tmp_path / "wrong.gguf", small, targets=("blk.0.attn_q.weight",), arch="llama")
    with pytest.raises(KvrunError, match="do not fit the model's"):
        Engine(model, lora=[(str(wrong), 1.0)])


def test_kvrun_run_takes_lora_flags(files):
    from click.testing import CliRunner

    from kvrun.cli import main

    model, lora = files
    r = CliRunner().invoke(main, ["run", str(model), "-p", "the", "-n", "4", "--temp", "0", "--no-stats", "--lora-scaled", str(lora), "0.7"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", str(model), "-p", "the", "--lora", "nowhere.gguf"])
    assert r.exit_code != 0 and r.output.strip() == "kvrun: error: --lora: no file nowhere.gguf", r.output


def test_kvrun_info_says_an_adapter_is_one_and_how_to_use_it(files):
    from click.testing import CliRunner

    from kvrun.cli import main

    _, lora = files
    r = CliRunner().invoke(main, ["info", str(lora)])
    assert r.exit_code == 0 and f"LoRA adapter for llama ({lora}): 5 weights, rank 4, alpha 8; apply it with --lora" in r.output, r.output
    r = CliRunner().invoke(main, ["run", str(lora), "-p", "hi"])
    assert r.exit_code != 0 and "a LoRA adapter, not a model; give it with --lora" in r.output and r.output.count("\n") == 1, r.output
