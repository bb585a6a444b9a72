"""kv_eval: token-by-token decoding with each KV configuration next to the fp16 cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.engine import Engine
from kvrun.runtime.kveval import format_table, kv_eval, paired_dppl

KEYS = {"config", "kv_bytes", "bits_per_value", "ppl", "ppl_ref", "dppl_pct", "dppl_se_pct", "kl", "top1", "tok_s", "tok_s_ref"}


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("kveval") / "llama.gguf", "llama")
    return Engine(path, n_ctx=96, n_batch=16)


def test_kv_eval_reports_every_metric(tiny_engine):
    tokens = np.random.default_rng(0).integers(0, tiny_engine.cfg.n_vocab, 96)
    configs = [KVConfig.parse(s) for s in ("16,policy=h2o", "8,group=16,residual=8", "2,group=16,residual=8", "16,policy=streaming,budget=24,residual=8")]
    res = kv_eval(tiny_engine, tokens, configs, 80)
    assert [r["config"] for r in res] == [str(c) for c in configs]
    for r in res:
        assert set(r) == KEYS
        assert math.isfinite(r["ppl"]) and r["tok_s"] > 0 and r["kv_bytes"] > 0
    same, q8, q2, evict = res
    # fp16 storage through the compressed path, nothing evicted: the reference's own distribution
    assert same["kl"] < 1e-6 and same["top1"] == 1.0 and abs(same["dppl_pct"]) < 1e-2 and same["dppl_se_pct"] < 1e-2
    assert q2["dppl_se_pct"] > 0 and evict["dppl_se_pct"] > 0  # tokens scored otherwise than the reference
    assert q8["kl"] < q2["kl"] and q8["bits_per_value"] < 16 and q2["bits_per_value"] < q8["bits_per_value"]
    assert evict["kl"] > 0 and evict["kv_bytes"] < same["kv_bytes"]
    table = format_table(res)
    assert "dPPL%" in table and len(table.splitlines()) == 2 + len(res)


def test_paired_dppl_is_the_perplexity_ratio_with_the_error_of_the_mean_difference():
    ref = np.array([2.0, 1.0, 3.0, 2.0])
    nll = ref + np.array([0.1, 0.3, 0.1, 0.3])  # mean difference 0.2, sample std 0.11547
    pct, se = paired_dppl(nll, ref)
    assert pct == pytest.approx(100 * (math.exp(nll.mean()) / math.exp(ref.mean()) - 1))  # = ppl / ppl_ref - 1
    assert pct == pytest.approx(22.140, abs=1e-3)
    assert se == pytest.approx(100 * math.exp(0.2) * 0.11547005 / 2, rel=1e-6)  # 7.052
    # a constant shift of every token is known exactly: no error
    assert paired_dppl(ref + 0.05, ref)[1] == pytest.approx(0.0, abs=1e-9)
    assert paired_dppl(np.array([1.5]), np.array([1.0]))[1] == 0.0
    assert paired_dppl(np.array([]), np.array([])) == (0.0, 0.0)


def test_kv_eval_needs_enough_text(tiny_engine):
    from kvrun.loaders.errors import KvrunError

    with pytest.raises(KvrunError, match="needs at least 80"):
        kv_eval(tiny_engine, [1, 2, 3], [KVConfig.parse("4")], 80)


@pytest.mark.real_model
def test_smollm2_four_bit_is_close_and_two_bit_degrades_gracefully(smollm2_path):
    eng = Engine(smollm2_path, n_ctx=192, n_batch=32)
    text = open("/usr/share/common-licenses/GPL-3").read() if __import__("os").path.exists("/usr/share/common-licenses/GPL-3") else "the quick brown fox " * 200
    tokens = eng.tokenizer.encode(text)
    r4, r2 = kv_eval(eng, tokens, [KVConfig.parse("4,residual=16"), KVConfig.parse("2,residual=16")], 192)
    # 95 scored tokens: float summation order alone (BLAS build, SIMD width) moves
    # dPPL by several points here (-4.3% on an AVX-512 machine, inside 3% on AVX2),
    # so KL against the fp16 cache carries the claim; dPPL only bounds it loosely
    assert r4["kl"] < 0.03 and r4["top1"] > 0.9 and abs(r4["dppl_pct"]) < 8
    assert r2["kl"] > r4["kl"] and r2["dppl_pct"] < 25
