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


def test_windows_pool_the_scored_tokens_of_consecutive_windows(tiny_engine):
    """--windows 2 decodes tokens [0, ctx) and [ctx, 2 ctx) from empty caches and scores their tokens
    together: the perplexity of the pooled tokens, the mean KL and agreement over both."""
    tokens = np.random.default_rng(1).integers(0, tiny_engine.cfg.n_vocab, 96)
    configs = [KVConfig.parse("2,group=16,residual=8")]
    (both,) = kv_eval(tiny_engine, tokens, configs, 48, windows=2)
    (a,) = kv_eval(tiny_engine, tokens[:48], configs, 48)
    (b,) = kv_eval(tiny_engine, tokens[48:], configs, 48)
    # each window scores its last 23 positions, so the pooled perplexity is the geometric mean
    assert both["ppl"] == pytest.approx(math.sqrt(a["ppl"] * b["ppl"]), rel=1e-6)
    assert both["ppl_ref"] == pytest.approx(math.sqrt(a["ppl_ref"] * b["ppl_ref"]), rel=1e-6)
    assert both["dppl_pct"] == pytest.approx(100 * (both["ppl"] / both["ppl_ref"] - 1), rel=1e-6)
    assert both["kl"] == pytest.approx((a["kl"] + b["kl"]) / 2, rel=1e-6)
    assert both["top1"] == pytest.approx((a["top1"] + b["top1"]) / 2)
    assert both["kv_bytes"] == a["kv_bytes"] and both["dppl_se_pct"] > 0


def test_windows_need_text_for_all_of_them(tiny_engine):
    from kvrun.loaders.errors import KvrunError

    with pytest.raises(KvrunError, match="3 windows of ctx 48 needs at least 144"):
        kv_eval(tiny_engine, list(range(100)), [KVConfig.parse("4")], 48, windows=3)


def test_cli_kv_eval_windows(tmp_path, tiny_engine):
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    args = ["kv-eval", str(tiny_engine.path), "-f", str(text), "--ctx", "64", "--configs", "4,group=16,residual=8"]
    r = CliRunner().invoke(main, args + ["--windows", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert [x["config"] for x in json.loads(r.output)] == ["4,group=16,residual=8"]
    bad = CliRunner().invoke(main, args + ["--windows", "0"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--windows" in bad.output
    short = CliRunner().invoke(main, args + ["--windows", "99"])
    assert short.exit_code == 2 and "fewer --windows" in short.output


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
