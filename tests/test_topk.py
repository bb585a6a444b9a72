"""ops/cpu/topk: the k largest logits in one pass, for top-k sampling (runtime/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.ops.cpu.topk import top_k


def _best_first(x: np.ndarray, k: int) -> np.ndarray:
    """What top-k must give: a stable sort's first k, so that of equal logits the lower id ranks first."""
    return np.argsort(-x, kind="stable")[:k]


@pytest.mark.parametrize("n", [1, 7, 1000, 49152])
def test_the_k_largest_best_first(n):
    x = (np.random.default_rng(n).standard_normal(n) * 3).astype(np.float32)
    for k in sorted({1, min(n, 40), n}):
        np.testing.assert_array_equal(top_k(x, k), _best_first(x, k))


def test_of_equal_logits_the_lower_id_is_kept_and_ranks_first():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        k = int(rng.integers(1, n + 1))
        x = rng.integers(-4, 4, n).astype(np.float32)  # (many ties, at the k-th place too)
        np.testing.assert_array_equal(top_k(x, k), _best_first(x, k))


def test_masked_and_nan_logits_rank_last():
    x = np.array([np.nan, -np.inf, 2.0, -np.inf, 1.0], np.float32)
    assert top_k(x, 2).tolist() == [2, 4]
    assert set(top_k(x, 5)[:2].tolist()) == {2, 4}


def test_a_k_outside_the_row_is_a_value_error():
    with pytest.raises(ValueError, match="top-k of 0"):
        top_k(np.zeros(3, np.float32), 0)
    with pytest.raises(ValueError, match="top-k of 4"):
        top_k(np.zeros(3, np.float32), 4)


def test_its_heap_kernel_compiles_once(tmp_path):
    """Every call of the heap's sift passes int64 positions (a bare 0 is typed Literal[int](0) and compiles a second copy:
    ~0.5 s of a first run).  On an empty kernel cache, in a process of its own: a kernel loaded from the cache
    compiles no callee."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from kvrun.ops.cpu import topk; topk.top_k(np.arange(50, dtype=np.float32), 7); "
            "print(len(topk._sift_down.signatures))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KVRUN_JIT_CACHE": str(tmp_path)},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["1"]


def test_token_logprobs_are_the_log_softmax_with_the_top_ones_best_first():
    """runtime/engine.token_logprobs (the server's logprobs): the token's log-probability and the top ones', as a
    float64 log-softmax gives them (the exponentials run in float32, summed in float64)."""
    from kvrun.runtime.engine import token_logprobs

    x = (np.random.default_rng(3).standard_normal(50_000) * 4).astype(np.float32)
    x[[7, 9]] = x.max() + 1  # (a tie at the top: the lower id first)
    ref = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64) - x.max()).sum()) - x.max()
    tok, lp, top = token_logprobs(x, 123, 5)
    assert tok == 123 and abs(lp - ref[123]) < 1e-6
    assert [i for i, _ in top] == _best_first(x, 5).tolist() and top[0][0] == 7
    assert all(abs(v - ref[i]) < 1e-6 for i, v in top)
    assert [i for i, _ in token_logprobs(x[:4], 0, 9)[2]] == _best_first(x[:4], 4).tolist()  # (all of a small row)


def test_a_drafts_pick_is_the_best_logit_and_its_probability_among_the_k_largest():
    """ops/cpu/topk.draft_pick, EAGLE-3's and the MTP head's draft sampler (llama.cpp's: top-k 10, the first
    candidate's probability among them)."""
    from kvrun.ops.cpu.topk import draft_pick

    x = (np.random.default_rng(5).standard_normal(20_000) * 3).astype(np.float32)
    top = _best_first(x, 10)
    want = 1.0 / np.exp((x[top] - x[top[0]]).astype(np.float64)).sum()
    best, p = draft_pick(x, 10)
    assert best == int(top[0]) and p == pytest.approx(want, rel=1e-12)
    assert draft_pick(x[:4], 10) == (int(np.argmax(x[:4])), pytest.approx(1.0 / np.exp((x[:4] - x[:4].max()).astype(np.float64)).sum()))
