"""Session files and prompt caches on ``--device gpu``: the same files as the CPU's, resumed on either device.

A file holds the CPU's cache classes whichever device saved it (cache/hostcopy.py: the GPU's fp16 ring is the same
bits, its compressed cache the CPU quantizer's pools and bookkeeping, its state-space layers the same fields), so:

* saved on the GPU and resumed there, a chat goes on as the run that never stopped, to the bit, and the resumed cache
  captures its own CUDA decode graph (the one captured for the cache it replaces holds that cache's pointers);
* saved on one device and resumed on the other (GPU -> CPU -> GPU), it goes on as the first device's uninterrupted
  run: the same greedy tokens, logits within tests/gpu_checks.py's 2e-3 (float32 weights: the backends' rounding of
  the activations alone), plain and compressed caches, an eviction policy's scores, and recurrent layers;
* a file never names a GPU class or CuPy, and one whose layers this device lays out otherwise (ALiBi: the CPU's keys
  carry a position channel, the GPU's kernels a slope) is refused in one line.

On the kernel emulator (``KVRUN_GPU_EMULATE=1``) without a GPU, as tests/test_gpu_engine.py.
"""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.loaders.errors import KvrunError
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.sessionfile import MAGIC, VERSION, load, prompt_cache, save

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

BOUND = 2e-3
PROMPT = [int(t) for t in np.random.default_rng(5).integers(3, 200, 20)]
#: a 4-bit cache whose fp16 window (8) spills into the quantized pools within the prompt; and one evicting (H2O)
KV4 = "4,residual=8"
KV4_H2O = "4,residual=8,policy=h2o,budget=24"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu-session")
    return {name: write_tiny_model(d / f"{name}.gguf", **FIXTURE_MODELS[name], qtype=Q.F32) for name in ("llama", "lfm2", "mamba2")}


def _engine(path, device: str, kv: str | None = None, n_ctx: int = 64) -> Engine:
    eng = Engine(path, device=device, n_ctx=n_ctx, n_batch=16, kv=KVConfig.parse(kv) if kv else None)
    assert eng.backend.name == device
    return eng


def _greedy(eng: Engine, cache, tok: int, n: int) -> tuple[list[int], np.ndarray]:
    """``n`` greedy decode steps from ``tok``: the tokens chosen and each step's logits."""
    toks, logits = [], []
    for _ in range(n):
        lg = np.asarray(eng.eval(cache, [tok])).reshape(-1)
        tok = int(np.argmax(lg))
        toks.append(tok)
        logits.append(lg.copy())
    return toks, np.array(logits)


def _start(eng: Engine) -> tuple[object, int]:
    """A cache after the prompt and two decode steps (the second replayed from a graph on the GPU); the next token."""
    cache = eng.new_cache()
    tok = int(np.argmax(np.asarray(eng.eval(cache, PROMPT)).reshape(-1)))
    toks, _ = _greedy(eng, cache, tok, 2)
    return cache, toks[-1]


def _state(cache, tok: int) -> dict:
    return {"kind": "chat", "cache": cache, "tokens": [*PROMPT, tok]}


@pytest.mark.parametrize("kv", [None, KV4])
def test_saved_and_resumed_on_the_gpu_it_goes_on_as_the_run_that_never_stopped(gpu_env, paths, tmp_path, kv):
    gpu = _engine(paths["llama"], "gpu", kv)
    cache, tok = _start(gpu)
    f = tmp_path / "chat.kvs"
    assert save(f, gpu, _state(cache, tok)) == f.stat().st_size > 0
    want_toks, want = _greedy(gpu, cache, tok, 5)  # the run that never stopped
    captured = gpu.graphs.n_captures
    state = load(f, gpu)
    assert state["cache"] is not cache and state["cache"].offset == len(PROMPT) + 2
    got_toks, got = _greedy(gpu, state["cache"], tok, 5)
    assert got_toks == want_toks and np.array_equal(got, want)
    if kv is None:  # the resumed cache's arrays are new: its own graph, never the old cache's replayed over them
        assert gpu.graphs.n_captures == captured + 1
    again = load(f, _engine(paths["llama"], "gpu", kv))["cache"]  # another engine: a new process's
    assert _greedy(gpu, again, tok, 5)[0] == want_toks


