"""Several sequences in one forward on the GPU (``kvrun serve --parallel N``, ``kvrun bench -np``): the weight
products take every sequence's rows at once, each sequence stores its K/V in and attends over its own cache, and
each gets the logits it gets fed alone; a batch of decode steps replays a CUDA graph of its own.  On the kernel
emulator (KVRUN_GPU_EMULATE=1), as tests/test_gpu_engine.py; on a machine with a GPU the same checks run there."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from click.testing import CliRunner
from gpu_checks import strict_stand_in
from tinymodel import write_tiny_model

from kvrun.cache.gpu_plain import GPUPlainLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime import batcher
from kvrun.runtime.batcher import Batcher
from kvrun.runtime.engine import Engine, GenRequest
from kvrun.runtime.sampling import greedy

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

PROMPTS = [[1, 5, 9, 13, 2, 7, 40, 41, 3], [1, 30, 31], [1, 8, 8, 8, 8, 60, 61, 62, 63, 64, 65, 66, 67, 12, 11]]
STEPS = [[4, 50, 3, 9], [6, 7, 8, 9], [90, 91, 92]]  # tokens fed one a step after each prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("gpu-batch") / "tiny.gguf", "llama")


def _alone(eng: Engine) -> list[list[np.ndarray]]:
    """Each prompt, then its steps, fed on a cache of its own: the logits of the prompt's last token and of every step."""
    out = []
    for p, steps in zip(PROMPTS, STEPS):
        c = eng.new_cache()
        out.append([eng.eval(c, p)[-1]] + [eng.eval(c, [t])[-1] for t in steps])
    return out


def _together(eng: Engine) -> list[list[np.ndarray]]:
    """The same fed in batches as a server's slots would be: the first two prompts together, then their first steps
    beside the third prompt (a prompt chunk among decode steps), then three batches of decode steps only, the threads
    of a server's slots queuing them in any order."""
    caches = [eng.new_cache() for _ in PROMPTS]
    got: list[list[np.ndarray]] = [[] for _ in PROMPTS]

    def batch(which: list[int], chunks: list[list[int]]) -> None:
        outs = [np.empty((1, eng.cfg.n_vocab), np.float32) for _ in which]
        eng.forward_batch([caches[i] for i in which], [np.array(c) for c in chunks], [len(c) - 1 for c in chunks], outs)
        for i, o in zip(which, outs):
            got[i].append(o[0].copy())

    batch([0, 1], PROMPTS[:2])
    batch([0, 1, 2], [STEPS[0][:1], STEPS[1][:1], PROMPTS[2]])
    for i in range(3):  # (the second in another order: the batch's graph is the same)
        steps = {0: STEPS[0][i + 1 : i + 2], 1: STEPS[1][i + 1 : i + 2], 2: STEPS[2][i : i + 1]}
        which = [2, 0, 1] if i == 1 else [0, 1, 2]
        batch(which, [steps[j] for j in which])
    assert [c.offset for c in caches] == [len(p) + len(s) for p, s in zip(PROMPTS, STEPS)]
    return got


@pytest.mark.parametrize("arch,kv", [("llama", None), ("gemma3", None), ("llama", "4")], ids=["llama", "gemma3-window", "llama-kv4"])
def test_a_batch_of_sequences_gets_the_logits_each_gets_alone(gpu_env, tmp_path, arch, kv):
    path = write_tiny_model(tmp_path / "m.gguf", arch)
    eng = Engine(path, device="gpu", n_ctx=64, n_batch=32, kv=KVConfig.parse(kv) if kv else None)
    assert eng.can_batch
    want = _alone(eng)
    replays = eng.batch_graphs.n_replays if eng.batch_graphs is not None else 0
    for a, b in zip(want, _together(eng)):
        for x, y in zip(a, b):  # (the products take 1 and 3 rows: rounding apart)
            assert np.abs(x - y).max() <= 2e-3 * np.abs(x).max()
            assert x.argmax() == y.argmax()
    if eng.batch_graphs is not None and eng.batch_graphs.one.enabled and kv is None:  # (the fp16 rings' batches only)
        # the first batch of decode steps only was captured, the other two replayed it
        assert (eng.batch_graphs.n_captures, eng.batch_graphs.n_replays - replays) == (1, 2)


