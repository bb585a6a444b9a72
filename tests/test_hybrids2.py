"""Jamba (models/jamba.py), PLaMo 2 (models/plamo2.py) and Deci (models/deci.py).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``jamba``, ``jamba-dense``, ``plamo2``, ``deci``); here: each fixture
fails without what sets its architecture apart, the caches each layer keeps, a missing tensor (the GPU: Jamba and PLaMo 2 in
tests/test_gpu_ssm.py), ``kvrun info`` and ``kvrun run`` on the tiny files, and the Mamba layers' state (test_ssm.py's tests) on Jamba's
and PLaMo 2's.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend
from kvrun.ops.backend import Weight


@pytest.fixture(scope="module", params=["jamba", "plamo2"])
def path(request, tmp_path_factory):
    """The tiny Jamba and PLaMo 2, for test_ssm's state tests below (their Mamba layers among attention ones)."""
    return write_tiny_model(tmp_path_factory.mktemp("hybrid2") / "m.gguf", request.param)


# (PLaMo 2's keys are QK-normed and kept fp16, as Qwen3.5's: a chunk's float32 roundings flip some keys' fp16 rounding, and
# the post-attention norm carries that into the stream: 1.2e-3 of logits up to 17 fed in chunks of 9 against one chunk)
test_ssm.ATOL.setdefault("plamo2", 2e-3)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike


def test_going_back_is_exact_from_a_kept_copy_and_further_starts_over(tmp_path):
    """(test_ssm's, which reads layer 0's state: Jamba's layer 0 is a Mamba layer, the tiny PLaMo 2's attends)"""
    test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over(write_tiny_model(tmp_path / "m.gguf", "jamba"))


def _mamba(**fields):
    return lambda m: [setattr(L.mamba, f, v(L.mamba)) for L in m.layers if L.mamba is not None for f, v in fields.items()]


def _swap_halves(w: Weight) -> Weight:
    n = w.shape[0] // 2
    return Weight(np.ascontiguousarray(np.concatenate([w.data[n:], w.data[:n]])), w.qtype, w.shape)


def test_the_jamba_fixtures_see_what_sets_jamba_apart(tmp_path):
    """The weights of the dt/B/C norms (as ones: Falcon-Mamba's unweighted norms), the norms themselves; the experts'
    weights as the router gave them (renormalised, as Mixtral's, fails)."""
    drops = {
        "norm weights": _mamba(dt_norm=lambda L: np.ones_like(L.dt_norm), b_norm=lambda L: np.ones_like(L.b_norm),
                               c_norm=lambda L: np.ones_like(L.c_norm)),
        "dt/B/C norms": _mamba(dt_norm=lambda L: None),
        "conv bias": _mamba(conv_b=lambda L: np.zeros_like(L.conv_b)),
    }  # fmt: skip
    for name in ("jamba", "jamba-dense"):
        assert _fixture_error(tmp_path, name, lambda m: None) < 1e-4
        for what, drop in drops.items():
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, what)
    renorm = lambda m: [setattr(L.moe, "norm_weights", True) for L in m.layers if L.moe is not None]  # noqa: E731
    assert _fixture_error(tmp_path, "jamba", renorm) > 1e-2  # (2.2e-2: two experts of four a token, weights near even)


def test_the_plamo2_fixture_sees_what_sets_plamo2_apart(tmp_path):
    """The in-projection's per-head z/x rows (read as Mamba 1's x then z fails), the dt/B/C norms' weights, the sandwich
    norms' post-norm weights, the per-head QK-norm weights (one shared by the heads fails), the rope."""
    drops = {
        "z/x rows": _mamba(in_proj=lambda L: _swap_halves(L.in_proj)),
        "dt/B/C norm weights": _mamba(dt_norm=lambda L: np.ones_like(L.dt_norm), b_norm=lambda L: np.ones_like(L.b_norm)),
        "post norms": lambda m: [setattr(L, "attn_post_norm", np.ones_like(L.attn_post_norm)) for L in m.layers],
        "per-head QK-norm": lambda m: [setattr(L, "q_norm", np.broadcast_to(L.q_norm.mean(0), L.q_norm.shape).copy())
                                       for L in m.layers if L.q_norm is not None],
        "rope": lambda m: setattr(m, "rope_sin", np.zeros_like(m.rope_sin)) or setattr(m, "rope_cos", np.ones_like(m.rope_cos)),
    }  # fmt: skip
    assert _fixture_error(tmp_path, "plamo2", lambda m: None) < 2e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "plamo2", drop) > 3e-2, what


