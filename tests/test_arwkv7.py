"""ARWKV-7 (models/arwkv7.py: RWKV-7's time mix in a Qwen 2.5 trunk).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``arwkv7``, with the gate and group norm, and ``arwkv7-nogate``,
five mus and neither); here: each fixture fails without what sets ARWKV-7 apart (and with RWKV-7's trunk in place of
Qwen's); the state in the cache, its one token shift, fed in chunks or token by token alike and going back exactly
(test_ssm.py's tests); a missing tensor, a wrong token_shift_count or mu count refused in one line;
``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import test_ssm
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny ARWKV-7, for test_ssm's state tests below."""
    return write_tiny_model(tmp_path_factory.mktemp("arwkv7") / "m.gguf", "arwkv7")


# the recurrent-state tests RWKV-7's cache passes, on ARWKV-7's (one token shift, the step closed by the FFN)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]


def test_the_fixtures_see_what_sets_arwkv7_apart(tmp_path):
    """Each of ARWKV-7's features, taken away, costs whole logits against llama.cpp's: the time mix's token shift,
    Qwen's RMSNorms (RWKV-7's LayerNorms in their place), no LN0 (one added), the SwiGLU FFN (GELU in SiLU's place, or
    none), and RWKV-7's time mix within (value residual, removal key, key scaling, bonus; the gate and
    group norm where the file has them)."""
    from kvrun.models.rwkv7 import RWKV7Model

    drops = {
        "time-mix shift": _layers(lerp=lambda L: np.zeros_like(L.lerp)),
        "RMSNorm": lambda m: setattr(m, "norm", types.MethodType(RWKV7Model.norm, m)),
        "LN0": lambda m: (setattr(m, "tok_norm", np.ones(m.cfg.n_embd, np.float32)), setattr(m, "tok_norm_b", None)),
        "SwiGLU's SiLU": lambda m: setattr(m, "ffn_act", "gelu"),
        "FFN": lambda m: setattr(m, "channel_mix", lambda L, state, xn, pos, x: state.token_shift(xn, pos, 1)),
        "value residual": _layers(v1=None),
        "removal key": _layers(k_k=lambda L: np.zeros_like(L.k_k)),
        "key scaling": _layers(k_a=lambda L: np.zeros_like(L.k_a)),
        "bonus": _layers(r_k=lambda L: np.zeros_like(L.r_k)),
    }
    for name in ("arwkv7", "arwkv7-nogate"):
        for what, drop in drops.items():
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, what)
        assert _fixture_error(tmp_path, name, lambda m: None) < 1e-4, name
    for what, drop in {"gate": _layers(g1=None), "group norm": _layers(ln=None)}.items():
        assert _fixture_error(tmp_path, "arwkv7", drop) > 3e-2, what


@pytest.mark.parametrize("tensor", ["output_norm.weight", "output.weight", "blk.0.time_mix_lerp_fused.weight", "blk.1.time_mix_v1.weight",
                                    "blk.2.time_mix_k_k.weight", "blk.1.ffn_norm.weight", "blk.2.ffn_gate.weight", "blk.0.ffn_down.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "arwkv7"))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class("arwkv7")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_its_trunk_is_qwens_and_a_wrong_shift_count_or_mu_count_is_one_line(tmp_path):
    """No LN0, no norm biases, Qwen's FFN and no channel mix; five mus without a gate, six with one; the file must state
    token_shift_count 1 (llama.cpp's default 2 makes its state two rows, which its graph asserts against)."""
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS["arwkv7-nogate"]))
    m = model_class("arwkv7")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    L = m.layers[1]
    assert m.tok_norm is None and m.output_norm_b is None and L.attn_norm_b is None and L.cm_key is None
    assert L.w_gate is not None and L.g1 is None and L.ln is None and L.lerp.shape == (5, 128)
    for value, error in ((2, UnsupportedModelError), (None, UnsupportedModelError)):
        g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "arwkv7"))
        if value is None:
            del g.metadata["arwkv7.token_shift_count"]
        else:
            g.metadata["arwkv7.token_shift_count"] = value
        with pytest.raises(error, match="token_shift_count 2 is not 1") as e:
            model_class("arwkv7")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
        assert "\n" not in str(e.value)
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "arwkv7"))
    for i in range(3):  # (a gate without its mu: llama.cpp's graph would read past the five)
        del g.tensors[f"blk.{i}.time_mix_g1.weight"], g.tensors[f"blk.{i}.time_mix_g2.weight"]
    with pytest.raises(GGUFError, match="time_mix_lerp_fused.weight has 768 values, expected 640") as e:
        model_class("arwkv7")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)



@pytest.mark.parametrize("name", ["arwkv7", "arwkv7-nogate"])
def test_info_and_run_on_the_tiny_file(tmp_path, name):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "arwkv7" in r.output, r.output
    # the state llama.cpp keeps a layer: 2 heads of 64 x 64 floats and one token shift of 128 (token_shift_count 1)
    assert "recurrent state  2 WKV heads of 64; 32.50 KiB a layer" in r.output and "KV cache / token" not in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
