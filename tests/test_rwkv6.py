"""RWKV-6 (models/rwkv6.py, ops/cpu/wkv6.py, RWKV-7's cache/rwkv.py).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``rwkv6`` and ``rwkv6-unfused``); here: the fixture fails without
each of what sets RWKV-6 apart; the state in the cache fed in chunks or token by token alike, going back exactly from
a kept copy, further by starting over, saved and resumed (test_ssm.py's tests, run on the tiny RWKV-6); a missing
tensor or hyperparameter refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend
from kvrun.ops.backend import Weight


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny RWKV-6, for test_ssm's state tests below."""
    return write_tiny_model(tmp_path_factory.mktemp("rwkv6") / "m.gguf", "rwkv6")


# the recurrent-state tests Mamba-2's, Gated DeltaNet's and RWKV-7's caches pass, on RWKV-6's (the same machinery)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike


def _zero(w: Weight) -> Weight:
    """A float32 matrix of zeros in ``w``'s place (the fixture's weights are float32: zero bytes are 0.0)."""
    return Weight(np.zeros_like(w.data), w.qtype, w.shape)


def test_the_fixture_sees_what_sets_rwkv6_apart(tmp_path, monkeypatch):
    """Each of RWKV-6's features, taken away, costs whole logits against llama.cpp's: the ddlerp's LoRA (the token
    shift's data-dependent part), its fixed mus and its first lerp, the decay's LoRA (the data-dependent decay), the
    bonus u, the channel mix's token shift and its receptance, the residual halved every rescale_every_n_layers (as
    llama.cpp does: its fixture has it), LN0, the SiLU gate and the group norm."""
    import kvrun.models.rwkv6 as rwkv6

    def layers(**fields):
        return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]

    drops = {
        "ddlerp LoRA": layers(w2=lambda L: [_zero(w) for w in L.w2]),
        "ddlerp mus": layers(lerp=lambda L: np.zeros_like(L.lerp)),
        "ddlerp's first lerp": layers(lerp_x=lambda L: np.zeros_like(L.lerp_x)),
        "decay LoRA": layers(decay_w2=lambda L: _zero(L.decay_w2)),
        "bonus": layers(u=lambda L: np.zeros_like(L.u)),
        "channel-mix shift": layers(cm_lerp=lambda L: np.zeros_like(L.cm_lerp), cm_lerp_r=lambda L: np.zeros_like(L.cm_lerp_r)),
        "channel-mix receptance": layers(cm_receptance=lambda L: _zero(L.cm_receptance)),
        "rescale": layers(halve=False),
        "LN0": lambda m: setattr(m, "tok_norm", None),
    }
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "rwkv6", drop) > 3e-2, what
    assert _fixture_error(tmp_path, "rwkv6", lambda m: None) < 1e-4
    monkeypatch.setattr(rwkv6, "silu", np.ones_like)
    assert _fixture_error(tmp_path, "rwkv6", lambda m: None) > 3e-2, "gate"
    monkeypatch.undo()
    monkeypatch.setattr(rwkv6, "layer_norm_heads", lambda *a: None)
    assert _fixture_error(tmp_path, "rwkv6", lambda m: None) > 3e-2, "group norm"


def test_the_layers_and_their_state(tmp_path):
    """Every second layer halves the residual (rescale_every_n_layers 2); a layer keeps a [head_size, head_size]
    WKV-6 state per head and the kept inputs (r, w, k, v and the two normed inputs: 6 x n_embd a position), never K/V."""
    from kvrun.cache.rwkv import RWKVLayerCache
    from kvrun.runtime.engine import Engine

    e = Engine(write_tiny_model(tmp_path / "r.gguf", "rwkv6"), n_ctx=64)
    assert [L.halve for L in e.model.layers] == [False, True, False, True]
    cache = e.new_cache()
    assert all(type(layer) is RWKVLayerCache and layer.version == 6 for layer in cache.layers) and len(cache.layers) == 4
    assert cache[0].state.shape == (2, 64, 64) and cache[0].ring.shape[1] == 6 * 128
    assert e.cfg.kv_bytes_per_token(16) == 0


@pytest.mark.parametrize("tensor", ["token_embd_norm.bias", "blk.0.time_mix_lerp_fused.weight", "blk.1.time_mix_w2.weight",
                                    "blk.2.time_mix_first.weight", "blk.3.time_mix_decay_w1.weight", "blk.1.time_mix_gate.weight",
                                    "blk.0.channel_mix_receptance.weight", "blk.2.channel_mix_lerp_r.weight", "output.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "r.gguf", "rwkv6"))
    cfg = load_config(g)
    del g.tensors[tensor]
    missing = tensor.replace("lerp_fused", "lerp_w")  # (without the fused mus: the first of the five apart)
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        model_class("rwkv6")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_a_missing_lora_size_or_a_bad_shape_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "r.gguf", "rwkv6"))
    g.metadata["rwkv6.time_mix_extra_dim"] = 16
    with pytest.raises(GGUFError, match=r"'blk.0.time_mix_w2.weight' has shape \(5, 128, 32\), expected \(5, 128, 16\)") as e:
        model_class("rwkv6")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)
    del g.metadata["rwkv6.time_mix_extra_dim"]
    with pytest.raises(GGUFError, match="time_mix_extra_dim/time_decay_extra_dim are missing") as e:
        model_class("rwkv6")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)



def test_info_and_run_on_the_tiny_file(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "r.gguf", **FIXTURE_MODELS["rwkv6"]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "rwkv6" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