def test_the_deci_fixture_sees_what_sets_deci_apart(tmp_path):
    """The linear attention replacement (read as an attention-free layer fails), the attention-free layer's FFN (left out
    fails), the FFN-free layer left out whole as llama.cpp leaves it (its attention kept fails)."""

    def keep_attention_of_ffn_free_layer(m):
        m.n_ffs[4] = 1  # (the forward runs layer 4 then: its attention, then an FFN of zeros)
        L = m.layers[4]
        L.ffn_norm = np.ones(m.cfg.n_embd, np.float32)
        L.w_gate = L.w_up = m.be.upload(np.zeros((1, m.cfg.n_embd), np.float32).view(np.uint8), 0, (1, m.cfg.n_embd))
        L.w_down = m.be.upload(np.zeros((m.cfg.n_embd, 1), np.float32).view(np.uint8), 0, (m.cfg.n_embd, 1))

    drops = {
        "linear replacement": lambda m: m.n_heads.__setitem__(2, 0),
        "attention-free FFN": lambda m: m.n_ffs.__setitem__(1, 0),
        "FFN-free layer's attention": keep_attention_of_ffn_free_layer,
    }
    assert _fixture_error(tmp_path, "deci", lambda m: None) < 1e-3
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "deci", drop) > 3e-2, what


def test_the_layers_and_their_caches(tmp_path):
    """Jamba's and PLaMo 2's Mamba layers keep Mamba 1's state (PLaMo 2's heads as channels), their attention layers K/V;
    Deci's attention layers alone keep K/V, each its own heads."""
    from kvrun.cache.mamba import MambaLayerCache
    from kvrun.runtime.engine import Engine

    for arch, mamba in (("jamba", [0, 1, 3]), ("plamo2", [1, 3])):
        e = Engine(write_tiny_model(tmp_path / f"{arch}.gguf", arch), n_ctx=64)
        layers = e.new_cache().layers
        assert [i for i, c in enumerate(layers) if isinstance(c, MambaLayerCache)] == mamba, arch
        assert e.cfg.kv_bytes_per_token(16) == (4 - len(mamba)) * 2 * 2 * 16 * 2, arch
    e = Engine(write_tiny_model(tmp_path / "deci.gguf", "deci"), n_ctx=64)
    assert [c.spec.n_head_kv for c in e.new_cache().layers] == [2, 1, 2, 4]
    assert e.cfg.kv_bytes_per_token(16) == (2 + 1 + 2 + 4) * 2 * 16 * 2


@pytest.mark.parametrize("arch, tensor", [
    ("jamba", "blk.0.ssm_dt_norm.weight"), ("jamba", "blk.3.ssm_c_norm.weight"), ("jamba", "blk.1.ffn_up_exps.weight"),
    ("jamba", "blk.2.attn_k.weight"), ("plamo2", "blk.1.ssm_b_norm"), ("plamo2", "blk.0.post_attention_norm"),
    ("plamo2", "blk.0.attn_q_norm.weight"), ("plamo2", "blk.3.ssm_x.weight"), ("deci", "blk.2.attn_output.weight"),
    ("deci", "blk.1.ffn_gate.weight"), ("deci", "blk.3.attn_k.weight"),
])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, arch, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", arch))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class(arch)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["jamba", "plamo2", "deci"])
def test_info_and_run(tmp_path, arch):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", arch))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and arch in r.output, r.output
    want = {"jamba": "3 of 4 Mamba 1 (d_inner 128, state 16, convolution 4); 9.50 KiB of state a layer",
            "plamo2": "2 of 4 Mamba-2 (d_inner 64: 4 heads, state 16, 0 groups, convolution 4); 4.75 KiB of state a layer",
            "deci": "0-4 / 0-4 by layer  (head_dim 16)"}[arch]  # fmt: skip
    assert want in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name, rope", [("jamba", "none (the Mamba layers carry order)"), ("nemotron_h", "none (the Mamba layers carry order)"),
                                        ("baichuan-13b", "none (ALiBi)"), ("plamo2", "theta 10000, neox"), ("baichuan", "theta 10000, normal")])  # fmt: skip
def test_info_shows_rope_only_where_the_attention_rotates(tmp_path, name, rope):
    """`kvrun info`'s rope line: theta and scaling where the attention turns Q and K (Plamo 2's among its Mamba layers,
    Baichuan 7B's), else what carries position instead (Jamba's and Nemotron-H's attention has no rope; Baichuan 13B's
    ALiBi); --json says it as no_rope."""
    import json

    from click.testing import CliRunner
    from tinymodel import FIXTURE_MODELS

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and [ln.split(None, 1)[1] for ln in r.output.splitlines() if ln.startswith("rope ")][0].startswith(rope), r.output
    f = json.loads(CliRunner().invoke(main, ["info", path, "--json"]).output)
    assert f["rope_used"] == rope.startswith("theta") and (f["no_rope"] is None) == f["rope_used"]
