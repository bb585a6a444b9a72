"""A cold first run's second compiler: a helper process that compiles the decode step's attention kernels while
the main process compiles the rest.

On an empty kernel cache the first forward compiles every kernel it meets, in its order, on one core (Numba's
compiler is one thread under a lock per process).  The decode step's attention costs the most: on a 2-core Zen 3,
27 of SmolLM2's ~50 s with the fp16 cache, 48 of ~106 s with ``--kv-bits 2``.  The helper starts with it: it
steps each kind of layer cache through one-token decode steps from position 0 on, fed the model's own step buffers
(so the kernels see the types the forward passes them).  Both processes share Numba's on-disk cache, and
jitstamp's compile lock makes whichever process reaches a kernel second wait for the other's compile and load it
(ops/cpu/jitstamp.py), so no kernel compiles twice and the first run takes about the longer of the two shares.

The shares, so that neither process waits long on the other (``python tools/compileprof.py --cli`` traces both):

- the helper: the attention (:func:`attend_steps`; a compressed cache's lone attention first); with a compressed
  cache the sampler's top-k before it, and a prompt's kernels and the first spill (:func:`prompt_kernels`) after;
  then the steps;
- the main process, before its first forward (:func:`prime`, run by ``Engine.before_first_forward``): the weight
  products for both decode thread counts (:func:`products_first`), then with the fp16 cache the sampler's top-k
  (:func:`sampler_kernels`), with a compressed cache the one-call step's store half; then its forwards, which load
  what the helper compiled.

The CLI's decoding commands and :func:`kvrun.load` start it (an app that then only embeds never runs :func:`prime`:
the engine runs it before its first forward that makes logits).  ``KVRUN_PREWARM=0`` turns it off; it is not started
on one core, with ``--threads 1``, on a GPU, or from a frozen app.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ..cache.base import KVCache
from ..cache.compressed import MAX_DECODE_T, CompressedLayerCache
from ..cache.factory import make_cache
from ..cache.kvconfig import KVConfig
from ..ops.cpu.topk import top_k
from .engine import PAST_THE_WINDOW


#: the prompt chunk :func:`prompt_kernels` runs: past a decode step's tokens (``MAX_DECODE_T``) and
#: ``qmatmul.BLAS_MIN_TOKENS``, so a prompt's own kernels run, not a decode step's
PROMPT = 16


@dataclass(frozen=True)
class Job:
    """What the helper needs to build the engine's layer caches and step buffers (no tokenizer, no LoRA: they do not
    change a kernel's argument types)."""

    path: str
    n_ctx: int
    n_batch: int
    kv: KVConfig | None
    steps: int


def decode_steps(kv: KVConfig | None, n_ctx: int) -> int:
    """One-token steps that reach every decode path of a cache: two for the fp16 ring; for a compressed one, past
    its sinks, its fp16 window and the first spill into the pools, as ``Engine.warm_up``'s prefill does."""
    return max(1, min(n_ctx - 2, PAST_THE_WINDOW if kv is not None else 2))


def wanted(engine: Any) -> bool:
    """Whether a helper would shorten this engine's first forward: a cold kernel cache on the CPU, more than one core
    to run on, neither ``--threads 1`` nor ``KVRUN_PREWARM=0``, and a Python that ``-m`` runs."""
    if os.environ.get("KVRUN_PREWARM", "1") == "0" or engine.backend.name != "cpu" or not engine.kernels_cold:
        return False
    if engine.threads == 1 or getattr(engine.model, "encoder", False):
        return False
    if getattr(sys, "frozen", False):  # (a frozen app's executable is the app: ``-m`` would start another of it)
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores >= 2


