"""Eviction policies as specifications: each scores tokens from attention or keys and the base picks victims.

Small hand-made tensors, exact expected victims.  Slots here are 0..N-1 of
one layer, 2 KV heads.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from kvrun.cache.policies import POLICIES, Policy, make_policy

N_KV, N = 2, 8
POS = np.arange(N, dtype=np.int32)


def _step(p: Policy, probs: np.ndarray) -> None:
    """One decode step as the cache runs it: before_step, the kernel adds probabilities, after_step."""
    p.before_step()
    if p.needs_probs:
        p.acc += probs
    p.after_step()


def _probs(hot: dict[int, int]) -> np.ndarray:
    """[n_kv, N] attention: head h puts 0.9 on slot hot[h], the rest spread evenly."""
    a = np.full((N_KV, N), 0.1 / (N - 1), np.float32)
    for h, j in hot.items():
        a[h, j] = 0.9
    return a


def test_registry_has_every_policy_and_rejects_unknown_names():
    assert set(POLICIES) == {"streaming", "h2o", "tova", "snapkv", "keydiff", "gkv"}
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert "arxiv.org" in (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__)
    with pytest.raises(ValueError, match="known: gkv, h2o, keydiff, snapkv, streaming, tova"):
        make_policy("lru", N_KV, N)


def test_streaming_evicts_the_oldest():
    p = make_policy("streaming", N_KV, N)
    for j in range(N):
        p.on_insert(np.array([j, N - 1 - j]), int(POS[j]), np.ones((N_KV, 4), np.float32))
    assert not p.needs_probs
    # head 0 got position j in slot j; head 1 got position j in slot N-1-j
    assert p.victim(0, 0, N, POS) == 0
    assert p.victim(1, 0, N, POS[::-1].copy()) == N - 1


def test_h2o_keeps_heavy_hitters_over_time():
    p = make_policy("h2o", N_KV, N)
    _step(p, _probs({0: 3, 1: 5}))
    _step(p, _probs({0: 3, 1: 2}))
    _step(p, _probs({0: 6, 1: 2}))
    # accumulated: head 0 slot 3 = 1.8, slot 6 = 0.9; the rest are equal, the oldest of them goes
    assert p.victim(0, 0, N, POS) == 0
    assert set(p.top_k(0, np.arange(N), POS, 2)) == {3, 6}
    assert set(p.top_k(1, np.arange(N), POS, 2)) == {2, 5}


def test_tova_uses_only_the_latest_attention():
    p = make_policy("tova", N_KV, N)
    _step(p, _probs({0: 3, 1: 3}))
    _step(p, _probs({0: 6, 1: 6}))
    assert p.top_k(0, np.arange(N), POS, 1)[0] == 6  # slot 3's past attention is forgotten
    assert np.allclose(np.delete(p.score[0], 6), 0.1 / (N - 1))


def test_snapkv_pools_over_neighbouring_positions():
    p = make_policy("snapkv", N_KV, 16)
    pos = np.arange(16, dtype=np.int32)
    probs = np.zeros((N_KV, 16), np.float32)
    probs[:, 8] = 1.0  # one heavy token
    probs[:, 0] = 0.5
    _step(p, probs)
    # max-pooling (kernel 7) protects 5..11 around the heavy token and 0..3 around slot 0
    keep = set(p.top_k(0, np.arange(16), pos, 11))
    assert keep == set(range(0, 4)) | set(range(5, 12))
    assert p.victim(0, 0, 16, pos) == 4  # the oldest token outside both clusters
    # its observation window decays: after many quiet steps the old heavy token fades
    for _ in range(200):
        _step(p, np.zeros((N_KV, 16), np.float32))
    assert p.score[0, 8] < 1e-2


def _pooled_reference(s: np.ndarray, pos: np.ndarray, kernel: int) -> np.ndarray:
    """SnapKV's pooling as written: per row, slots in stable position order, each the max over its
    ``kernel`` neighbours there, the ends repeated."""
    out = np.empty_like(s)
    half = kernel // 2
    for r in range(s.shape[0]):
        order = np.argsort(pos[r], kind="stable")
        ss = np.pad(s[r, order], (half, kernel - 1 - half), mode="edge")
        out[r, order] = np.lib.stride_tricks.sliding_window_view(ss, kernel).max(axis=1)
    return out


@pytest.mark.parametrize("top", [40, 60_000, 50_000_000])  # positions needing one, two and four radix bytes
def test_snapkv_host_pooling_is_the_stable_position_order_max(top):
    """The host's pooled ranks (a radix sort, as every spilling token ranks each pool) equal the max over
    neighbours in stable position order, with empty slots (-1), tied scores and any row length."""
    from kvrun.cache.policies.snapkv import pooled_rows

    rng = np.random.default_rng(top)
    for n in (1, 2, 7, 33, 300):
        for kernel in (1, 4, 7):
            pos = np.stack([rng.choice(max(top, n), n, replace=False) for _ in range(3)]).astype(np.int32)  # (distinct, any order)
            pos[:, rng.random(n) < 0.2] = -1  # empty slots sort first, in slot order
            s = rng.random((3, n)).astype(np.float32)
            s[:, rng.random(n) < 0.2] = 0.5
            out = np.full_like(s, np.nan)
            pooled_rows(s, pos, kernel, out)
            np.testing.assert_array_equal(out, _pooled_reference(s, pos, kernel), err_msg=f"n={n} kernel={kernel}")


def test_snapkv_kept_order_follows_moved_slots_as_a_fresh_sort():
    """The position order kept between rankings (a decode step or a spilling token moves one or two
    slots; many moved: sorted again) is always the fresh stable order, and the ranks the fresh ones."""
    from kvrun.cache.policies.snapkv import NO_ORDER, pooled_rows_kept

    rng = np.random.default_rng(7)
    m, n = 3, 257
    pos = np.stack([rng.permutation(4 * n)[:n] for _ in range(m)]).astype(np.int32)
    pos[:, rng.random(n) < 0.3] = -1  # empty slots
    order, prev = np.empty((m, n), np.int64), np.full((m, n), NO_ORDER, np.int32)
    top = 4 * n
    for step in range(60):
        for r in range(m):
            for c in rng.choice(n, size=int(rng.choice([0, 1, 2, 5, 30])), replace=False):
                u = rng.random()
                if u < 0.15:
                    pos[r, c] = -1  # emptied (a truncation)
                elif u < 0.4 and (old := int(rng.integers(0, top))) not in pos[r]:
                    pos[r, c] = old  # an older token (demoted into a pool)
                else:
                    pos[r, c] = top  # the newest (spilled from the window)
                    top += 1
        s = rng.random((m, n)).astype(np.float32)
        s[:, rng.random(n) < 0.2] = 0.25
        out = np.empty_like(s)
        pooled_rows_kept(s, pos, 7, out, order, prev)
        for r in range(m):
            np.testing.assert_array_equal(order[r], np.argsort(pos[r], kind="stable"), err_msg=f"step {step} row {r}")
        np.testing.assert_array_equal(out, _pooled_reference(s, pos, 7))


def test_snapkv_decode_victim_is_the_least_pooled_rank_oldest_on_ties():
    """The one-call steps find SnapKV's victim from the pooled scores in position order (no ranks written
    back): the first empty slot, else the least pooled score, the oldest on ties, as Policy.victim picks
    over the pooled ranks; with the order kept from call to call, slots moving between calls."""
    from kvrun.cache.insert import _pick
    from kvrun.cache.policies.snapkv import NO_ORDER, pooled_victim

    rng = np.random.default_rng(11)
    for n in (1, 5, 16, 17, 300):
        pos = rng.permutation(4 * n)[:n].astype(np.int32)
        order, prev = np.empty(n, np.int64), np.full(n, NO_ORDER, np.int32)
        top = 4 * n
        for step in range(40):
            s = (rng.integers(0, 3, n) if step % 2 else rng.random(n)).astype(np.float32)  # many ties, or few
            if step % 7 == 3:
                pos[rng.integers(0, n)] = -1  # an empty slot
            got = pooled_victim(s, pos, 7, order, prev)
            want = _pick(pos, 0, n, _pooled_reference(s[None], pos[None], 7)[0])[0]
            assert got == want, f"n={n} step {step}"
            pos[got] = top  # the victim's slot takes the newest token
            top += 1


def test_snapkv_prefill_scores_by_the_observation_window():
    p = make_policy("snapkv", 1, 6)
    T = 40
    probs = np.zeros((T, 2 + T), np.float32)
    probs[:-32, 0] = 1.0  # early queries look at stored slot 0
    probs[-32:, 1] = 1.0  # the observation window looks at stored slot 1
    p.prefill(0, probs, np.array([0, 1]))
    assert p.score[0, 0] == 0 and p.score[0, 1] == 32


def test_keydiff_evicts_the_key_most_like_the_anchor():
    p = make_policy("keydiff", 1, 4)
    e0, e1 = np.eye(4, dtype=np.float32)[:2]
    for j, k in enumerate([e0, e0, e0 + 0.1 * e1, e1]):
        p.on_insert(np.array([j]), j, k[None, :])
    # slot 0 scored against an empty anchor (0); slots 1, 2 point along the anchor e0; slot 3 is orthogonal
    assert p.score[0, 1] == pytest.approx(-1.0)
    assert p.victim(0, 1, 4, np.arange(1, 4, dtype=np.int32)) == 1
    assert p.score[0, 3] == pytest.approx(0.0, abs=0.05)  # near-orthogonal to the anchor: kept over slots 1, 2
    assert p.score[0, 3] > p.score[0, 2] > p.score[0, 1]


def test_gkv_mixes_current_and_decayed_history():
    p = make_policy("gkv", N_KV, N)
    a, g = p.alpha, p.gamma
    _step(p, _probs({0: 2, 1: 2}))
    _step(p, _probs({0: 4, 1: 4}))
    hist2 = g * 0.9 + 0.1 / (N - 1)
    expect = a * (0.1 / (N - 1)) + (1 - a) * (1 - g) * hist2
    assert p.score[0, 2] == pytest.approx(expect, rel=1e-5)
    # the token important one step ago outranks the never-attended ones, but not the current one
    r = p.score[0]
    assert r[4] > r[2] > r[0]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_scores_travel_with_their_token(name):
    p = make_policy(name, N_KV, N)
    p.on_insert(np.array([1, 1]), 7, np.ones((N_KV, 4), np.float32))
    _step(p, _probs({0: 1, 1: 1}))
    before = [a[:, 1].copy() for a in p.per_slot()]
    p.move(0, 1, 5)
    p.move(1, 1, 5)
    for b, a in zip(before, p.per_slot()):
        np.testing.assert_array_equal(a[:, 5], b)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_victim_is_inside_the_range_and_ties_go_to_the_oldest(name):
    p = make_policy(name, N_KV, N)
    pos = np.array([9, 3, 7, 5], np.int32)  # slots 2..5 hold these positions
    v = p.victim(0, 2, 6, pos)
    assert 2 <= v < 6
    if name not in ("keydiff",):  # all scores equal -> the oldest (position 3, slot 3)
        assert v == 3


# ----------------------------------------------------------------- the one-call decode step
ONE_CALL_KV = [
    "2,policy=h2o,budget=24,residual=4,sinks=2,group=16",
    "4,policy=snapkv,budget=24,residual=4,group=16",
    "2,policy=gkv,budget=24,residual=4,mixed=4/2,group=16",  # demotions
    "2,policy=tova,budget=24,residual=4,merge=mean,group=16",
    "4,policy=h2o,budget=24,residual=4,sinks=2,merge=keepkv,group=16",
    "3,policy=keydiff,budget=24,residual=4,merge=keepkv,mixed=8/3,group=16",  # demotions and merges in pool 1
    "2,policy=streaming,budget=24,residual=4,sinks=2,group=16",
    # fp16 pools (an eviction policy alone, --kv-budget): stored by the one call too since stop 33
    "16,policy=h2o,budget=24,residual=4,sinks=2",
    "16,policy=snapkv,budget=24,residual=4,merge=keepkv",
    "2,policy=tova,budget=24,residual=4,mixed=16/2,merge=mean,group=16",  # demotions from fp16 slots
]


@pytest.mark.parametrize("spec", ONE_CALL_KV)
def test_one_call_policy_decode_keeps_what_the_step_by_step_path_keeps(spec):
    """insert.policy_push (one Numba call per layer-step) against CompressedLayerCache's
    Python path (_push/_place/Merger.evict): the same held positions at every step, the
    same merge weights, scores and outputs to float noise (the similarity sums run in
    another order), codes equal but for rare near-ties."""
    calls = _one_call_against_step_by_step(spec, [10] + [1] * 30 + [3, 2, 4] + [1] * 27)  # steps of up to 4 tokens: token by token
    assert calls["decode"] == 30 + 3 + 2 + 4 + 27  # every decode token took the one call


@pytest.mark.parametrize("spec", ONE_CALL_KV)
def test_one_call_policy_prefill_keeps_what_the_step_by_step_path_keeps(spec):
    """Prefill chunks once the layer is calibrated, as the Python path places them: in one
    policy_push_tokens call each, the ranks from the score as each token comes (SnapKV's pooled),
    each token's state from Policy.insert_chunk."""
    calls = _one_call_against_step_by_step(spec, [10] + [1] * 10 + [12, 8, 16] + [1] * 8 + [20, 6])
    # (the first chunk too, from the spill that calibrates the layer on)
    assert 12 + 8 + 16 + 20 + 6 < calls["prefill"] < 10 + 12 + 8 + 16 + 20 + 6 and calls["decode"] == 18
    assert calls["chunks"] == 6


@pytest.mark.parametrize("spec", ONE_CALL_KV)
def test_a_decode_step_with_the_hooks_in_the_one_call_computes_what_their_python_calls_do(spec):
    """insert.policy_decode_step does a policy's on_insert, before_step and after_step itself where
    Policy.fused_hooks says how (H2O, SnapKV, TOVA, StreamingLLM; not KeyDiff's or G-KV's own): the
    same outputs, scores, codes and positions, bit for bit, as the hooks called from Python."""
    from kvrun.cache.base import LayerSpec
    from kvrun.cache.compressed import CompressedLayerCache
    from kvrun.cache.kvconfig import KVConfig

    spec_l = LayerSpec(n_head=4, n_head_kv=2, head_dim=32, head_dim_v=32, scale=32**-0.5)
    kv = KVConfig.parse(spec).validate(128)
    fused, hooks = CompressedLayerCache(spec_l, kv, 128), CompressedLayerCache(spec_l, kv, 128)
    hooks.policy.fused_hooks = lambda: None  # type: ignore[method-assign]
    name = kv.policy
    assert (fused._fused_hooks is None) == (name in ("keydiff", "gkv")) and hooks._fused_hooks is None
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    p = 0
    for T in [10] + [1] * 40 + [3, 2, 4] + [1] * 20:
        q, k, v = (rng.standard_normal((T, n, 32)).astype(np.float32) for n in (4, 2, 2))
        pos = np.arange(p, p + T, dtype=np.int32)
        a, b = np.zeros((T, 4, 32), np.float32), np.zeros((T, 4, 32), np.float32)
        fused.update_and_attend(q, k, v, pos, a)
        hooks.update_and_attend(q, k, v, pos, b)
        np.testing.assert_array_equal(a, b, err_msg=f"output at {p}")
        np.testing.assert_array_equal(fused.pos, hooks.pos)
        for x, y in zip(fused.policy.per_slot(), hooks.policy.per_slot(), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"policy state at {p}")
        p += T
    assert p - fused.n_tokens() > 40  # evicted
    for x, y in zip(fused.pools, hooks.pools, strict=True):
        for arr in ("kc", "km", "vc", "vm"):
            np.testing.assert_array_equal(getattr(x, arr), getattr(y, arr))


def test_a_subclass_that_changes_a_hook_gets_its_python_call():
    from kvrun.cache.policies import SnapKV

    class Louder(SnapKV):
        def after_step(self) -> None:
            super().after_step()
            self.score *= 2

    assert SnapKV(2, 8).fused_hooks() == (0, 1, float(np.float32(1 - 1 / 32))) and Louder(2, 8).fused_hooks() is None


def _one_call_against_step_by_step(spec: str, steps: list[int]) -> dict[str, int]:
    """Feed one random stream through a layer taking the one-call steps and one taking the Python path
    (FAST_DECODE off), checking they keep the same tokens after every step; returns how many tokens
    went in by the one call in decode steps and in prefill chunks."""
    from kvrun.cache.base import LayerSpec
    from kvrun.cache.compressed import CompressedLayerCache
    from kvrun.cache.kvconfig import KVConfig

    spec_l = LayerSpec(n_head=4, n_head_kv=2, head_dim=32, head_dim_v=32, scale=32**-0.5)
    kv = KVConfig.parse(spec).validate(128)
    fast, slow = CompressedLayerCache(spec_l, kv, 128), CompressedLayerCache(spec_l, kv, 128)
    slow.FAST_DECODE = False
    calls = {"decode": 0, "prefill": 0, "chunks": 0}
    orig = fast._policy_decode_fast

    def counted(q, *a):
        calls["decode"] += len(q)
        orig(q, *a)

    fast._policy_decode_fast = counted  # type: ignore[method-assign]
    chunk = fast._policy_chunk_fast

    def counted_chunk(k, vr, pos, first):
        calls["prefill"] += len(pos)
        calls["chunks"] += 1
        chunk(k, vr, pos, first)

    fast._policy_chunk_fast = counted_chunk  # type: ignore[method-assign]
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    # KeepKV weighs a merge by the two tokens' scores, and the scores carry float noise (the
    # one call moves the queries into the cache basis by butterflies, the Python path by a
    # matmul): a merged row then differs in its last bits, a later re-quantization may round it
    # the other way, and the merges carry that on (at 2 bits: 2.8e-3 by step 36, 7.6e-2 by 69;
    # hence 4 bits here, where the outputs stay within the bound); positions and weights stay exact
    tol = 2e-3
    p = 0
    for T in steps:
        q = rng.standard_normal((T, 4, 32)).astype(np.float32)
        k = rng.standard_normal((T, 2, 32)).astype(np.float32)
        v = rng.standard_normal((T, 2, 32)).astype(np.float32)
        pos = np.arange(p, p + T, dtype=np.int32)
        want, got = np.zeros((T, 4, 32), np.float32), np.zeros((T, 4, 32), np.float32)
        slow.update_and_attend(q, k, v, pos, want)
        fast.update_and_attend(q, k, v, pos, got)
        np.testing.assert_array_equal(fast.pos, slow.pos, err_msg=f"held positions at {p}")
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max(), err_msg=f"output at {p}")
        for a, b in zip(fast.policy.per_slot(), slow.policy.per_slot(), strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=1e-6)
        p += T
    assert p - fast.n_tokens() > 40  # evicted
    np.testing.assert_allclose(fast.logw, slow.logw, rtol=1e-5)
    if "keepkv" in spec:
        assert (fast.logw > 0).any()
    for i, (a, b) in enumerate(zip(fast._free, slow._free, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"empty slots of pool {i}")
    for a, b in zip(fast.pools, slow.pools, strict=True):
        for name in ("kc", "km", "vc", "vm"):
            if getattr(b, name).size:
                assert (getattr(a, name) == getattr(b, name)).mean() >= 0.99, name
    return calls
