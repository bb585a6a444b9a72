"""The first run's helper process (runtime/prewarm.py): it must compile exactly the kernels the forward will load,
with the argument types the forward passes, or it only takes a core from the main process."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime import prewarm
from kvrun.runtime.engine import Engine


def _signatures() -> dict[str, int]:
    """How many signatures each of kvrun's kernels (module-level Numba dispatchers) has compiled or loaded."""
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("kvrun.") and mod is not None:
            for attr, obj in list(vars(mod).items()):
                if isinstance(obj, CPUDispatcher):
                    out[f"{name}.{attr}"] = len(obj.signatures)
    return out


def _decode_then_helper(path, kv: KVConfig | None) -> tuple[dict, int]:
    """Prompts of 2 and ``PROMPT`` tokens and one-token steps from position 0 through the engine, then the helper's
    work on a fresh cache (with a compressed one, a prompt's kernels too): the signatures each kernel gained in the
    helper's work (none where it compiled only what the forward loads), and the layers the helper stepped."""
    eng = Engine(path, n_ctx=256, kv=kv)
    for n in (2, prewarm.PROMPT):
        eng.eval(eng.new_cache(), [1 + t % 7 for t in range(n)])
    steps = prewarm.decode_steps(eng.kv, eng.n_ctx)
    cache = eng.new_cache()
    for t in range(steps):
        eng.eval(cache, [t % eng.cfg.n_vocab])
    before = _signatures()
    stepped = prewarm.attend_steps(eng.model, eng.new_cache(), steps, prompt=prewarm.PROMPT if kv is not None else 0)
    after = _signatures()
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}, stepped


@pytest.mark.parametrize("kv", [None, KVConfig(bits=2), KVConfig(bits=4, policy="h2o", budget=96)], ids=["fp16", "kv2", "kv4-h2o"])
def test_the_helper_compiles_nothing_the_forward_would_not_load(tiny_llama_path, kv):
    added, stepped = _decode_then_helper(tiny_llama_path, kv)
    assert stepped >= 1
    assert added == {}, f"the helper compiled signatures the forward never used: {added}"


@pytest.mark.real_model
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
@pytest.mark.parametrize("kv", [None, KVConfig(bits=2)], ids=["fp16", "kv2"])
def test_the_helper_compiles_nothing_a_real_models_forward_would_not_load(request, model, kv):
    # (Gemma 3: sliding-window and global layers, two kinds of layer cache, both stepped)
    added, stepped = _decode_then_helper(request.getfixturevalue(model), kv)
    assert stepped >= (2 if model == "gemma3_path" else 1)
    assert added == {}, f"the helper compiled signatures the forward never used: {added}"


def _engine_like(**kw) -> SimpleNamespace:
    base = dict(backend=SimpleNamespace(name="cpu"), kernels_cold=True, threads=None, model=SimpleNamespace(encoder=False))
    return SimpleNamespace(**(base | kw))