def start(engine: Any) -> subprocess.Popen | None:
    """Start the helper for ``engine`` where :func:`wanted`; it is stopped when this process exits (a kernel it has
    not finished is compiled by whichever process next needs it).  None where no helper was started."""
    if not wanted(engine):
        return None
    job = Job(engine.path, engine.n_ctx, engine.n_batch, engine.kv, decode_steps(engine.kv, engine.n_ctx))
    try:
        proc = subprocess.Popen(helper_command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.stdin.write(pickle.dumps(job))
        proc.stdin.close()
    except OSError:  # (no helper: the first run compiles alone, as it would without one)
        return None
    atexit.register(stop, proc)
    threading.Thread(target=proc.wait, daemon=True).start()  # (reaped when it ends: a server runs on for days)
    engine.before_first_forward = functools.partial(prime, engine)
    return proc


def prime(engine: Any) -> None:
    """This process's share of a cold first run, compiled before its first forward meets the attention the helper
    is compiling (and waits there for it): the weight products (:func:`products_first`), then the sampler's top-k
    with the fp16 cache (whose helper has the longer share), or with a compressed cache the decode step's store half.  For that, one layer cache of each kind is stepped as the helper steps them
    but without their lone attention calls (:func:`attend_steps`), so that this process compiles the one-call step's
    store (``decode_push``, ~18 s) while the helper compiles its attention (``_attend_decode_q``); the step's own
    compile then loads that.  Before, SmolLM2 (whose first token is a sink, stored and attended by a lone call)
    waited at its first token for the helper's attention, then for the helper's compile of the whole step, on one
    core.  Where anything here fails, the first forward compiles what is left, as it would without this."""
    products_first(engine)
    if engine.kv is None:  # (the helper's share is the longer with the fp16 cache: this process takes the sampler's)
        sampler_kernels()
    else:
        try:
            # (up to the first one-call steps, past the sinks: the first spill's calibration kernels, which a short
            # run never meets, are the helper's, after its attention)
            # (the compressed layers alone: a plain one's step is all attention, the helper's)
            cache = KVCache([layer for layer in engine.new_cache().layers if isinstance(layer, CompressedLayerCache)])
            sinks = max((layer.n_sinks for layer in cache.layers), default=0)
            attend_steps(engine.model, cache, min(decode_steps(engine.kv, engine.n_ctx), sinks + 2), lone=False)
        except Exception:  # noqa: BLE001 (as products_first)
            pass


def products_first(engine: Any) -> None:
    """One forward of one token through a throwaway cache whose attention layers attend to nothing, on one thread and
    then on the tuner's other count.  The decode-thread tuner (runtime/threads.py) first tries the other count at
    its fifth step, so without this the products' other kernels (``_mv_1``/``_mv_n``, ``_fused_1``/``_fused_n``:
    one or many threads) compiled after the attention was ready, ~4-6 s on the critical path of a 2-core first run;
    now they compile while the helper still compiles the attention.  The forward's own arrays and calls, so every
    kernel sees the types the real forwards pass.  Where the forward needs more of a cache than attention (a model
    of its own kind), the first forward compiles what is left, as it would without this."""
    counts = engine.tuner.choices if engine.tuner is not None else (engine.threads or numba.get_num_threads(),)
    for n in reversed(counts):  # (one thread first: the real first forward then compiles nothing the tuner adds)
        if not forward_without_attention(engine.model, engine.cfg.n_vocab, 1, n):
            return


def forward_without_attention(model: Any, n_vocab: int, n_tokens: int, threads: int | None = None) -> bool:
    """One forward of ``n_tokens`` tokens from position 0 (on ``threads`` Numba threads; None: as set) through a
    throwaway cache whose attention layers attend to nothing, the last token's logits wanted, as a prompt's.  False
    where the forward failed (a model that needs more of its cache than attention)."""
    cache = KVCache(make_cache(model.layer_specs(), max(16, n_tokens + 1), n_tokens, None, device="cpu"))
    for layer in cache.layers:
        if hasattr(layer, "update_and_attend"):
            layer.update_and_attend = _attend_nothing
    tokens, pos = np.zeros(n_tokens, np.int32), np.arange(n_tokens, dtype=np.int32)
    rows, logits = np.array([n_tokens - 1], np.int64), np.empty((1, n_vocab), np.float32)
    before = numba.get_num_threads()
    prefill = getattr(model.be, "prefill", None)
    try:
        if threads is not None:
            numba.set_num_threads(threads)
        with prefill() if n_tokens > 1 and prefill is not None else contextlib.nullcontext():  # (as Engine._eval_chunks)
            model.forward(tokens, pos, cache, rows, logits)
        return True
    except Exception:  # noqa: BLE001 (a model this does not fit: its first forward compiles alone, as without a helper)
        return False
    finally:
        numba.set_num_threads(before)


def _attend_nothing(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
    """A layer's attention in :func:`forward_without_attention`: zeros, where the forward reads it."""
    out[...] = 0


def helper_command() -> list[str]:
    """The helper's command line, its :class:`Job` read from stdin (tools/compileprof.py's ``--cli`` traces it too)."""
    return [sys.executable, "-m", __name__]


def stop(proc: subprocess.Popen) -> None:
    """End the helper if it still runs (Numba writes a cache entry whole or not at all, so none is left half-made)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def attend_steps(model: Any, cache: KVCache, steps: int, seed: int = 0, lone: bool = True, prompt: int = 0) -> int:
    """Feed one layer cache of each kind (class and spec) ``steps`` one-token steps from position 0, random keys,
    values and queries in the model's step buffers, as a decode step's ``update_and_attend`` calls come from the
    forward.  A compressed layer's lone attention is called once first where ``lone`` (the helper's share), never
    where not (the main process's, :func:`prime`).  ``prompt``: then, before the steps, :func:`prompt_kernels` for
    a prompt of that many tokens.  Returns the layers stepped (a layer whose heads are not the step buffers' shape
    is left out: its model attends through buffers of its own)."""
    *_, q3, k3, v3, att3 = model.step_buffers(1)
    layers, kinds = [], set()
    for layer in cache.layers:
        spec = getattr(layer, "spec", None)
        kind = (type(layer), spec, getattr(layer, "capacity", None))
        if spec is None or not hasattr(layer, "update_and_attend") or kind in kinds:
            continue
        if q3.shape[1:] != (spec.n_head, spec.head_dim) or k3.shape[1] != spec.n_head_kv or v3.shape[2] != spec.head_dim_v:
            continue
        kinds.add(kind)
        layers.append(layer)
    rng = np.random.default_rng(seed)
    compressed = [layer for layer in layers if isinstance(layer, CompressedLayerCache)]
    with contextlib.ExitStack() as apart:
        for layer in compressed:
            # A compressed cache's decode step is one kernel that stores and attends (cache/insert.py's decode_step),
            # but for its first tokens (the sinks), stored and then attended by the attention alone.  The main
            # process meets the one-call step first (after a prefill, or at once where a cache keeps no sinks) and
            # compiles its store half first: the helper starts with the attention, called alone on the empty layer,
            # and then leaves those calls out, so that the two costly halves compile side by side and the step's
            # own compile loads both
            if lone:
                _fill(rng, q3)
                layer.attend_alone(q3, att3)
            apart.enter_context(layer.steps_apart(attention=False))
        if prompt:
            prompt_kernels(model, compressed, prompt, rng)
        for p in range(steps):
            pos = np.array([p], np.int32)
            for layer in layers:
                _fill(rng, q3, k3, v3)
                layer.update_and_attend(q3, k3, v3, pos, att3)
    return len(layers)


def prompt_kernels(model: Any, layers: list, n: int, rng: np.random.Generator) -> None:
    """A prompt's kernels and a compressed cache's first spill: the weight products of a prompt of ``n`` tokens and
    of 2 (the BLAS tiles or the int8 GEMM, and the integer kernel: ``qmatmul.matmul``); a chunk of ``n`` tokens from
    position 0 through each of ``layers`` (a compressed layer's prefill: its store and attention), where that is
    more than a decode step's; one-token steps through each layer past its fp16 window by the steps' Python path
    (its one-call steps switched off: the main process is compiling those), so that the first spill calibrates the
    key basis and quantizes; each layer emptied again after.  With a compressed cache these were the main process's
    last share of a first run, while the helper, done with the attention, waited for its compile of the step."""
    for t in (n, 2):  # (first: a prompt's forward runs its products before its attention)
        forward_without_attention(model, model.cfg.n_vocab, t)
    *_, q, k, v, att = model.step_buffers(n)
    *_, q3, k3, v3, att3 = model.step_buffers(1)
    for layer in layers:
        try:
            if n > MAX_DECODE_T:
                _fill(rng, q, k, v)
                layer.update_and_attend(q, k, v, np.arange(n, dtype=np.int32), att)
                layer.reset()
            with layer.steps_apart(one_call=False):  # (emptied after)
                for p in range(layer.first_spill + 1):  # (to the first spill: the steps after it are one-call steps)
                    _fill(rng, q3, k3, v3)
                    layer.update_and_attend(q3, k3, v3, np.array([p], np.int32), att3)
        except Exception:  # noqa: BLE001 (a layer this does not fit: its steps follow)
            layer.reset()


def _fill(rng: np.random.Generator, *arrays: np.ndarray) -> None:
    """Random queries, keys and values into step buffers, in place."""
    for a in arrays:
        a[...] = rng.standard_normal(a.shape, np.float32)


def run(job: Job) -> int:
    """The helper's work: the model's step buffers and layer caches, then :func:`attend_steps`."""
    from ..loaders.config import load_config
    from ..loaders.gguf_file import GGUFFile
    from ..models import model_class
    from ..ops import get_backend

    g = GGUFFile(job.path)
    cfg = load_config(g)
    model = model_class(cfg.arch)(g, cfg, get_backend("cpu"), job.n_ctx, job.n_batch)
    cache = KVCache(make_cache(model.layer_specs(), job.n_ctx, job.n_batch, job.kv, device="cpu"))
    # (with a compressed cache the main process's share is the longer: the helper takes the sampler's kernel, first,
    # since its end is near the main process's first sampled token and the attention is not awaited before ~35 s, and
    # the prompt's kernels)
    if job.kv is not None:
        sampler_kernels()
    return attend_steps(model, cache, job.steps, prompt=min(PROMPT, job.n_batch) if job.kv is not None else 0)


def sampler_kernels() -> None:
    """The sampler's top-k (ops/cpu/topk.py), ~1.5 s to compile, called as runtime/sampling.py calls it."""
    try:
        top_k(np.zeros(2, np.float32), 1)
    except Exception:  # noqa: BLE001 (as products_first: the first sampled token compiles it)
        pass


if __name__ == "__main__":
    run(pickle.loads(sys.stdin.buffer.read()))
