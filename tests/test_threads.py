"""Without --threads, decode uses whichever thread count the machine runs faster now."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kvrun.runtime.threads import ThreadTuner

N = numba.config.NUMBA_NUM_THREADS
pytestmark = pytest.mark.skipif(N < 2, reason="needs two or more cores")


def _run(tuner: ThreadTuner, seconds: dict[int, float], steps: int) -> list[int]:
    """Drive ``steps`` decode steps where a step on n threads takes ``seconds[n]``; the counts used."""
    used = []
    for _ in range(steps):
        n = tuner.begin()
        assert numba.get_num_threads() == n
        used.append(n)
        tuner.end(seconds[n])
    return used


@pytest.fixture(autouse=True)
def _restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_a_quiet_machine_keeps_every_core():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    used = _run(t, {N: 0.005, 1: 0.008}, 64)
    assert t.best == N
    assert used.count(1) == 4 * 4  # one 4-step probe every 16 steps, nothing more


def test_a_busy_core_moves_decode_to_one_thread():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    used = _run(t, {N: 0.020, 1: 0.008}, 64)
    assert t.best == 1
    assert used[8:].count(1) >= len(used[8:]) - 4 * 4  # after the first probe, one thread but for probes


def test_it_follows_the_load_when_it_goes_away():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    _run(t, {N: 0.020, 1: 0.008}, 32)
    assert t.best == 1
    _run(t, {N: 0.005, 1: 0.008}, 32)
    assert t.best == N
    assert numba.get_num_threads() == N  # between steps: the chosen count, for a prefill that follows


def test_the_first_step_is_not_a_speed_sample():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    t.begin()
    t.end(30.0)  # kernels compiled or loaded
    assert t.time == {}


@pytest.mark.real_model
@pytest.mark.parametrize("kv_bits", [16, 4], ids=["fp16 cache", "4-bit cache"])
def test_a_token_does_not_depend_on_numbas_thread_count(gemma3_path, kv_bits):
    """The same tokens give bit-identical logits on one Numba thread and on two, the switch the
    thread tuner makes between decode steps: each weight row is the same arithmetic on any thread,
    and decode attention's split-K is planned for the pool's size (Gemma 3: one KV head, split
    from 256 slots on).  (Prefill's GEMMs from 8 tokens run in BLAS's own pool, held at one size here.)"""
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.runtime.engine import Engine

    eng = Engine(gemma3_path, n_ctx=512, n_batch=128, threads=2, kv=None if kv_bits == 16 else KVConfig(bits=kv_bits))
    ids = list(np.random.default_rng(0).integers(100, 20000, 300))  # a prompt long enough for the split
    logits = {}
    for t in (1, 2):
        eng.threads = t  # (--threads: the engine sets the evaluating thread's Numba count from it)
        cache = eng.new_cache()
        rows = [eng.eval(cache, ids[:6]), eng.eval(cache, ids[6:])]  # integer kernels, then tiles + BLAS
        for tok in (236761, 1437, 603, 2542):
            rows.append(eng.eval(cache, [tok]))
        logits[t] = np.concatenate(rows)
    np.testing.assert_array_equal(logits[1], logits[2])


@pytest.mark.parametrize("user,want", [(None, "5000"), ("123", "123")])
def test_importing_kvrun_shortens_openmp_spinning_unless_the_user_set_it(user, want):
    """libgomp's workers spin 300,000 rounds after each parallel kernel; kvrun asks for 5000 (prefill's
    attention threads run between those kernels) before Numba loads it, and leaves a user's value."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if user is not None:
        env["GOMP_SPINCOUNT"] = user
    code = "import os, kvrun; print(os.environ['GOMP_SPINCOUNT'])"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == want


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 cores to tell the counts apart")
def test_threads_hold_in_every_thread_that_evaluates(tmp_path):
    """--threads 1 holds in a thread other than the one that built the engine (a server's request
    handler, chat's warm-up): Numba's count is per thread, so the engine sets it where the forward runs
    (the process's model thread: runtime/batcher.py), for a prefill and a decode step alike."""
    import threading

    from kvrun.runtime.engine import Engine
    from tinymodel import write_tiny_model

    eng = Engine(write_tiny_model(tmp_path / "tiny.gguf", "llama"), n_ctx=64, threads=1)
    seen = []
    forward = eng.model.forward

    def counted(*args) -> None:
        seen.append((threading.current_thread().name, numba.get_num_threads()))
        forward(*args)

    eng.model.forward = counted

    def run() -> None:
        cache = eng.new_cache()
        eng.eval(cache, [1, 2, 3])
        eng.eval(cache, [4])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert [n for _, n in seen] == [1, 1] and all(name != t.name for name, _ in seen)


def test_the_tuners_switch_leaves_blas_and_a_prompts_logits_alone(tmp_path):
    """A busy machine moves decode to one thread (the tuner's choice), and a prompt evaluated after gives the logits it
    gave before: BLAS's pool keeps its size, for OpenBLAS rounds a product otherwise on another thread count (tiny
    Gemma 3n's float32 per-layer projection, 16 x 64 by 6400 rows, moved its logits by 1e-3 when it followed)."""
    from tinymodel import FIXTURE_MODELS, write_tiny_model

    from kvrun.ops.cpu.blas import blas_threads
    from kvrun.runtime.engine import Engine

    eng = Engine(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["gemma3n"]), n_ctx=64, n_batch=16)  # (no --threads)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 60, 37)]
    before, blas = eng.eval(eng.new_cache(), prompt), blas_threads()
    _run(eng.tuner, {N: 1.0, 1: 0.1}, 12)
    assert eng.tuner.best == 1 and blas_threads() == blas
    np.testing.assert_array_equal(eng.eval(eng.new_cache(), prompt), before)
