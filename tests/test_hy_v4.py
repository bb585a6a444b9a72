"""Tencent's HY V4 (models/hy_v4.py): DeepSeek-V3's latent attention and experts with hyper-connections, a gate a value
of the heads' outputs, sinks and a clamped expert SwiGLU.

The logits are llama.cpp's (tests/fixtures/arch_hy_v4.npz, from ``tools/make_arch_fixtures.py hy_v4``; test_models.py's
FIXTURE_MODELS test runs it too), its DSA path up to top_k; here: the fixture held in both chunkings, and failed without
each of what sets HY V4 apart; the layers' caches; a missing tensor or key and what is refused in one line (a context
past the indexer's top_k); ``--device gpu`` against the CPU; ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import (_cfg, _moe, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor,
                         check_refused)  # fmt: skip
from test_models import N_BATCH, N_CTX
from tiny_hy_v4 import CLAMP, HC, KV_RANK, N_ROT, QK_NOPE
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.hy_v4 import HyperConnection, HyV4Model
from kvrun.ops import get_backend

NAME = "hy_v4"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes keep the latent in float16)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("hy_v4") / "m.gguf", **FIXTURE_MODELS[NAME])


def _load(g: GGUFFile, n_ctx: int = N_CTX):
    return model_class(NAME)(g, load_config(g), get_backend("cpu"), n_ctx, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(path, chunk):
    check_logits_are_llamacpps(path, NAME, chunk, TOLERANCE)  # (measured: 2.0e-4, both chunkings)


def _hc(**fields):
    """Every layer's two iHC sites with ``fields`` replaced (ones, zeros of their own shapes)."""
    return lambda m: [setattr(L, s, dataclasses.replace(getattr(L, s), **{f: v(getattr(getattr(L, s), f)) for f, v in fields.items()}))
                      for L in m.layers for s in ("hc_attn", "hc_ffn")]  # fmt: skip


def _no_gate(m):
    for L in m.layers:  # (a gate of zeros: every value times sigmoid(0), the same 0.5)
        L.attn_gate = m.be.upload(np.zeros(L.attn_gate.shape, np.float32).view(np.uint8), 0, L.attn_gate.shape)


def _no_sinks(m):
    specs = m.layer_specs()
    m.layer_specs = lambda: [dataclasses.replace(s, sink_logits=()) for s in specs]


def test_the_fixture_sees_what_sets_hy_v4_apart(tmp_path):
    """The hyper-connections (their epsilon, magnitude, the mixes' scale and base, the output's own mix), the gate on
    the heads' outputs, the sinks, the experts' clamp and its place before the SiLU, rope over pairs, the sigmoid router,
    the shared expert: each taken away costs whole logits against llama.cpp's."""
    drops = {
        "hyper-connections' epsilon": lambda m: setattr(m, "hc_eps", 0.0),
        "hyper-connections' magnitude": lambda m: setattr(m, "hc_magnitude", 1.0),
        "the mixes' scale": _hc(scale=np.ones_like),
        "the mixes' base": _hc(base=np.zeros_like),
        "the output's mix": lambda m: setattr(m, "output_hc", HyperConnection(m.output_hc.fn, np.zeros(HC[0], np.float32), np.zeros(1, np.float32))),
        "gate": _no_gate,
        "sinks": _no_sinks,
        "the experts' clamp": _moe(swiglu_limit=0.0),
        "the clamp before the SiLU": _moe(clamp_gate_first=False),
        "rope pairs": _cfg(rope_neox=True),
        "sigmoid router": _moe(gating="softmax"),
        "shared expert": _moe(shared=None),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)


def test_the_layers(path):
    """One latent KV head a layer (the rope key and the latent, V in K's rows) at the original heads' scale, with the
    file's sinks; layer 0 dense, the others experts clamped at their layer's limit; 4 streams."""
    g = GGUFFile(path)
    m = _load(g)
    assert m.n_hc == HC[0] and (m.hc_eps, m.hc_magnitude) == pytest.approx(HC[1:])
    for il, (L, s) in enumerate(zip(m.layers, m.layer_specs())):
        assert (s.n_head, s.n_head_kv, s.head_dim, s.head_dim_v, s.v_in_k) == (4, 1, N_ROT + KV_RANK, KV_RANK, True)
        assert s.scale == pytest.approx((QK_NOPE + N_ROT) ** -0.5)
        np.testing.assert_array_equal(s.sink_logits, g.tensors[f"blk.{il}.attn_sinks.weight"].data.view(np.float32))
        assert (L.moe is None) == (il == 0) and (L.moe is None or L.moe.swiglu_limit == pytest.approx(CLAMP[il]))
    assert HyV4Model.cache_widths(m.cfg, g) == (N_ROT + KV_RANK,) * 3


@pytest.mark.parametrize("tensor", ["output.weight", "output_hc_fn.weight", "blk.1.hc_ffn_base.weight", "blk.2.attn_sinks.weight",
                                    "blk.0.attn_gate.weight", "blk.2.hc_attn_scale.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


def test_the_indexer_is_never_read(path):
    """llama.cpp's sparse path chooses every key up to top_k (the dense MLA kvrun runs): a file without its weights loads."""
    g = GGUFFile(path)
    for name in [n for n in g.tensors if ".indexer." in n]:
        del g.tensors[name]
    _load(g)


@pytest.mark.parametrize("key", ["hyper_connection.count", "hyper_connection.epsilon", "hyper_connection.magnitude", "expert_gating_func",
                                 "attention.key_length_mla", "expert_shared_count"])  # fmt: skip
def test_a_missing_key_is_one_line(path, key):
    check_missing_key(path, NAME, key)


def test_a_context_past_the_indexers_top_k_is_refused_in_one_line(path):
    """Up to top_k cached keys llama.cpp's indexer chooses them all; past it kvrun refuses.  A file without the indexer
    (the all-full-attention checkpoints) has no such limit; one whose layer 0 shares an indexer llama.cpp refuses."""
    g = GGUFFile(path)
    g.metadata["hy_v4.attention.indexer.top_k"] = 32
    _load(g, 32)
    check_refused(g, NAME, UnsupportedModelError, "hy_v4's sparse attention past 32 tokens.*at most 32, not 64", 64)
    g.metadata["hy_v4.attention.indexer.types"] = np.array([False, True, True])
    check_refused(g, NAME, GGUFError, "layer 0 owning one: False", 32)
    del g.metadata["hy_v4.attention.indexer.top_k"]
    assert _load(g, 64).indexer_top_k == 0


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the streams' pre, post and fill in hyper.cu; the latent attention with its
    sinks, the gate and Maple's clamped experts the trunk's kernels)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)
