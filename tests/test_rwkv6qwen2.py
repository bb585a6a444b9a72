"""RWKV6-Qwen2 (models/rwkv6qwen2.py: RWKV-6's time mix as gated linear attention in a Qwen 2 trunk).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``rwkv6qwen2``, QRWKV6's layout: 2 K/V heads for 4, r/k/v biases,
and ``rwkv6qwen2-mha``: 4 K/V heads, no biases, an output-norm bias); here: each fixture fails without what sets
RWKV6-Qwen2 apart (and with RWKV-6's recurrence or gate in place of its own); the state in the cache, fed in chunks
or token by token alike and going back exactly (test_ssm.py's tests); a missing tensor, a bonus, a wrong
token_shift_count or K/V head count refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny file.
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
    """The tiny RWKV6-Qwen2, for test_ssm's state tests below."""
    return write_tiny_model(tmp_path_factory.mktemp("rwkv6qwen2") / "m.gguf", "rwkv6qwen2")


# the recurrent-state tests RWKV-6's cache passes, on RWKV6-Qwen2's (one token shift, the step closed by the FFN)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]


def _gla(key=True, decayed_read=True, own=True, scale=True):
    """A drop that runs the recurrence with one part of gated linear attention taken away: the key's ``(1 - w)``,
    the receptance's ``w`` (reading the state before its decay), the token's own ``(r . k') v``, the scale."""

    def recurrence(self, L, state, pos, r, w, k, v):
        T, n = r.shape
        H, N = n // self.head_size, self.head_size
        k = k * (1.0 - w) if key else k
        y = self.wkv(state, pos, r * w if decayed_read else r, w, k, v)
        if own:
            y.reshape(T, H, N)[...] += v.reshape(T, H, N) * np.einsum("thn,thn->th", r.reshape(T, H, N), k.reshape(T, H, N))[:, :, None]
        if scale:
            y *= np.float32(N**-0.5)
        return y

    return lambda m: setattr(m, "recurrence", types.MethodType(recurrence, m))


def test_the_fixtures_see_what_sets_rwkv6qwen2_apart(tmp_path):
    """Each of RWKV6-Qwen2's features, taken away, costs whole logits against llama.cpp's: gated linear attention's
    parts (the key's ``1 - w``, the decayed read, the token's own term, the ``head_size ** -0.5`` scale), its sigmoid
    gate (RWKV-6's SiLU in its place), the ddlerp token shift, Qwen's RMSNorms (LayerNorms in their place) and SwiGLU
    FFN (GELU in SiLU's place); the r/k/v biases and the output norm's bias where the fixture has them."""
    from kvrun.models.rwkv6 import silu
    from kvrun.models.rwkv7 import RWKV7Model

    drops = {
        "key's 1 - w": _gla(key=False),
        "decayed read": _gla(decayed_read=False),
        "token's own term": _gla(own=False),
        "scale": _gla(scale=False),
        "sigmoid gate": lambda m: setattr(m, "gate_act", silu),
        "token shift": _layers(lerp_x=lambda L: np.zeros_like(L.lerp_x), lerp=lambda L: np.zeros_like(L.lerp)),
        "RMSNorm": lambda m: setattr(m, "norm", types.MethodType(RWKV7Model.norm, m)),
        "SwiGLU's SiLU": lambda m: setattr(m, "ffn_act", "gelu"),
    }
    for name in ("rwkv6qwen2", "rwkv6qwen2-mha"):
        for what, drop in drops.items():
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, what)
        assert _fixture_error(tmp_path, name, lambda m: None) < 1e-4, name
    assert _fixture_error(tmp_path, "rwkv6qwen2", _layers(br=None, bk=None, bv=None)) > 3e-2, "r/k/v biases"
    assert _fixture_error(tmp_path, "rwkv6qwen2-mha", lambda m: setattr(m, "output_norm_b", None)) > 3e-2, "output norm bias"


@pytest.mark.parametrize("tensor", ["output_norm.weight", "output.weight", "blk.0.time_mix_lerp_fused.weight", "blk.1.time_mix_w2.weight",
                                    "blk.2.time_mix_decay_w1.weight", "blk.1.time_mix_key.weight", "blk.1.ffn_norm.weight",
                                    "blk.2.ffn_gate.weight", "blk.0.ffn_down.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "rwkv6qwen2"))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class("rwkv6qwen2")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_its_trunk_is_qwens_and_what_llama_cpp_would_not_run_is_one_line(tmp_path):
    """No LN0, no channel mix, no bonus or group norm, no halving; 2 K/V heads read by 2 heads each.  Refused: a bonus
    (llama.cpp would take RWKV-6's path, with a group norm the file lacks), token_shift_count 2 (llama.cpp's default,
    which its graph asserts against), K/V heads that do not divide the heads."""
    g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "rwkv6qwen2"))
    m = model_class("rwkv6qwen2")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    L = m.layers[1]
    assert m.tok_norm is None and m.output_norm_b is None and L.attn_norm_b is None and L.cm_key is None and L.cm_receptance is None
    assert L.u is None and L.ln is None and not L.halve and L.w_gate is not None and L.bk.shape == (64,) and m.kv_heads == 2

    def refused(error, match, edit):
        g = GGUFFile(write_tiny_model(tmp_path / "a.gguf", "rwkv6qwen2"))
        edit(g)
        with pytest.raises(error, match=match) as e:
            model_class("rwkv6qwen2")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
        assert "\n" not in str(e.value)

    def bonus(g):
        g.tensors["blk.0.time_mix_first.weight"] = g.tensors["blk.0.time_mix_decay.weight"]

    refused(UnsupportedModelError, "blk.0.time_mix_first.weight .* llama.cpp runs such files only without it", bonus)
    refused(UnsupportedModelError, "token_shift_count 2 is not 1", lambda g: g.metadata.pop("rwkv6qwen2.token_shift_count"))
    refused(GGUFError, "head_count_kv 3 does not divide the 4 heads", lambda g: g.metadata.__setitem__("rwkv6qwen2.attention.head_count_kv", 3))



@pytest.mark.parametrize("name", ["rwkv6qwen2", "rwkv6qwen2-mha"])
def test_info_and_run_on_the_tiny_file(tmp_path, name):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "a.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "rwkv6qwen2" in r.output, r.output
    # the state llama.cpp keeps a layer: 4 heads of 32 x 32 floats and one token shift of 128 (token_shift_count 1)
    assert "recurrent state  4 WKV heads of 32; 16.50 KiB a layer" in r.output and "KV cache / token" not in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
