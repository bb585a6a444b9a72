"""The compressed KV cache with ALiBi (in bloom, mpt, jais, refact and baichuan 13B), on the CPU and on the GPU.

ALiBi is llama.cpp's ``soft_max_ext`` max_bias: head h's logit for a key at position pk from a query at pq gets
``slope_h * (pk - pq)``.  The compressed caches add it in their kernels from each slot's stored position (the position
a policy keeps per slot), never as a key channel that would be quantized with the keys:

* the CPU's models hand the layer one more query and key channel (``LayerSpec.position_channel``, models/bloom.py);
  the compressed cache takes the slopes from the queries' and stores the keys without it;
* the GPU's specs carry the slopes (``LayerSpec.alibi_slopes``), which the device kernels and the cache's host steps
  both add.

Checked: 8-bit caches give the plain cache's logits (within 1e-2, where dropping ALiBi moves them by whole units), a
4-bit cache decodes greedily as the plain one does, an evicted cache's bias is the true distance (a test that slot
numbers in place of positions fail), the GPU (kernel emulator) against the CPU at 4 bits within 2e-3, ``kvrun run
--kv-bits 4`` and a saved session's round trip.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from gpu_checks import check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import LayerSpec
from kvrun.cache.compressed import CompressedLayerCache
from kvrun.cache.factory import make_cache
from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.models.jina_bert import alibi_slopes
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime import sessionfile
from kvrun.runtime.engine import Engine

PROMPT = list(np.random.default_rng(3).integers(0, 200, 40))
#: a small fp16 window and few sinks, so that most of the 40-token prompt is quantized
SMALL_WINDOW = "residual=8,sinks=2"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("alibi")
    return {name: write_tiny_model(d / f"{name}.gguf", **FIXTURE_MODELS[name]) for name in ("bloom", "mpt", "refact", "jais")}


def _logits(path, kv: str | None, steps=(5, 9, 14, 3)) -> np.ndarray:
    """The prompt's every row, then ``steps`` decoded one token each: [40 + len(steps), n_vocab]."""
    eng = Engine(path, device="cpu", n_ctx=64, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
    cache = eng.new_cache()
    rows = [eng.eval(cache, PROMPT, logits_all=True)]
    rows += [eng.eval(cache, [tok]).reshape(1, -1) for tok in steps]
    return np.concatenate(rows)


# ----------------------------------------------------------------- the CPU's models
# (refact: multi-query, one KV head for every slope; jais: 1/head_dim scale, a head count that is no power of two)
@pytest.mark.parametrize("name", ["bloom", "mpt", "refact", "jais"])
def test_an_8_bit_cache_gives_the_plain_caches_logits(fixtures, name):
    """Prefill (16-token chunks over quantized slots) and decode steps (the one-call kernels): 8 bits within 1e-2 of the
    plain fp16 cache's logits (relative to their largest; measured 4e-4 to 1.4e-3, a non-ALiBi model's quantization
    noise: starcoder's 7e-4), and lossless 16-bit pools behind a policy (every kernel a policy's cache runs) within
    1e-3 absolute, where a cache that dropped ALiBi is whole units off (below)."""
    want = _logits(fixtures[name], None)
    assert rel_err(want, _logits(fixtures[name], f"8,{SMALL_WINDOW}")) < 1e-2
    assert np.abs(_logits(fixtures[name], f"16,{SMALL_WINDOW},policy=h2o,budget=64") - want).max() < 1e-3
    assert np.abs(want).max() > 5.0  # (logits of some size: the bounds mean something)


def test_the_bias_is_there_to_be_missed(fixtures, monkeypatch):
    """The check above has teeth: the same cache with its slopes zeroed on every step is far off."""
    want = _logits(fixtures["bloom"], None)
    orig = CompressedLayerCache._without_position_channel

    def no_slopes(self, q, k):
        q, k = orig(self, q, k)
        self._alibi[:] = 0.0
        return q, k

    monkeypatch.setattr(CompressedLayerCache, "_without_position_channel", no_slopes)
    assert np.abs(_logits(fixtures["bloom"], f"8,{SMALL_WINDOW}") - want).max() > 0.5


def test_a_4_bit_cache_decodes_greedily_as_the_plain_one(fixtures):
    """12 greedy tokens after the prompt: the 4-bit cache picks the plain cache's token at every step (fed the plain
    cache's tokens, so one near-tie cannot derail the rest), its logits within 5% of the plain ones' range."""
    engines = {kv: Engine(fixtures["bloom"], device="cpu", n_ctx=64, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
               for kv in (None, f"4,{SMALL_WINDOW}")}  # fmt: skip
    caches = {kv: e.new_cache() for kv, e in engines.items()}
    rows = {kv: e.eval(caches[kv], PROMPT[:20])[-1] for kv, e in engines.items()}
    assert isinstance(caches[f"4,{SMALL_WINDOW}"][0], CompressedLayerCache)
    for _ in range(12):
        want, got = rows[None], rows[f"4,{SMALL_WINDOW}"]
        assert int(np.argmax(got)) == int(np.argmax(want))
        assert rel_err(want, got) < 5e-2
        rows = {kv: e.eval(caches[kv], [int(np.argmax(want))])[-1] for kv, e in engines.items()}
    assert caches[f"4,{SMALL_WINDOW}"][0].pools[0].calibrated  # (quantized slots were read)


# ----------------------------------------------------------------- eviction: the true positions
#: the CPU's form (keys one channel wider: the position; queries ``slope / scale``), GQA 2, slopes 8.0's
H, N_KV, D, SCALE = 4, 2, 16, 0.25
SLOPES = alibi_slopes(H, 8.0)
SPEC = LayerSpec(H, N_KV, D + 1, D, 0, SCALE, position_channel=True)


def _reference(cache: CompressedLayerCache, q: np.ndarray, pq: int, extra=None) -> np.ndarray:
    """softmax(scale q.k + slope_h (pos_k - pq)) V in float64 over what ``cache`` holds (the keys and values as stored,
    unrotated: the cache's basis is the model's), each key at the position the cache keeps for it; ``extra``: (keys,
    values, positions) of a prefill chunk's own tokens, [T, n_kv, D], [T, n_kv, D], [T]."""
    out = np.zeros((H, D))
    for kh in range(N_KV):
        ids, k, v = cache.stored_rows(kh)
        pk = cache.pos[kh if cache.P > 1 else 0, ids].astype(np.float64)
        k, v = k[: len(ids)].astype(np.float64), v[: len(ids)].astype(np.float64)
        if extra is not None:
            ek, ev, ep = extra
            k = np.concatenate([k, ek[:, kh].astype(np.float16).astype(np.float64)])
            v = np.concatenate([v, ev[:, kh].astype(np.float16).astype(np.float64)])
            pk = np.concatenate([pk, ep.astype(np.float64)])
        for g in range(H // N_KV):
            h = kh * (H // N_KV) + g
            s = SCALE * (k @ q[h, :D].astype(np.float64)) + SLOPES[h] * (pk - pq)
            s = np.where(pk <= pq, s, -np.inf)
            e = np.exp(s - s.max())
            out[h] = e @ v / e.sum()
    return out


@pytest.mark.parametrize("kv", ["8,policy=h2o,budget=24", "8,policy=snapkv,budget=24", "8,policy=tova,budget=24,mixed=8/4"])
def test_an_evicted_cache_is_biased_by_its_tokens_true_positions(kv):
    """A policy keeps 24 of 60 tokens, holes between them: every step's output (prefill chunks over the held slots,
    decode steps through the one-call kernels) is the float64 formula over the slots' own positions.  Slot numbers in
    their place (a cache that put the bias on the slot order) are off by whole units."""
    cfg = KVConfig.parse(f"{kv},residual=4,sinks=2,group=16,rotate=0,center=0,smooth=0").validate(64)
    cache = CompressedLayerCache(SPEC, cfg, 64)
    cache.int_keys = False  # (float queries: the formula's own)
    rng = np.random.default_rng(11)
    p = 0
    for T in [12, 1, 1, 1, 9, 1, 1, 1, 1, 12, 1, 1, 3, 1, 1, 1, 1, 6, 1, 1, 1, 1]:
        q = rng.standard_normal((T, H, D + 1)).astype(np.float32)
        k = rng.standard_normal((T, N_KV, D + 1)).astype(np.float32)
        v = rng.standard_normal((T, N_KV, D)).astype(np.float32)
        pos = np.arange(p, p + T, dtype=np.int32)
        q[..., D] = SLOPES / np.float32(SCALE)  # the CPU's model's channels (models/bloom.py)
        k[..., D] = pos[:, None]
        chunk = (k[..., :D], v, pos) if T > 4 else None  # (a prefill chunk attends before it is stored)
        if chunk is not None:
            want = [_reference(cache, q[t], int(pos[t]), chunk) for t in range(T)]
        out = np.zeros((T, H, D), np.float32)
        cache.update_and_attend(q, k, v, pos, out)
        if chunk is None:
            want = [_reference(cache, q[t], int(pos[t])) for t in range(T)]
        np.testing.assert_allclose(out, np.stack(want), atol=2e-4, err_msg=f"chunk of {T} at {p}")
        p += T
    held = np.sort(cache.pos[0][cache.pos[0] >= 0])
    assert len(held) == 24 and held[-1] - held[0] >= 40  # evicted: 24 tokens spread over the 60
    assert not np.array_equal(held, np.arange(held[0], held[0] + 24))
    # the same slots scored by slot number in place of position: whole units away
    real = cache.pos.copy()
    cache.pos[:] = np.where(real >= 0, np.arange(cache.N)[None, :], -1)
    q = rng.standard_normal((1, H, D + 1)).astype(np.float32)
    q[..., D] = SLOPES / np.float32(SCALE)
    by_slot = _reference(cache, q[0], cache.N)
    cache.pos[:] = real
    assert np.abs(by_slot - _reference(cache, q[0], p - 1)).max() > 0.1


# ----------------------------------------------------------------- the GPU (the kernel emulator without one)
needs_gpu = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")


@needs_gpu
def test_the_gpu_cache_matches_the_cpus_at_4_bits(gpu_env, fixtures, monkeypatch):
    """bloom at 4 bits on ``--device gpu`` (the slopes in its specs) against the CPU's (the position channel): prefill,
    then decode steps replayed from captured CUDA graphs, within 2e-3."""
    monkeypatch.setattr(CompressedLayerCache, "int_keys", False)  # float queries, as the device's kernels
    _, cache = check_prefill_and_replayed_decode(fixtures["bloom"], kv=KVConfig.parse(f"4,{SMALL_WINDOW}"))
    assert cache[0].spec.alibi_slopes and cache[0].pools[0].calibrated


@needs_gpu
def test_the_gpu_cache_with_a_policy_matches_the_cpus(gpu_env, fixtures, monkeypatch):
    """refact (one KV head for every slope) at 4 bits with H2O keeping 16 of 44 tokens: the device's policy prefill
    (batched GEMMs over every slot, the 40-token prompt's later chunks) and its decode steps, within 2e-3."""
    monkeypatch.setattr(CompressedLayerCache, "int_keys", False)
    prefills = []
    orig = GPUCompressedLayerCache._policy_prefill_on_device
    monkeypatch.setattr(GPUCompressedLayerCache, "_policy_prefill_on_device", lambda self, *a: prefills.append(1) or orig(self, *a))
    kv = KVConfig.parse("4,policy=h2o,budget=16,residual=4,sinks=2")
    cpu, gpu = (Engine(fixtures["refact"], device=dev, n_ctx=64, n_batch=16, kv=kv) for dev in ("cpu", "gpu"))
    ca, cb = cpu.new_cache(), gpu.new_cache()
    assert rel_err(cpu.eval(ca, PROMPT, logits_all=True), gpu.eval(cb, PROMPT, logits_all=True)) < 2e-3
    for tok in (5, 9, 14, 3):
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < 2e-3, f"decode step {tok}"
    assert prefills and cb[0].n_tokens() == 16 and cb[0].d_alibi is not None


# ----------------------------------------------------------------- the CLI, the factory, sessions
def test_kvrun_run_takes_kv_bits(fixtures):
    args = ["run", str(fixtures["mpt"]), "-p", "the cat", "-n", "4", "--temp", "0", "--no-stats", "-c", "64", "--kv-bits", "4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "plain" not in r.output


def test_the_factory_makes_compressed_alibi_layers_and_refuses_the_wrong_form():
    """Either form takes a compressed cache (the position channel only on the CPU); the plain caches take their own
    device's form alone, refused in one line otherwise."""
    gpu_form = LayerSpec(H, N_KV, D, D, 0, SCALE, alibi_slopes=tuple(map(float, SLOPES)))
    for spec in (SPEC, gpu_form):
        (layer,) = make_cache([spec], 64, 16, KVConfig(bits=4))
        assert isinstance(layer, CompressedLayerCache) and layer.key_dim == D and layer.kv.group == D
    with pytest.raises(ValueError, match="^ALiBi's slopes .* have no plain CPU cache; load the model with --device cpu$"):
        make_cache([gpu_form], 64, 16)
    with pytest.raises(ValueError, match="^ALiBi's position channel .* has no GPU cache"):
        make_cache([SPEC], 64, 16, KVConfig(bits=4), device="gpu")


def test_a_saved_session_resumes_on_the_cpu(fixtures, tmp_path):
    """A compressed ALiBi cache with a policy, saved and read back by another engine, goes on as the one kept."""
    kv = KVConfig.parse("4,policy=h2o,budget=24,residual=4,sinks=2")
    eng = Engine(fixtures["bloom"], device="cpu", n_ctx=64, n_batch=16, kv=kv)
    a = eng.new_cache()
    eng.eval(a, PROMPT[:30])
    sessionfile.save(tmp_path / "s.kvs", eng, {"cache": a})
    other = Engine(fixtures["bloom"], device="cpu", n_ctx=64, n_batch=16, kv=kv)
    b = sessionfile.load(tmp_path / "s.kvs", other)["cache"]
    for tok in (5, 9, 14):
        np.testing.assert_array_equal(other.eval(b, [tok]), eng.eval(a, [tok]))