def test_a_helper_is_wanted_only_on_a_cold_cpu_cache_with_cores_to_spare(monkeypatch):
    monkeypatch.delenv("KVRUN_PREWARM", raising=False)
    monkeypatch.setattr(prewarm.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert prewarm.wanted(_engine_like())
    assert not prewarm.wanted(_engine_like(kernels_cold=False))  # a warm cache loads in well under a second
    assert not prewarm.wanted(_engine_like(backend=SimpleNamespace(name="gpu")))
    assert not prewarm.wanted(_engine_like(threads=1))  # --threads 1: one core is what the user gave us
    assert not prewarm.wanted(_engine_like(model=SimpleNamespace(encoder=True)))  # (an embedding model decodes nothing)
    monkeypatch.setattr(prewarm.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert not prewarm.wanted(_engine_like())  # one core: two compilers would only take turns
    monkeypatch.setattr(prewarm.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(prewarm.sys, "frozen", True, raising=False)
    assert not prewarm.wanted(_engine_like())  # a frozen app's executable would start the app again
    monkeypatch.delattr(prewarm.sys, "frozen")
    monkeypatch.setenv("KVRUN_PREWARM", "0")
    assert not prewarm.wanted(_engine_like())


def test_the_helper_process_runs_the_engines_job_to_the_end(tiny_llama_path, monkeypatch):
    monkeypatch.delenv("KVRUN_PREWARM", raising=False)
    monkeypatch.setattr(prewarm.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    eng = Engine(tiny_llama_path, n_ctx=256, kv=KVConfig(bits=2))  # (the kernels the kv2 case above loaded)
    eng.kernels_cold = True  # (as a first run: this suite's kernels are cached by now)
    proc = prewarm.start(eng)
    assert proc is not None
    assert proc.wait(300) == 0
    prewarm.stop(proc)  # (ended already: nothing to do)


def test_a_helper_still_compiling_when_the_run_ends_is_stopped():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    prewarm.stop(proc)
    assert proc.returncode is not None


def test_the_helpers_random_steps_leave_the_engines_own_caches_alone(tiny_llama_path):
    eng = Engine(tiny_llama_path, n_ctx=64)
    cache = eng.new_cache()
    logits = eng.eval(cache, [1, 2, 3]).copy()
    prewarm.attend_steps(eng.model, eng.new_cache(), 4)
    again = eng.new_cache()
    np.testing.assert_array_equal(eng.eval(again, [1, 2, 3]), logits)


def test_the_cli_and_the_python_api_start_the_helper_for_the_engine_they_load(tiny_llama_path, monkeypatch):
    from click.testing import CliRunner

    import kvrun
    from kvrun.cli import main

    seen = []
    monkeypatch.setattr(prewarm, "start", lambda eng: seen.append(eng.path))
    kvrun.load(tiny_llama_path, n_ctx=64)
    assert seen == [str(tiny_llama_path)]
    from kvrun.ops.cpu.backend import CPUBackend

    monkeypatch.setattr(CPUBackend, "kernels_cached", lambda self: False)  # (the CLI asks only on a cold cache)
    r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", "-n", "1", "--no-stats"])
    assert r.exit_code == 0 and seen == [str(tiny_llama_path)] * 2
    # perplexity's forwards are prompts only: no helper, no priming (it would compile decode kernels on this core)
    text = tiny_llama_path.parent / "text.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log " * 8)
    r = CliRunner().invoke(main, ["perplexity", str(tiny_llama_path), "-f", str(text), "--ctx", "32", "--chunks", "1"])
    assert r.exit_code == 0 and seen == [str(tiny_llama_path)] * 2, r.output


def test_decode_kernels_compile_once_for_both_passes_and_every_caller(tiny_llama_path):
    """A constant argument (``DOT``/``ADD``, a position of another integer width, a read-only row) made Numba compile
    a kernel once more for each: 2-5 s of a first run apiece.  After fp16 and 2-bit decode steps none is left."""
    from numba import types

    from kvrun.cache import insert, quant
    from kvrun.ops.cpu import qattention as qa

    for kv in (None, KVConfig(bits=2)):
        eng = Engine(tiny_llama_path, n_ctx=256, kv=kv)
        cache = eng.new_cache()
        eng.eval(cache, list(range(1, 20)))  # a prefill (push_tokens), then decode steps (decode_step)
        for t in range(prewarm.decode_steps(kv, 256)):
            eng.eval(cache, [1 + t % 7])
    for k in (qa._pass, qa._pass16, qa._half_pass):
        assert all(sig[0] == types.int64 for sig in _compiled(k)), _compiled(k)  # the pass, not Literal[int](1)
    assert all(sig[-1] == types.int64 for sig in _compiled(qa._half_pass))  # row0, not Literal[int](0)
    assert all(sig[1] == types.int64 for sig in _compiled(insert.plan_push))
    assert all(sig[0].mutable for sig in _compiled(quant.quantize_row))


def _compiled(kernel) -> list:
    """Every signature of ``kernel`` this process compiled and its on-disk cache holds (a kernel loaded within its caller,
    as a warm cache does, lists none in the process), never none: the steps above ran it."""
    sigs = list(kernel.signatures) + [key[0] for key in kernel._cache._cache_file._load_index()]
    assert sigs, f"{kernel.py_func.__name__} never ran"
    return sigs


PRODUCTS = [("qmatmul", "_mv_1"), ("qmatmul", "_mv_n"), ("fused", "_fused_1"), ("fused", "_fused_n")]


def _recording_products(monkeypatch) -> list[tuple[str, tuple]]:
    """Each call of the weight products' one- and many-thread kernels from now on, as (kernel, argument types)."""
    import importlib

    calls: list = []
    for mod, name in PRODUCTS:
        _record(monkeypatch, importlib.import_module(f"kvrun.ops.cpu.{mod}"), name, calls)
    return calls


def _record(monkeypatch, module, name: str, calls: list) -> None:
    """Calls of kernel ``module.name`` (a Numba dispatcher called from Python) from now on appended to ``calls`` as
    (name, argument types)."""
    import numba

    kernel = getattr(module, name)

    def record(*args):
        calls.append((name, tuple(numba.typeof(a) for a in args)))
        return kernel(*args)

    monkeypatch.setattr(module, name, record)


def _primed_and_met(eng, monkeypatch) -> tuple[set, list]:
    """The product-kernel calls (kernel, argument types) of :func:`prewarm.products_first` on ``eng``, and those of ten
    decode steps after it (the tuner, on both counts, first tries the other at its fifth)."""
    from kvrun.runtime.threads import ThreadTuner

    eng.tuner = ThreadTuner(2)
    calls = _recording_products(monkeypatch)
    prewarm.products_first(eng)
    primed = set(calls)
    calls.clear()
    cache = eng.new_cache()
    for t in range(10):
        eng.eval(cache, [1 + t % 7])
    assert set(eng.tuner.time) == {1, 2}  # (the steps ran on both counts)
    return primed, calls


TWO_THREADS = pytest.mark.skipif(__import__("numba").config.NUMBA_NUM_THREADS < 2, reason="one thread: no second count to try")


@TWO_THREADS
def test_the_priming_forward_runs_every_product_kernel_the_first_decode_steps_meet(tmp_path, monkeypatch):
    """On a cold first run the main process runs one throwaway forward (attention left out) on one thread and on the
    tuner's other count before its first real one (:func:`prewarm.products_first`), so that the products' kernels
    for both counts compile while the helper compiles the attention, not after it (the tuner first tries the
    other count at its fifth step).  The real steps, through that probe, may meet no product kernel or argument
    type the priming forward did not run."""
    from gguf import GGMLQuantizationType as Q
    from tinymodel import write_tiny_model

    from kvrun.ops.cpu import qmatmul

    monkeypatch.setattr(qmatmul, "PAR_MIN_BYTES", 0)  # (the tiny model's matrices take the many-thread kernels too)
    primed, met = _primed_and_met(Engine(write_tiny_model(tmp_path / "q8.gguf", "llama", qtype=Q.Q8_0), n_ctx=64), monkeypatch)
    assert {name for name, _ in met} == {name for _, name in PRODUCTS}  # (the steps met all four kernels)
    assert set(met) <= primed, set(met) - primed
    from numba import types

    for k in (qmatmul._rows_q, qmatmul._rows_f):  # one row range type for both counts: int64, not Literal[int](0)
        assert all(sig[2] == types.int64 for sig in _compiled(k)), _compiled(k)


@TWO_THREADS
@pytest.mark.real_model
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_the_priming_forward_runs_every_product_kernel_a_real_models_decode_steps_meet(request, model, monkeypatch):
    primed, met = _primed_and_met(Engine(request.getfixturevalue(model), n_ctx=64), monkeypatch)
    assert {"_mv_1", "_mv_n"} <= {name for name, _ in met}
    assert set(met) <= primed, set(met) - primed


@pytest.mark.parametrize("model", ["tiny_llama_path", pytest.param("smollm2_path", marks=pytest.mark.real_model),
                                   pytest.param("gemma3_path", marks=pytest.mark.real_model)])  # fmt: skip
def test_the_main_process_primes_a_compressed_caches_one_call_step_with_the_types_the_forward_passes(request, model, monkeypatch):
    """With a compressed cache :func:`prewarm.prime` also steps a throwaway layer cache into its one-call decode
    steps (their lone attention left out, which the helper compiles), so this process compiles the step's store
    half meanwhile: with the argument types the engine's own steps pass it afterwards."""
    from kvrun.cache import compressed

    calls: list = []
    _record(monkeypatch, compressed, "decode_step", calls)
    eng = Engine(request.getfixturevalue(model), n_ctx=256, kv=KVConfig(bits=2))
    prewarm.prime(eng)
    primed = set(calls)
    calls.clear()
    cache = eng.new_cache()
    for t in range(prewarm.decode_steps(eng.kv, eng.n_ctx)):
        eng.eval(cache, [1 + t % 7])
    assert primed and calls and set(calls) <= primed, set(calls) - primed


def test_the_helper_start_primes_the_engines_first_forward_once_and_leaves_its_text_alone(tiny_llama_path, monkeypatch):
    monkeypatch.delenv("KVRUN_PREWARM", raising=False)
    monkeypatch.setattr(prewarm.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(prewarm, "helper_command", lambda: [sys.executable, "-c", "pass"])
    runs = []
    prime = prewarm.prime
    monkeypatch.setattr(prewarm, "prime", lambda eng: (runs.append(eng), prime(eng)))
    plain = Engine(tiny_llama_path, n_ctx=64)
    want = plain.eval(plain.new_cache(), [1, 2, 3]).copy()
    eng = Engine(tiny_llama_path, n_ctx=64)
    eng.kernels_cold = True  # (as a first run)
    assert prewarm.start(eng) is not None and eng.before_first_forward is not None
    cache = eng.new_cache()
    np.testing.assert_array_equal(eng.eval(cache, [1, 2, 3]), want)  # (the throwaway forward touched no cache of the engine's)
    eng.eval(cache, [4])
    assert runs == [eng] and eng.before_first_forward is None


def test_an_embedding_leaves_the_first_forward_hook_for_the_first_forward_that_makes_logits(tiny_llama_path):
    """An app that embeds with a decoder model (kvrun.load, then Model.embed) compiles no decode kernels on its own
    core for a generation that may never come: the hook waits, and runs before the first forward with logits."""
    eng = Engine(tiny_llama_path, n_ctx=64)
    runs = []
    eng.before_first_forward = lambda: runs.append(1)
    eng.embed([1, 2, 3])
    assert runs == [] and eng.before_first_forward is not None
    eng.eval(eng.new_cache(), [1, 2])
    assert runs == [1] and eng.before_first_forward is None


def test_the_helpers_prompt_kernels_reach_a_compressed_layers_first_spill_and_leave_it_empty(tiny_llama_path, monkeypatch):
    """With a compressed cache the helper also runs a prompt's kernels and steps a layer to its first spill (the key
    basis's calibration) by the steps' Python path, the one-call steps being the main process's compile then."""
    from kvrun.cache.compressed import CompressedLayerCache

    eng = Engine(tiny_llama_path, n_ctx=256, kv=KVConfig(bits=2))
    layer = eng.new_cache().layers[0]
    spills = []
    spill = CompressedLayerCache._spill
    monkeypatch.setattr(CompressedLayerCache, "_spill", lambda self, j: (spills.append(self.basis.calibrated), spill(self, j)))
    prewarm.prompt_kernels(eng.model, [layer], prewarm.PROMPT, np.random.default_rng(0))
    assert spills[:1] == [False]  # (the first spill, which calibrates)
    assert layer.n_tokens() == 0 and layer.FAST_DECODE


def test_a_compressed_layers_steps_apart_leave_out_its_lone_attention_or_its_one_call_step_nest_and_empty_it(
        tiny_llama_path, monkeypatch):  # fmt: skip
    """The compile paths prewarm drives a throwaway compressed layer through (cache/compressed.py): a sink's step
    stores without its attention's call alone, steps go through Python instead of the one-call kernel, an inner
    setting restores the outer one, and the layer is empty and whole again after."""
    from kvrun.cache.compressed import CompressedLayerCache

    eng = Engine(tiny_llama_path, n_ctx=256, kv=KVConfig(bits=2))
    layer = eng.new_cache().layers[0]
    assert isinstance(layer, CompressedLayerCache) and 0 < layer.n_sinks < layer.first_spill
    calls: list = []
    attend, fast = CompressedLayerCache._attend_decode, CompressedLayerCache._decode_fast
    monkeypatch.setattr(CompressedLayerCache, "_attend_decode", lambda self, *a, **kw: (calls.append("alone"), attend(self, *a, **kw)))
    monkeypatch.setattr(CompressedLayerCache, "_decode_fast", lambda self, *a: (calls.append("one call"), fast(self, *a)))
    *_, q, k, v, att = eng.model.step_buffers(1)
    rng = np.random.default_rng(0)

    def steps(first: int, last: int) -> list:
        calls.clear()
        for p in range(first, last):
            prewarm._fill(rng, q, k, v)
            layer.update_and_attend(q, k, v, np.array([p], np.int32), att)
        return sorted(set(calls))

    layer.attend_alone(q, att)
    assert calls == ["alone"]
    assert steps(0, 1) == ["alone"]  # (a sink: stored, then attended alone)
    layer.reset()
    with layer.steps_apart(attention=False):
        assert steps(0, 1) == []
        with layer.steps_apart(one_call=False):
            assert steps(1, layer.first_spill + 1) == []  # (the Python path, its attention left out)
        assert layer.n_tokens() == 0  # (emptied)
        assert steps(0, layer.n_sinks + 2) == ["one call"]  # (the outer setting again: past the sinks, one call)
    assert layer.n_tokens() == 0
    assert steps(0, layer.n_sinks + 2) == ["alone", "one call"]


def test_the_sampler_kernel_a_first_run_compiles_is_the_one_a_sampled_token_runs(tiny_llama_path):
    """prewarm.sampler_kernels calls top-k with the argument types the engine's sampling passes: a sampled reply then
    compiles no other signature of it."""
    from kvrun.ops.cpu import topk
    from kvrun.runtime.api import Model

    prewarm.sampler_kernels()
    compiled = set(topk._top_k.signatures)
    model = Model(Engine(tiny_llama_path, n_ctx=64))
    model.complete("hello", max_tokens=3, temperature=0.8, top_k=2, seed=1)
    assert compiled and set(topk._top_k.signatures) == compiled
