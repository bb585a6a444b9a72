"""GLM-5.3-Flash (models/glm5_next.py): Kimi Linear's KDA among nope MLA layers, mHC residual streams, a k-pool DSA
indexer on its dense path, DeepSeek's experts clamped gate first.

The logits are llama.cpp's (tests/fixtures/arch_glm5-next.npz, from ``tools/make_arch_fixtures.py glm5-next``;
test_models.py's FIXTURE_MODELS test runs it too); here: the fixture held in both chunkings, and failed without each of
what sets GLM-5.3-Flash apart; the layers; a missing tensor or key and what is refused in one line (a context past the
indexer's dense reach, a selection without the tail...); ``--device gpu`` against the CPU; ``kvrun info`` and ``kvrun
run`` on the tiny file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import (_layers, _moe, check_info_and_run, check_logits_are_llamacpps, check_missing_key, check_missing_tensor,
                         check_refused)  # fmt: skip
from kda_checks import each_kda, kimi_decay
from test_models import N_BATCH, N_CTX, _fixture_error
from tiny_glm5_next import CLAMP_EXP, CLAMP_SHEXP, HC, INDEXER, MLA_LAYERS
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.glm5_next import L2_EPS, sinkhorn
from kvrun.models.kimi_linear import KDALayer
from kvrun.ops import get_backend

NAME = "glm5-next"
#: the largest relative logit error measured against llama.cpp 0.3.36 (its MLA caches the latent in float16, kvrun
#: the heads' K and V: Kimi Linear's 3.9e-4, Kimi K3's 5.0e-4 alike)
TOLERANCE = 1e-3
#: the longest context llama.cpp's selection is dense over: top_k + kpool - 1
DENSE = INDEXER[2] + INDEXER[3] - 1


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("glm5_next") / "m.gguf", **FIXTURE_MODELS[NAME])


def _load(g: GGUFFile, n_ctx: int = N_CTX):
    return model_class(NAME)(g, load_config(g), get_backend("cpu"), n_ctx, N_BATCH)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(path, chunk):
    check_logits_are_llamacpps(path, NAME, chunk, TOLERANCE)  # (measured: 6.1e-4, both chunkings)


def _hc(**fields):
    """Every layer's two mHC sites with ``fields`` replaced (a function of the old value)."""
    return lambda m: [setattr(L, s, dataclasses.replace(getattr(L, s), **{f: v(getattr(getattr(L, s), f)) for f, v in fields.items()}))
                      for L in m.layers for s in ("hc_attn", "hc_ffn")]  # fmt: skip


def _no_stream_mix(m):
    """The streams kept apart (iHC's way): each goes back into itself, comb the identity."""
    pre = m.hc_pre
    m.hc_pre = lambda hc, s, cur: (lambda post, comb: (post, np.broadcast_to(np.eye(comb.shape[1], dtype=np.float32), comb.shape)))(*pre(hc, s, cur))


def test_the_fixture_sees_what_sets_glm5_next_apart(tmp_path):
    """mHC (its epsilon, the Sinkhorn mix of the streams and its iterations, post's factor 2, the mixes' scale and base),
    the bounded KDA decay (Kimi's softplus), the sigmoid router that an unstated gating function means, the weights not
    renormalised, the experts' clamp and its place before the SiLU, the shared and dense layers' own clamp, the shared
    expert: each taken away costs whole logits against llama.cpp's."""
    drops = {
        "mHC epsilon": lambda m: setattr(m, "hc_eps", 0.0),
        "the streams' mix": _no_stream_mix,
        "Sinkhorn iterations": lambda m: setattr(m, "hc_iters", 1),
        "post's factor": lambda m: setattr(m, "hc_post_scale", 1.0),
        "the mixes' scale": _hc(scale=np.ones_like),
        "the mixes' base": _hc(base=np.zeros_like),
        "bounded decay": each_kda(kimi_decay),
        "sigmoid router": _moe(gating="softmax"),
        "weights as routed": _moe(norm_weights=True),
        "the experts' clamp": _moe(swiglu_limit=0.0),
        "the clamp before the SiLU": _moe(clamp_gate_first=False),
        "the shared and dense clamp": _layers(shexp_limit=0.0),
        "shared expert": _layers(shexp=None),
    }
    assert _fixture_error(tmp_path, NAME, lambda m: None) < TOLERANCE
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, NAME, drop) > 10 * TOLERANCE, what


def test_sinkhorn_is_llama_cpps():
    """Softmax over dst plus eps, then columns, rows, columns (3 iterations), each sum plus eps: as build_hc_sinkhorn."""
    logits = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    eps = 0.05
    want = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True) + eps
    want /= want.sum(axis=1, keepdims=True) + eps
    for _ in range(2):
        want /= want.sum(axis=2, keepdims=True) + eps
        want /= want.sum(axis=1, keepdims=True) + eps
    np.testing.assert_allclose(sinkhorn(logits, 3, eps), want, rtol=1e-6)