@pytest.mark.parametrize(("name", "kv"), [("llama", None), ("llama", KV4), ("llama", KV4_H2O), ("lfm2", None), ("mamba2", None)])
def test_a_session_goes_from_the_gpu_to_the_cpu_and_back_as_the_gpu_run_that_never_stopped(gpu_env, paths, tmp_path, name, kv):
    gpu, cpu = _engine(paths[name], "gpu", kv), _engine(paths[name], "cpu", kv)
    cache, tok = _start(gpu)
    save(tmp_path / "a.kvs", gpu, _state(cache, tok))
    want_toks, want = _greedy(gpu, cache, tok, 6)
    on_cpu = load(tmp_path / "a.kvs", cpu)["cache"]
    assert type(on_cpu.layers[0]).__module__.startswith("kvrun.cache.") and "gpu" not in type(on_cpu.layers[0]).__module__
    toks, lg = _greedy(cpu, on_cpu, tok, 3)
    assert toks == want_toks[:3] and rel_err(want[:3], lg) < BOUND
    save(tmp_path / "b.kvs", cpu, _state(on_cpu, toks[-1]))
    back = load(tmp_path / "b.kvs", gpu)["cache"]
    assert not [m for layer in back.layers if hasattr(layer, "mirror_mismatches") for m in layer.mirror_mismatches()]  # all sent
    toks, lg = _greedy(gpu, back, toks[-1], 3)
    assert toks == want_toks[3:] and rel_err(want[3:], lg) < BOUND
    if kv == KV4_H2O:  # each device evicted by the scores the other left
        assert max(layer.n_tokens() for layer in back.layers) < back.offset


def test_a_chat_saved_on_the_gpu_is_the_same_file_as_the_cpus_and_resumes_there(gpu_env, paths, tmp_path):
    """The Python API's Session (and so ``kvrun chat --session`` and the server's slot files): saved on the GPU, the
    file names the CPU's classes and nothing of the GPU, and the chat resumes on the CPU with the GPU's next reply."""
    gm = Model(_engine(paths["llama"], "gpu", KV4, n_ctx=256))  # (room for the chat template's turns)
    a = gm.session(system="be brief")
    a.send("the cat sat on the mat", max_tokens=6, temperature=0)
    f = tmp_path / "chat.kvs"
    a.save(f)
    data = zlib.decompress(f.read_bytes()[len(MAGIC) + 4 :])
    assert b"kvrun.cache.compressed" in data and b"kvrun.cache.gpu_" not in data and b"cupy" not in data
    b = Model(_engine(paths["llama"], "cpu", KV4, n_ctx=256)).load_session(f)
    assert b.tokens == a.tokens and b.messages == a.messages
    assert b.send("and then", max_tokens=6, temperature=0) == a.send("and then", max_tokens=6, temperature=0)


def test_a_prompt_cache_on_the_gpu_gives_the_logits_of_a_run_without_it(gpu_env, paths, tmp_path):
    gpu = _engine(paths["llama"], "gpu")
    ids = [*PROMPT, *PROMPT[:13]]  # 33 tokens: the first two batches of 16 saved
    f = tmp_path / "prompt.kvc"
    want = gpu.eval(gpu.new_cache(), ids)
    for reused in (0, 32):
        cache, rest, n = prompt_cache(f, gpu, ids)
        assert n == reused and rest == ids[32:]
        assert np.array_equal(gpu.eval(cache, rest), want)
    cache, rest, n = prompt_cache(f, _engine(paths["llama"], "cpu"), ids)  # the GPU's file, on the CPU
    assert n == 32 and rel_err(want, _engine(paths["llama"], "cpu").eval(cache, rest)) < BOUND


def test_a_file_whose_layers_the_other_device_lays_out_otherwise_is_refused_in_one_line(gpu_env, tmp_path):
    path = write_tiny_model(tmp_path / "bloom.gguf", **FIXTURE_MODELS["bloom"], qtype=Q.F32)
    gpu = _engine(path, "gpu")
    cache = gpu.new_cache()
    gpu.eval(cache, PROMPT[:6])
    save(tmp_path / "b.kvs", gpu, _state(cache, 0))
    with pytest.raises(KvrunError, match="saved on the gpu, whose cache lays out bloom's layers otherwise; resume it with --device gpu") as e:
        load(tmp_path / "b.kvs", _engine(path, "cpu"))
    assert "\n" not in str(e.value)


def test_a_file_naming_a_gpu_class_is_refused_before_anything_loads(paths, tmp_path):
    """Files hold the CPU's classes only: a GPU class's name (which would import CuPy's side of kvrun) is unsafe."""
    from kvrun.cache.gpu_plain import GPUPlainLayerCache

    evil = tmp_path / "gpu.kvs"
    evil.write_bytes(MAGIC + VERSION.to_bytes(4, "little") + zlib.compress(pickle.dumps({"cache": GPUPlainLayerCache})))
    with pytest.raises(KvrunError, match="names kvrun.cache.gpu_plain.GPUPlainLayerCache, which a session file may not"):
        load(evil, _engine(paths["llama"], "cpu"))
