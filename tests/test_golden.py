"""kvrun agrees with llama.cpp on the real models (fixtures from tools/make_golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_model

FIX = Path(__file__).parent / "fixtures"
GPL3 = Path("/usr/share/common-licenses/GPL-3")


def _golden(name):
    return np.load(FIX / f"golden_{name}.npz"), json.loads((FIX / f"golden_{name}.json").read_text())


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def case(request, smollm2_path, gemma3_path):
    from kvrun.runtime.engine import Engine

    path = smollm2_path if request.param == "smollm2" else gemma3_path
    eng = Engine(path, n_ctx=512, n_batch=256)
    npz, meta = _golden(request.param)
    return request.param, eng, npz, meta


def kl_top(top_logp: np.ndarray, top_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row over llama.cpp's top tokens plus one bucket for the rest."""
    x = logits.astype(np.float64)
    lq_all = x - x.max(1, keepdims=True)
    lq_all -= np.log(np.exp(lq_all).sum(1, keepdims=True))
    lq = np.take_along_axis(lq_all, top_ids, 1)
    p = np.exp(top_logp.astype(np.float64))
    kl = (p * (top_logp - lq)).sum(1)
    p_rest = np.clip(1 - p.sum(1), 1e-12, 1)
    q_rest = np.clip(1 - np.exp(lq).sum(1), 1e-12, 1)
    return kl + p_rest * (np.log(p_rest) - np.log(q_rest))


def test_logits_agree_with_llamacpp(case):
    name, eng, npz, _ = case
    logits = eng.eval(eng.new_cache(), npz["prompt_ids"], logits_all=True)
    top1 = (logits.argmax(1) == npz["top_ids"][:, 0]).mean()
    kl = kl_top(npz["top_logp"], npz["top_ids"], logits).mean()
    assert top1 >= 0.99, f"{name}: top-1 agreement {top1:.3f}"
    assert kl <= 0.01, f"{name}: mean KL {kl:.4f} nats"


def test_greedy_text_matches_llamacpp(case):
    from kvrun.runtime.engine import GenRequest
    from kvrun.runtime.sampling import greedy

    name, eng, _, meta = case
    for g in meta["greedy"]:
        ids = list(eng.generate_tokens(eng.new_cache(), g["prompt_ids"], GenRequest(max_tokens=32, sampler=greedy(), ignore_eos=True)))
        assert ids == g["ids"][:32], f"{name}: {g['prompt']!r} diverged at token {next(i for i, (a, b) in enumerate(zip(ids, g['ids'])) if a != b)}"


def test_perplexity_within_one_percent_of_llamacpp(case):
    from kvrun.runtime.perplexity import perplexity

    name, eng, _, meta = case
    ref = meta["perplexity"]
    toks = eng.tokenizer.encode(GPL3.read_text(), add_bos=meta["add_bos"], parse_special=False)
    assert len(toks) == meta["n_text_tokens"]
    res = perplexity(eng, toks, ref["ctx"])
    assert res.n_tokens == ref["n_scored"]
    assert abs(res.ppl / ref["ppl"] - 1) <= 0.01, f"{name}: kvrun {res.ppl:.4f} vs llama.cpp {ref['ppl']:.4f}"