def test_the_layers(path):
    """KDA layers 0 and 2 (their state in the cache, the L2 norms at 1e-6, the bounded decay), MLA layers 1 and 3 (the
    heads' nope K 16 and V 12 wide at 1/sqrt(16)); layer 0 dense, clamped at the shared limit, the others' experts at
    theirs; 4 streams, 3 Sinkhorn iterations; the sigmoid router, the weights as routed."""
    g = GGUFFile(path)
    m = _load(g)
    assert (m.n_hc, m.hc_iters, m.hc_eps) == pytest.approx(HC) and m.dense_limit == DENSE
    for il, (L, s) in enumerate(zip(m.layers, m.layer_specs())):
        if il in MLA_LAYERS:
            assert not isinstance(L, KDALayer) and (s.n_head, s.n_head_kv, s.head_dim, s.head_dim_v) == (4, 4, 16, 12)
            assert s.scale == pytest.approx(0.25)
        else:
            assert isinstance(L, KDALayer) and s.deltanet and L.kda.eps == L2_EPS and L.kda.lower_bound == -5.0 and (L.kda.A > 0).all()
        assert L.shexp_limit == pytest.approx(CLAMP_SHEXP[il])
        assert (L.moe is None) == (il == 0) and (L.moe is None or (L.moe.swiglu_limit == pytest.approx(CLAMP_EXP[il]) and L.moe.clamp_gate_first
                                                                  and L.moe.gating == "sigmoid" and not L.moe.norm_weights))  # fmt: skip
    assert model_class(NAME).cache_widths(m.cfg, g) == (0, 4 * 28, 0, 4 * 28)


@pytest.mark.parametrize("tensor", ["output.weight", "blk.1.hc_attn_fn.weight", "blk.2.hc_ffn_scale.weight", "blk.3.hc_ffn_base.weight",
                                    "blk.0.ssm_f_b.weight", "blk.1.attn_q_a.weight", "blk.3.exp_probs_b.bias"])  # fmt: skip
def test_a_missing_tensor_is_one_line(path, tensor):
    check_missing_tensor(path, NAME, tensor)


@pytest.mark.parametrize("key", ["hyper_connection.count", "hyper_connection.sinkhorn_iterations", "hyper_connection.epsilon",
                                 "attention.indexer.kpool", "attention.q_lora_rank", "attention.key_length_mla", "kda.head_dim"])  # fmt: skip
def test_a_missing_key_is_one_line(path, key):
    check_missing_key(path, NAME, key)


def test_the_indexer_is_never_read(path):
    """Up to top_k + kpool - 1 tokens llama.cpp's selection is every earlier key (the dense MLA kvrun runs): a file without
    the indexer's weights loads."""
    g = GGUFFile(path)
    for name in [n for n in g.tensors if ".indexer" in n]:
        del g.tensors[name]
    _load(g)


def test_what_is_not_supported_is_refused_in_one_line(path):
    """A context past the dense reach (llama.cpp chooses among the pools from top_k + kpool tokens on), a selection without
    the incomplete pool, a decay bound not below 0; what llama.cpp asserts: kpool dividing top_k, 4 streams,
    no rope, an indexer owned by the first attention layer."""
    _load(GGUFFile(path), DENSE)
    check_refused(GGUFFile(path), NAME, UnsupportedModelError, f"sparse attention past {DENSE} tokens.*at most {DENSE}, not {DENSE + 1}", DENSE + 1)
    edits = [
        ("attention.indexer.kpool_select_tail", False, UnsupportedModelError, "kpool_select_tail false"),
        ("kda.gate_lower_bound", 0.5, UnsupportedModelError, "gate_lower_bound 0.5"),
        ("attention.indexer.kpool", 3, GGUFError, "kpool > 1 dividing top_k"),
        ("hyper_connection.count", 2, GGUFError, "takes 4 streams only"),
        ("rope.dimension_count", 8, GGUFError, "nope MLA only"),
        ("attention.indexer.types", np.array([True, False, True, True]), GGUFError, r"first attention layer \(1\) owns no indexer"),
    ]
    for key, value, error, match in edits:
        g = GGUFFile(path)
        g.metadata[f"{NAME}.{key}"] = value
        check_refused(g, NAME, error, match)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the streams' pre and post weights, Sinkhorn mix, spread, fill and mean in
    hyper.cu; the KDA and the nope MLA Kimi Linear's kernels; the experts' and the shared and dense FFNs' gate-first clamps
    moe2.cu's)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))


def test_a_gpu_decode_step_copies_only_its_logits_down(monkeypatch, path):
    """On the strict CuPy stand-in (devicexp.py: no copy while a graph is captured, every copy down logged): a replayed
    step brings down its logits alone; the streams' arithmetic, the Sinkhorn mix and the clamps are no host work."""
    from gpu_checks import check_decode_copies_only_logits

    from kvrun.ops.gpu import emulate

    if not emulate.available():
        pytest.skip("no host C++ compiler for the emulator")
    check_decode_copies_only_logits(monkeypatch, path, steps=(5,))


def test_info_and_run(path):
    """(``kvrun run`` within the dense reach: the file's context of 1024 is past it, refused as above.)"""
    check_info_and_run(path, NAME, "-c", str(DENSE))