def test_a_replayed_batch_of_decode_steps_copies_down_only_the_logits_asked_for_on_the_host(monkeypatch, tiny):
    """On the strict CuPy stand-in (devicexp.py, which refuses any copy while a graph is captured, as CUDA does): a batch
    of decode steps is captured without one, and a replay copies nothing down, or the batch's logits once for host outputs."""
    with strict_stand_in(monkeypatch) as COPIES:
        eng = Engine(tiny, device="gpu", n_ctx=64, n_batch=16)
        n_vocab = eng.cfg.n_vocab
        caches = [eng.new_cache(), eng.new_cache()]
        host = [np.empty((1, n_vocab), np.float32) for _ in caches]
        eng.forward_batch(caches, [np.array(PROMPTS[0]), np.array(PROMPTS[1])], [len(PROMPTS[0]) - 1, len(PROMPTS[1]) - 1], host)
        device = [eng.backend.zeros((1, n_vocab), np.float32) for _ in caches]
        eng.forward_batch(caches, [np.array([4]), np.array([6])], [0, 0], device)  # (captured, and checked against the eager step)
        assert eng.batch_graphs.n_captures == 1
        COPIES.clear()
        eng.forward_batch(caches, [np.array([50]), np.array([7])], [0, 0], device)
        assert COPIES == []
        eng.forward_batch(caches, [np.array([3]), np.array([8])], [0, 0], host)
        assert COPIES == [("asnumpy", (2, n_vocab))]
        assert eng.batch_graphs.n_replays == 2


def test_a_failed_batch_leaves_every_cache_as_it_was(gpu_env, tiny, monkeypatch):
    eng = Engine(tiny, device="gpu", n_ctx=32, n_batch=16)
    caches = [eng.new_cache(), eng.new_cache()]
    eng.eval(caches[0], [1, 2, 3])
    outs = [np.empty((1, eng.cfg.n_vocab), np.float32)] * 2
    with pytest.raises(KvrunError, match="outside the vocabulary"):  # (checked before any kernel runs)
        eng.forward_batch(caches, [np.array([4]), np.array([eng.cfg.n_vocab])], [0, 0], outs)
    # a forward that fails half-way, after its first layer stored both sequences' K/V
    real, calls = GPUPlainLayerCache.batch_update_and_attend, []

    def breaks(layers, *args):
        if calls:
            raise RuntimeError("the device broke")
        calls.append(1)
        return real(layers, *args)

    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="the device broke"):
        m.setattr(GPUPlainLayerCache, "batch_update_and_attend", staticmethod(breaks))
        eng.forward_batch(caches, [np.array([4]), np.array([7, 8])], [0, 1], outs)
    assert [c.offset for c in caches] == [3, 0]
    assert [[layer.n_tokens() for layer in c.layers] for c in caches] == [[3] * len(caches[0].layers), [0] * len(caches[1].layers)]
    ref = Engine(tiny, device="gpu", n_ctx=32, n_batch=16)
    c = ref.new_cache()
    ref.eval(c, [1, 2, 3])
    np.testing.assert_allclose(eng.eval(caches[0], [4]), ref.eval(c, [4]), rtol=0, atol=1e-5)


def test_threads_generating_at_once_on_the_gpu_are_fed_together_and_write_what_each_writes_alone(gpu_env, tiny, monkeypatch):
    """The GPU's leading thread runs batched steps (runtime/batcher.py): far fewer forwards than one per token."""
    monkeypatch.setattr(batcher, "GATHER_S", 0.5)  # (a loaded test machine samples slower than the default moment)
    eng = Engine(tiny, device="gpu", n_ctx=64, n_batch=16)
    req = GenRequest(max_tokens=8, sampler=greedy(), ignore_eos=True)
    alone = [list(eng.generate_tokens(eng.new_cache(), p, req)) for p in PROMPTS]
    eng.batcher = b = Batcher(eng)  # (counters from zero)
    assert b.batched
    out: list[list[int]] = [[] for _ in PROMPTS]
    ready = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        cache = eng.new_cache()
        with eng.batcher.sequence(cache):  # (every thread a generating sequence before any starts)
            ready.wait()
            out[i] = list(eng.generate_tokens(cache, PROMPTS[i], req))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out == alone
    n_steps = 3 * 8  # each generated token fed back (the last one too: generate_tokens feeds before it stops)
    assert b.n_rows == sum(map(len, PROMPTS)) + n_steps
    assert b.n_forwards <= 0.6 * n_steps


def test_bench_parallel_on_gpu_prints_the_batched_row(gpu_env, tiny):
    r = CliRunner().invoke(main, ["bench", str(tiny), "-p", "0", "-n", "4", "-r", "1", "-np", "1,2", "--device", "gpu"])
    assert r.exit_code == 0, r.output
    assert any(ln.split("|")[-3].strip() == "tg4 x2" for ln in r.output.splitlines() if ln.count("|") > 6)
    # the batch's first step captured its graph, the other three replayed it, for both sequences
    assert "tg4 x2: 6 of 8 decode steps replayed from CUDA graphs" in r.output
