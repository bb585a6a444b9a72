"""The whole GPU path through the engine and the CLI: `--device gpu` on the kernel
emulator (KVRUN_GPU_EMULATE=1: the CUDA sources compiled for the CPU), so it runs
in CI without a GPU; on a machine with one, the same checks run on the device."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cli import main
from gguf import GGMLQuantizationType as Q
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine, GenRequest, GenStats
from kvrun.runtime.sampling import SamplerConfig, greedy

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")


@pytest.fixture
def gpu_env(monkeypatch):
    if not gpu_available():
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("gpu") / "tiny.gguf", "llama", qtype=Q.Q4_0)


def test_engine_on_gpu_generates_the_cpu_greedy_text(gpu_env, tiny):
    prompt = [1, 5, 9, 14, 3, 7]
    req = GenRequest(max_tokens=12, sampler=greedy(), ignore_eos=True)
    runs = {}
    for dev in ("cpu", "gpu"):
        eng = Engine(tiny, device=dev, n_ctx=64, n_batch=16)
        assert eng.backend.name == dev
        runs[dev] = list(eng.generate_tokens(eng.new_cache(), prompt, req))
    assert runs["gpu"] == runs["cpu"]


#: post-norm models (each block's output normalised to full size before its residual add) show the two
#: backends' rounding of the activations in quantized products (the CPU's int8, as llama.cpp's; the GPU's
#: float32) at ~3% of the logits (OLMo 2's the same): their arithmetic is compared on float32 weights
GPU_QTYPE = {"exaone4": Q.F32, "exaone4-swa": Q.F32}


@pytest.mark.parametrize("arch", ["llama", "smollm3", "granite", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "exaone", "phi2", "stablelm", "stablelm-qk-norm",
                                  "ernie4_5", "exaone4", "exaone4-swa", "cohere2", "arcee"])
def test_gpu_logits_match_cpu(gpu_env, tmp_path, arch):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", **FIXTURE_MODELS[arch], qtype=GPU_QTYPE.get(arch, Q.Q4_0))  # (an arch's variants by fixture name)
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    cpu = Engine(path, device="cpu", n_ctx=64, n_batch=16)
    gpu = Engine(path, device="gpu", n_ctx=64, n_batch=16)
    a = cpu.eval(cpu.new_cache(), ids, logits_all=True)
    b = gpu.eval(gpu.new_cache(), ids, logits_all=True)
    assert isinstance(b, np.ndarray) and b.shape == a.shape
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2


@pytest.mark.parametrize(
    "arch,kv,graphs",
    [
        ("llama", None, "1"),
        ("llama", None, "0"),
        ("gemma3", None, "1"),
        ("llama", "2,residual=8", "1"),
        ("llama", "2,policy=h2o,budget=16,residual=4,merge=keepkv", "1"),
    ],
    ids=["llama", "llama-no-graphs", "gemma3", "llama-2bit", "llama-h2o-keepkv"],
)
def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path, arch, kv, graphs):
    """The activations live on the device: a decode step's one copy to the host is the logits the sampler needs
    (a host activation buffer would cost an upload and a synchronising copy down per kernel)."""
    if gpu_available():
        pytest.skip("checks the strict CuPy stand-in (devicexp.py); on a GPU the other tests run the device itself")
    from devicexp import COPIES, StrictRuntime

    from kvrun.cache.kvconfig import KVConfig
    from kvrun.ops.gpu import kernels as K

    monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    monkeypatch.setenv("KVRUN_CUDA_GRAPHS", graphs)
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype=Q.Q4_0)
    prev = K.set_runtime(StrictRuntime())
    try:
        eng = Engine(path, device="gpu", n_ctx=64, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
        cache = eng.new_cache()
        eng.eval(cache, list(range(3, 27)))  # past the budget: the policy evicts (and merges) in the steps below
        eng.eval(cache, [4])  # (the first step also captures its CUDA graph and checks a replay; a policy's too, its pools full)
        # the capture copied nothing (the stand-in refuses copies while capturing, as CUDA does)
        assert eng.graphs.n_captures == (1 if graphs == "1" else 0)
        for tok in (5, 9):
            COPIES.clear()
            logits = eng.eval(cache, [tok])
            assert COPIES == [("asnumpy", logits.shape)]
        # generating, the logits stay on the device: greedy brings down the sampled id, top-k its candidates
        for sampler, pulled in ((greedy(), ()), (SamplerConfig(top_k=8, seed=1), (16,))):
            cache = eng.new_cache()
            eng.eval(cache, list(range(3, 27)))
            eng.eval(cache, [4])  # the capture step, as above
            COPIES.clear()
            gen = eng.generate_tokens(cache, [30], GenRequest(max_tokens=4, sampler=sampler, ignore_eos=True))
            assert len(list(gen)) == 4
            assert COPIES == [("asnumpy", pulled)] * 4
    finally:
        K.set_runtime(prev)


def test_cli_run_on_gpu(gpu_env, tiny):
    args = ["run", str(tiny), "-p", "the", "-n", "6", "--temp", "0", "--no-stats", "-c", "64"]
    cpu = CliRunner().invoke(main, args + ["--device", "cpu"])
    gpu = CliRunner().invoke(main, args + ["--device", "gpu"])
    assert cpu.exit_code == 0 and gpu.exit_code == 0, gpu.output
    assert gpu.output == cpu.output


@pytest.mark.parametrize("graphs", ["1", "0"])
def test_bench_on_gpu_says_how_many_decode_steps_replayed_a_graph(gpu_env, tiny, monkeypatch, graphs):
    """A GPU tg figure comes with the share of its steps replayed from CUDA graphs (a short count is
    decode launching every kernel from Python: on an H200 a third of the replayed speed)."""
    monkeypatch.setenv("KVRUN_CUDA_GRAPHS", graphs)
    r = CliRunner().invoke(main, ["bench", str(tiny), "-p", "0", "-n", "8", "-r", "2", "--device", "gpu"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "replayed from CUDA graphs" in ln)
    n = int(line.split()[1])
    assert line == f"tg8: {n} of 16 decode steps replayed from CUDA graphs"
    # each repeat's new cache captures its first step and replays the other seven
    assert n == (14 if graphs == "1" else 0)
    cpu = CliRunner().invoke(main, ["bench", str(tiny), "-p", "0", "-n", "8", "-r", "1", "--device", "cpu"])
    assert cpu.exit_code == 0 and "CUDA graphs" not in cpu.output


def test_compressed_cache_on_gpu(gpu_env, tiny):
    """--kv-* on the GPU: the compressed cache with device decode (tests/test_gpu_qattention.py checks it)."""
    from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
    from kvrun.cache.kvconfig import KVConfig

    eng = Engine(tiny, device="gpu", n_ctx=64, kv=KVConfig(bits=2))
    assert all(isinstance(layer, GPUCompressedLayerCache) for layer in eng.new_cache().layers)


def test_gpu_without_cupy_or_device_is_one_line(monkeypatch, tiny):
    if gpu_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("KVRUN_GPU_EMULATE", raising=False)
    r = CliRunner().invoke(main, ["run", str(tiny), "-p", "the", "-n", "2", "--device", "gpu"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--device cpu" in r.output


def test_kv_eval_on_gpu_matches_cpu(gpu_env, tmp_path):
    """kvrun kv-eval --device gpu: the same table as the CPU (float32 weights, so the quantizer sees the same K/V).

    Both take their one-call decode step in steady state (the CPU's decode_push, the
    GPU's kvquant.cu twin of it): on a random model's near-uniform logits the
    rounding of the step-by-step path alone would move the perplexity ~0.5%."""
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.runtime.kveval import kv_eval

    path = write_tiny_model(tmp_path / "f32.gguf", "llama", qtype=Q.F32)
    tokens = np.random.default_rng(1).integers(0, 200, 64)
    configs = [KVConfig.parse(s) for s in ("16", "2,residual=8,group=16", "4,policy=h2o,budget=40,residual=8,group=16")]
    res = {dev: kv_eval(Engine(path, device=dev, n_ctx=48, n_batch=1), tokens, configs, 48) for dev in ("cpu", "gpu")}
    for a, b in zip(res["cpu"], res["gpu"]):
        assert a["config"] == b["config"] and a["kv_bytes"] == b["kv_bytes"]
        assert a["bits_per_value"] == b["bits_per_value"] > 2.0  # (the GPU's fp16 rows too: 16 + a position's 32 bits a slot)
        assert abs(a["ppl"] / b["ppl"] - 1) < 5e-3 and b["top1"] > 0.9


@pytest.fixture(params=["device", "strict"])
def graph_runtime(request, gpu_env):
    """The device (or the plain emulator), then the strict CuPy stand-in: host and device arrays apart, and no
    copy either way while capturing, as on CUDA."""
    if request.param == "device":
        yield "device"
        return
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import StrictRuntime

    from kvrun.ops.gpu import kernels as K

    prev = K.set_runtime(StrictRuntime())
    try:
        yield "strict"
    finally:
        K.set_runtime(prev)


def test_the_strict_stand_in_records_array_operations_while_capturing():
    """As a CUDA stream capture: nothing runs while capturing; each replay runs the recorded kernels and array
    operations in order, on the arrays' contents at that time, into the same memory; an operation whose
    shape needs the data, or a copy either way, is refused."""
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import StrictRuntime

    rt = StrictRuntime()
    xp = rt.xp
    a = xp.asarray(np.arange(4, dtype=np.float32))
    j = xp.asarray(np.array([1], np.int32))
    out = xp.zeros(4, np.float32)

    def step():
        b = a * 2  # new memory, computed again by each replay
        out[...] = b + 1
        out[j] = 0  # the index read at replay time

    graph = rt.capture(step)
    assert rt.asnumpy(out).tolist() == [0, 0, 0, 0]
    graph.launch()
    assert rt.asnumpy(out).tolist() == [1, 0, 5, 7]
    a[...] = xp.asarray(np.ones(4, np.float32))
    j[...] = xp.asarray(np.array([3], np.int32))
    graph.launch()
    assert rt.asnumpy(out).tolist() == [3, 3, 3, 0]
    for refused in (lambda: a[a > 1], lambda: xp.flatnonzero(a), lambda: int(a[0]), lambda: xp.asarray(np.ones(2))):
        with pytest.raises(RuntimeError):
            rt.capture(refused)


@pytest.mark.parametrize(
    ("arch", "kv", "n_ctx", "n_prompt", "n_captures"),
    [
        ("llama", None, 256, 120, 2),
        ("gemma3", None, 64, 20, 1),
        ("llama", "4,residual=8,group=16", 64, 20, 1),
        ("gemma3", "2,residual=8", 64, 20, 1),
        ("llama", "2,warm=8,residual=8,group=16", 64, 20, 1),
        ("llama", "4,policy=h2o,budget=16,residual=4,merge=keepkv", 64, 20, 1),
        ("gemma3", "2,policy=tova,budget=16,residual=4,merge=mean", 64, 20, 1),
        ("llama", "2,policy=gkv,budget=24,residual=4,mixed=4/2,group=16", 64, 28, 1),
        ("llama", "4,policy=keydiff,budget=16,residual=4", 64, 20, 1),
        ("llama", "4,policy=streaming,budget=16,residual=4", 64, 20, 1),
        ("llama", "4,policy=snapkv,budget=16,residual=4", 64, 20, 1),
        ("phi2", None, 64, 20, 1),  # LayerNorms, biases, the ungated GELU, the output bias: all in the capture
        ("stablelm", None, 64, 20, 1),
        ("exaone4", None, 64, 20, 1),  # post-norms, per-head QK-norm
        ("cohere2", None, 64, 20, 1),  # parallel blocks, window layers that rotate beside global ones that do not, the logit scale
        ("arcee", None, 64, 20, 1),  # the squared ReLU
    ],
    ids=["llama", "gemma3", "llama-4bit", "gemma3-2bit", "llama-2bit-warm", "h2o-keepkv", "gemma3-tova-mean", "gkv-mixed", "keydiff", "streaming", "snapkv",
         "phi2", "stablelm", "exaone4", "cohere2", "arcee"],
)  # fmt: skip
def test_decode_steps_replayed_from_cuda_graphs_equal_the_eager_steps(graph_runtime, monkeypatch, tmp_path, arch, kv, n_ctx, n_prompt, n_captures):
    """One-token decode steps replay a captured graph (runtime/graphs.py): the same logits bit for bit as
    launching every kernel.  The plain cache across the 128-slot splits of decode attention (llama: a
    capture for slots 0-127, another from 128 on) and around the ring of Gemma 3's sliding-window layers;
    the compressed cache with the slots planned on the host for each replay, tokens spilling from the fp16
    window into the pool and (warm) on from the warm pool to the cold one; with an eviction policy, once
    its pools are full, each step picking its victims, merging them, and moving and updating the policy's
    scores on the device from the window slot the host writes before each replay (SnapKV's pooled ranks
    by a kernel, not a sort).  Policies stay eager where the runtime cannot record array operations in a
    capture (the plain emulator, whose xp is numpy itself)."""
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.ops.gpu import kernels as K

    if not gpu_available() and graph_runtime == "device" and (kv or arch not in ("llama", "gemma3")):  # (CI time: on the plain
        # emulator these cases repeat the strict stand-in's, which records more (array operations: the policies' steps,
        # eager on the plain emulator) and refuses what CUDA refuses; the two base cases keep its own capture path tested)
        pytest.skip("the strict stand-in runs this case without a GPU")
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype=Q.Q4_0, sliding_window=8)
    # 12 steps: past llama's 128-slot split (slot 120 on), round Gemma 3's 8-slot ring, each a spill from the fp16
    # window or a policy's eviction from full pools; more steps only repeat the same replay (CI time)
    n_steps = 12
    ids = [int(t) for t in np.random.default_rng(3).integers(0, 200, n_prompt + n_steps)]
    runs, held, states = {}, {}, {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("KVRUN_CUDA_GRAPHS", graphs)
        eng = Engine(path, device="gpu", n_ctx=n_ctx, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
        cache = eng.new_cache()
        eng.eval(cache, ids[:n_prompt])
        runs[graphs] = np.concatenate([eng.eval(cache, [t]) for t in ids[n_prompt:]])
        held[graphs] = [layer.n_tokens() for layer in cache.layers]
        # and the same state: which positions each slot holds, the policy's scores
        states[graphs] = [np.array(layer.held_positions()) for layer in cache.layers if hasattr(layer, "held_positions")]
        states[graphs] += [K.runtime().asnumpy(a) for layer in cache.layers if getattr(layer, "policy", None) for a in layer.policy.per_slot()]
        if graphs == "1":
            if "policy" in (kv or "") and not eng.graphs.rt.records_xp:
                n_captures = 0
            assert eng.graphs.enabled and eng.graphs.n_captures == n_captures
            assert eng.graphs.n_replays == (n_steps - n_captures if n_captures else 0)
        else:
            assert not eng.graphs.enabled and eng.graphs.n_replays == 0
    np.testing.assert_array_equal(runs["1"], runs["0"])
    assert held["1"] == held["0"]
    assert len(states["1"]) == len(states["0"])
    for a, b in zip(states["1"], states["0"]):
        np.testing.assert_array_equal(a, b)


def test_a_failed_capture_leaves_decoding_eager(gpu_env, tiny, monkeypatch, capsys):
    from kvrun.ops.gpu import kernels as K

    eng = Engine(tiny, device="gpu", n_ctx=64, n_batch=16)
    want = [eng.eval(c := eng.new_cache(), [1, 5, 9])] + [eng.eval(c, [t]) for t in (3, 4, 6)]

    def refuse(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(K.runtime(), "capture", refuse, raising=False)
    eng = Engine(tiny, device="gpu", n_ctx=64, n_batch=16)
    got = [eng.eval(c := eng.new_cache(), [1, 5, 9])] + [eng.eval(c, [t]) for t in (3, 4, 6)]
    assert not eng.graphs.enabled
    assert capsys.readouterr().err.count("CUDA graphs off") == 1
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_chunk_that_calibrates_the_cache_stores_the_rest_on_the_device(gpu_env, tmp_path, monkeypatch):
    """The first spill of a prefill chunk calibrates a compressed layer on the host; the chunk's later tokens
    then go in on the device (kv_push_tokens), holding what the CPU holds."""
    from kvrun.cache.gpu_compressed import GPUCompressedLayerCache
    from kvrun.cache.kvconfig import KVConfig

    sizes = []
    orig = GPUCompressedLayerCache._push_on_device
    monkeypatch.setattr(GPUCompressedLayerCache, "_push_on_device", lambda self, k, v, pos, pd: (sizes.append(len(pos)), orig(self, k, v, pos, pd))[1])
    path = write_tiny_model(tmp_path / "f32.gguf", "llama", qtype=Q.F32)
    ids = list(np.random.default_rng(1).integers(0, 200, 40))
    runs, held = {}, {}
    for dev in ("cpu", "gpu"):
        eng = Engine(path, device=dev, n_ctx=64, n_batch=16, kv=KVConfig.parse("4,residual=8,group=16"))
        cache = eng.new_cache()
        runs[dev] = eng.eval(cache, ids, logits_all=True)
        held[dev] = [np.array(getattr(layer, "held_positions", lambda: layer.pos)()) for layer in cache.layers]
    assert sizes[:2] == [3, 3]  # both layers: the first chunk's last 3 tokens, after the spill at its 14th
    assert sizes[2:] == [16, 16, 8, 8]  # the later chunks whole
    for a, b in zip(held["cpu"], held["gpu"]):
        np.testing.assert_array_equal(a, b)
    assert np.abs(runs["gpu"] - runs["cpu"]).max() < 2e-3 * np.abs(runs["cpu"]).max()


# (every mixture of experts runs on the GPU now, Nemotron-H MoE's ungated experts too: tests/test_gpu_refusals2.py, which
# also holds a compressed cache's one-line refusal on the CLI)


def test_embeddings_on_the_gpu_equal_the_cpus(gpu_env, tiny):
    """Engine.embed on the device (the output head writes the final-normed states, no CUDA graph replay)."""
    ids = [1, 5, 9, 14, 3, 7, 22]
    a = Engine(tiny, device="cpu", n_ctx=64, n_batch=4).embed(ids)
    b = Engine(tiny, device="gpu", n_ctx=64, n_batch=4).embed(ids)
    assert isinstance(b, np.ndarray) and b.shape == a.shape
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2


def test_lookup_decoding_on_the_gpu_gives_the_cpus_text(gpu_env, tiny):
    """Drafts checked in one forward on the device, the rejected ones truncated from its cache, between
    one-token steps that replay a CUDA graph."""
    prompt = [10, 11, 12, 13] * 6
    runs = {}
    for dev in ("cpu", "gpu"):
        eng = Engine(tiny, device=dev, n_ctx=64, n_batch=16)
        stats = GenStats()
        runs[dev] = list(eng.generate_tokens(eng.new_cache(), prompt, GenRequest(max_tokens=16, sampler=greedy(), ignore_eos=True, lookup=4), stats))
        assert stats.n_accepted > 0
    assert runs["gpu"] == runs["cpu"]
