"""A batch of sequences' decode rows attended in one launch per layer on the GPU (ops/gpu/batch_attention.cu).

A server's slots decoding together (cache/batch.py) each keep their own fp16 ring (cache/gpu_plain.py); the batch's
decode rows are stored by one kernel and attended by one more, each row finding its sequence's ring in a table made
once per batch composition.  What holds:

* every sequence gets the output it gets alone (within 1e-5; bitwise on the emulator, where both kernels are built by
  one compiler), over one split and several (the merge in the same launch), past a sliding window, with a softcap,
  with ALiBi and sinks; a prompt chunk in the batch goes alone, as before;
* a layer's step is 2 launches whatever the number of sequences, and leaves the split counters at zero;
* a captured step replays (the table is the graph's: nothing goes up), and a batch of an engine's decode steps
  replays its CUDA graph with each sequence's logits as alone.

Kernel-level checks run on the ``rt`` fixture (conftest.py: CUDA where a GPU is, else the emulator), the engine on
``--device gpu`` (``KVRUN_GPU_EMULATE=1`` without a GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_model

from kvrun.cache.base import LayerSpec
from kvrun.cache.gpu_plain import GPUPlainLayerCache, batch_update_and_attend
from kvrun.models.jina_bert import alibi_slopes
from kvrun.ops import gpu_available
from kvrun.ops.gpu import attention as attn
from kvrun.ops.gpu import batch_attention as batch_attn
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import kernels as K
from kvrun.ops.gpu.arrays import serve_positions
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

# the `rt` fixture (real CUDA where a GPU is, else the kernel emulator) is in conftest.py

SPECS = {
    # GQA over a long ring: up to 3 splits of 128 slots
    "gqa": LayerSpec(4, 2, 32, 32, 0, 32**-0.5),
    # a sliding window of 16 (a ring of 24 slots, wrapped by the longer sequences) with Gemma 2's soft-cap
    "window-softcap": LayerSpec(4, 1, 32, 32, 16, 32**-0.5, softcap=5.0),
    # BLOOM's ALiBi and gpt-oss's sinks at once, a head per KV head
    "alibi-sinks": LayerSpec(4, 4, 16, 16, 0, 0.25, alibi_slopes=tuple(map(float, alibi_slopes(4, 8.0))), sink_logits=(0.5, 3.0, -20.0, 1.0)),
}
#: (tokens held, rows fed) per sequence of each batch: one split and several, a prompt chunk of 6 rows (goes alone)
BATCHES = {
    1: [(200, 1)],
    3: [(5, 1), (40, 6), (130, 2)],
    8: [(0, 1), (3, 1), (40, 1), (129, 3), (300, 1), (17, 1), (127, 1), (260, 1)],
}
N_CTX = 320


def _cap(spec: LayerSpec) -> int:
    return N_CTX if spec.window <= 0 else spec.window + 8  # (make_gpu_plain_cache's, n_batch 8)


def _filled(rt, spec: LayerSpec, n: int, rng) -> tuple[GPUPlainLayerCache, GPUPlainLayerCache]:
    """A ring holding ``n`` random tokens, and its twin holding the same bits."""
    cap = _cap(spec)
    a, b = GPUPlainLayerCache(spec, cap), GPUPlainLayerCache(spec, cap)
    for p0 in range(0, n, 8):  # (a chunk never takes two slots of one ring)
        pos = np.arange(p0, min(n, p0 + 8), dtype=np.int32)
        k = rt.xp.asarray(rng.standard_normal((len(pos), spec.n_head_kv, spec.head_dim)).astype(np.float32))
        v = rt.xp.asarray(rng.standard_normal((len(pos), spec.n_head_kv, spec.head_dim_v)).astype(np.float32))
        a.note_positions(pos)
        attn.kv_store(k, v, rt.xp.asarray(pos), a.k, a.v, a.pos)
    b.k[...], b.v[...], b.pos[...], b.used = a.k, a.v, a.pos, a.used
    return a, b


def _step(rt, spec: LayerSpec, held: list[int], fed: list[int], rng):
    """The batch's rows (q, k, v on the device, host positions, bounds) after ``held[i]`` tokens, ``fed[i]`` each."""
    T = sum(fed)
    q = rt.xp.asarray(rng.standard_normal((T, spec.n_head, spec.head_dim)).astype(np.float32))
    k = rt.xp.asarray(rng.standard_normal((T, spec.n_head_kv, spec.head_dim)).astype(np.float32))
    v = rt.xp.asarray(rng.standard_normal((T, spec.n_head_kv, spec.head_dim_v)).astype(np.float32))
    pos = np.concatenate([np.arange(h, h + f, dtype=np.int32) for h, f in zip(held, fed)])
    return q, k, v, pos, np.concatenate([[0], np.cumsum(fed)]).astype(int).tolist()


def _alone(rt, twins: list[GPUPlainLayerCache], q, k, v, pos, bounds) -> np.ndarray:
    """Each sequence's rows through its own ring, one by one (``update_and_attend``, attention.cu's kernels)."""
    outs = []
    for i, L in enumerate(twins):
        lo, hi = bounds[i], bounds[i + 1]
        o = rt.xp.full((hi - lo, L.spec.n_head, L.spec.head_dim_v), np.nan, np.float32)
        L.update_and_attend(q[lo:hi], k[lo:hi], v[lo:hi], pos[lo:hi], o)
        outs.append(rt.asnumpy(o))
    return np.concatenate(outs)


def _together(rt, rings, q, k, v, pos, bounds) -> np.ndarray:
    out = rt.xp.full((q.shape[0], q.shape[1], rings[0].spec.head_dim_v), np.nan, np.float32)
    assert batch_update_and_attend(rings, q, k, v, pos, bounds, out)
    return rt.asnumpy(out)


def _same(rt, got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert np.abs(got - want).max() <= 1e-5, what
    if isinstance(rt, emulate.EmulatedRuntime):  # (one compiler builds both kernels: the same arithmetic, the same bits)
        assert np.array_equal(got, want), what


@pytest.mark.parametrize("name", list(SPECS))
def test_each_sequence_of_a_batch_gets_what_it_gets_alone(rt, name):
    spec = SPECS[name]
    rng = np.random.default_rng(3)
    for B, seqs in BATCHES.items():
        held, fed = [h for h, _ in seqs], [f for _, f in seqs]
        pairs = [_filled(rt, spec, h, rng) for h in held]
        rings, twins = [a for a, _ in pairs], [b for _, b in pairs]
        for step in range(2):  # (the second step: the table made by the first, the rows' new K/V among the keys)
            q, k, v, pos, bounds = _step(rt, spec, held, fed, rng)
            want = _alone(rt, twins, q, k, v, pos, bounds)
            _same(rt, _together(rt, rings, q, k, v, pos, bounds), want, f"{B} sequences, step {step}")
            held = [h + f for h, f in zip(held, fed)]
        for a, b in zip(rings, twins):  # (the rings hold what they hold alone)
            assert np.array_equal(rt.asnumpy(a.k), rt.asnumpy(b.k)) and np.array_equal(rt.asnumpy(a.pos), rt.asnumpy(b.pos))


def _launches(monkeypatch, run) -> list[str]:
    names: list[str] = []
    real = K.launch

    def counting(name, *args, **kw):
        names.append(name)
        return real(name, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(K, "launch", counting)
        run()
    return names


def test_a_layers_decode_step_is_two_launches_whatever_the_batch(rt, monkeypatch):
    """Store and attention, once each for 1, 3 or 8 sequences, over several splits too (the merge needs no launch of
    its own); the split counters are back at zero for the next launch.  Printed: the per-sequence launches of before."""
    spec = SPECS["gqa"]
    rng = np.random.default_rng(4)
    for B in (1, 3, 8):
        held = [300 - 37 * i for i in range(B)]
        rings = [_filled(rt, spec, h, rng)[0] for h in held]
        q, k, v, pos, bounds = _step(rt, spec, held, [1] * B, rng)
        out = rt.xp.zeros((B, spec.n_head, spec.head_dim_v), np.float32)
        after = _launches(monkeypatch, lambda: batch_update_and_attend(rings, q, k, v, pos, bounds, out))
        assert after == ["kv_store_batch_f16", "attn_decode_batch_f16"], f"{B} sequences"
        t = batch_attn.table(rings, list(range(B)))
        assert not rt.asnumpy(t.count).any()

        def per_sequence() -> None:  # (what batch_update_and_attend launched before: each sequence alone)
            for i, L in enumerate(rings):
                L.note_positions(pos[i : i + 1] + 1)
                L.attend(q[i : i + 1], rt.xp.asarray(pos[i : i + 1] + 1), out[i : i + 1], spec)
                attn.kv_store(k[i : i + 1], v[i : i + 1], rt.xp.asarray(pos[i : i + 1] + 1), L.k, L.v, L.pos)

        before = _launches(monkeypatch, per_sequence)
        print(f"{B} sequences, one layer's decode step over 3 splits: {len(before)} launches before, {len(after)} now")


def test_a_captured_batch_step_replays_with_new_rows(rt):
    """The step captured as a CUDA graph (positions from a device buffer, as runtime/batch_graphs.py serves them) and
    replayed for the next step's rows: each sequence's output as alone, nothing uploaded."""
    spec = SPECS["alibi-sinks"]
    rng = np.random.default_rng(5)
    held, B = [10, 200, 140], 3
    pairs = [_filled(rt, spec, h, rng) for h in held]
    rings, twins = [a for a, _ in pairs], [b for _, b in pairs]
    q, k, v, pos, bounds = _step(rt, spec, held, [1] * B, rng)
    want = _alone(rt, twins, q, k, v, pos, bounds)
    _same(rt, _together(rt, rings, q, k, v, pos, bounds), want, "eager")  # (the composition's table made here)
    out = rt.xp.zeros((B, spec.n_head, spec.head_dim_v), np.float32)
    pos_d = rt.xp.asarray(pos)
    serve_positions(pos, pos_d)
    try:
        graph = rt.capture(lambda: batch_update_and_attend(rings, q, k, v, pos, bounds, out))
    finally:
        serve_positions(None, None)
    if isinstance(rt, emulate.EmulatedRuntime):
        assert [name for name, *_ in graph.launches] == ["kv_store_batch_f16", "attn_decode_batch_f16"]
    for _ in range(2):
        q2, k2, v2, _, _ = _step(rt, spec, held, [1] * B, rng)
        pos = pos + 1
        for L, p in zip(rings, pos):
            L.note_positions(np.array([p]))
        q[...], k[...], v[...], pos_d[...] = q2, k2, v2, rt.xp.asarray(pos)
        graph.launch()
        _same(rt, rt.asnumpy(out), _alone(rt, twins, q2, k2, v2, pos, bounds), f"replayed at {pos.tolist()}")


def test_an_engines_batch_of_decode_steps_replays_its_graph_with_each_sequences_logits(gpu_env, tmp_path, monkeypatch):
    """The tiny llama, three sequences (one past a split of 128 slots): a batch of decode steps captured, then
    replayed, each sequence's logits as alone (the products take 1 and 3 rows: rounding apart), and a step's attention
    is 2 launches a layer."""
    eng = Engine(write_tiny_model(tmp_path / "m.gguf", "llama"), device="gpu", n_ctx=192, n_batch=160)
    prompts = [[1, 5, 9], list(range(1, 140)), [1, 30, 31, 32, 33, 34, 35]]
    steps = [[4, 50, 3], [6, 7, 8], [90, 91, 92]]
    want = []
    for p, s in zip(prompts, steps):
        c = eng.new_cache()
        eng.eval(c, p)
        want.append([eng.eval(c, [t])[-1] for t in s])
    caches = [eng.new_cache() for _ in prompts]
    for c, p in zip(caches, prompts):
        eng.eval(c, p)
    got: list[list[np.ndarray]] = [[] for _ in prompts]
    for j in range(3):
        outs = [np.empty((1, eng.cfg.n_vocab), np.float32) for _ in prompts]
        names = _launches(monkeypatch, lambda: eng.forward_batch(caches, [np.array([s[j]]) for s in steps], [0] * 3, outs))
        if j == 0:  # (the eager step, then its capture; a replay launches through the graph)
            layer = ["kv_store_batch_f16", "attn_decode_batch_f16"]
            assert [n for n in names if "attn" in n or "kv_store" in n] == layer * len(caches[0].layers) * 2
        for g, o in zip(got, outs):
            g.append(o[0].copy())
    for a, b in zip(want, got):
        for x, y in zip(a, b):
            assert np.abs(x - y).max() <= 2e-3 * np.abs(x).max()
    assert (eng.batch_graphs.n_captures, eng.batch_graphs.n_replays) == (1, 2)
