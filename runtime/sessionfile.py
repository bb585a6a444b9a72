"""Chat sessions saved to disk and resumed: the conversation and its KV cache, exactly as they were.

With a compressed cache a resumed chat cannot be rebuilt by prefilling the
conversation again: what an eviction policy kept, merged and quantized depends
on the order the tokens came in, token by token.  So the file holds the cache
itself: every layer's arrays (fp16 window, quantized pools, positions, the
policy's scores, the key basis) and the Python state around them, pickled and
zlib-compressed (the empty tail of a cache sized for the whole context costs
nearly nothing: a 2-bit SmolLM2 chat of a few hundred tokens is ~1.5 MB).

Loading a pickle can run code, so the reader takes only an allowlist of
globals: the classes of ``kvrun.cache``, numpy's array and dtype reconstructors,
and a few builtins; a file that names anything else is refused.  A file also records
the model (size, architecture, geometry), the context and the KV setting it
was made with, and is refused under another, in one line that says which.

A file is device-independent, as llama.cpp's state files are: the GPU's caches are saved in the CPU's classes (the same
fp16 bits, the same quantized pools and state), so a chat saved with ``--device gpu`` resumes on the CPU and the other
way round, and no CuPy name ever reaches a file (cache/hostcopy.py).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import sys
import types
import zlib
from typing import Any

import numpy as np

from ..cache.hostcopy import CannotResume, onto, to_host
from ..loaders.errors import KvrunError
from .engine import shared_prefix

MAGIC = b"KVRUN-SESSION\x00"
VERSION = 1
_NUMPY = {  # (module, name) numpy's pickles of arrays, dtypes and scalars name
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}  # fmt: skip
_BUILTINS = {("builtins", n) for n in ("slice", "set", "frozenset", "complex", "range", "object")} | {
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("collections", "OrderedDict"),
}


def fingerprint(engine: Any) -> dict[str, Any]:
    """What a session file must match to be resumed by ``engine``: the model, the cache's shape, and the
    cache's code (its objects are pickled as they are: another version's may lack an attribute this one reads)."""
    cfg = engine.cfg
    return {
        "model": os.path.basename(engine.path), "file_size": os.path.getsize(engine.path), "arch": cfg.arch,
        "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_vocab": cfg.n_vocab,
        "n_ctx": engine.n_ctx, "kv": str(engine.kv) if engine.kv is not None else "fp16",
        # (no device: a file holds the CPU's classes, which either device resumes: cache/hostcopy.py)
        "cache code": _cache_code(),
        # (only with adapters: a file saved without any stays resumable)
        **({"lora": [(os.path.basename(p), sc) for p, sc in engine.lora]} if getattr(engine, "lora", None) else {}),
    }  # fmt: skip


@functools.cache
def _cache_code() -> str:
    """A digest of the cache package's sources (a few hundred KB, read once)."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cache")
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(d, f), "rb") as fh:
                    h.update(f.encode() + b"\0" + fh.read())
    return h.hexdigest()[:16]


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        # modules (a policy's array module ``xp``) travel by name
        return ("module", obj.__name__) if isinstance(obj, types.ModuleType) else None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY or (module, name) in _BUILTINS:
            return super().find_class(module, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        if module.startswith("kvrun.cache.gpu_"):  # (a file holds the CPU's classes only: cache/hostcopy.py)
            raise pickle.UnpicklingError(f"names {module}.{name}, which a session file may not")
        if module.startswith("kvrun.cache."):  # (a name elsewhere would import a module of ours that a cache never needs)
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # the cache's classes, never a function to call
                return obj
        raise pickle.UnpicklingError(f"names {module}.{name}, which a session file may not")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid[0] == "module" and pid[1] in ("numpy",):
            return sys.modules[pid[1]] if pid[1] in sys.modules else np
        raise pickle.UnpicklingError(f"unknown reference {pid!r:.40}")


def _check_not_encoder_decoder(engine: Any) -> None:
    """T5's cache holds the decoder's tokens, its encoded prompt lives in the model: nothing a file could resume."""
    if engine.model.encoder_decoder:
        raise KvrunError(f"{engine.cfg.arch} encodes each prompt afresh: its sessions and prompt caches are not saved; "
                         "drop --prompt-cache / --session-file")  # fmt: skip


def save(path: str | os.PathLike, engine: Any, state: dict[str, Any]) -> int:
    """Write ``state`` (the cache and the conversation) for ``engine`` to ``path``, atomically; returns its bytes."""
    _check_not_encoder_decoder(engine)
    if state.get("cache") is not None:  # the GPU's caches in the CPU's classes, as either device resumes them
        state = {**state, "cache": to_host(state["cache"])}
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump({"fingerprint": fingerprint(engine), "device": engine.backend.name, **state})
    data = MAGIC + VERSION.to_bytes(4, "little") + zlib.compress(buf.getvalue(), 1)
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a crash mid-write leaves the old file, never half a new one
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise KvrunError(f"cannot save the session to {path}: {e.strerror or e}") from None
    return len(data)


def load(path: str | os.PathLike, engine: Any, kind: str = "chat") -> dict[str, Any]:
    """The state :func:`save` wrote to ``path``, checked against ``engine``; ``kind``: what it must hold
    ("chat": a Session's, "prompt": a prompt cache's)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KvrunError(f"cannot read the session {path}: {e.strerror or e}") from None
    if not data.startswith(MAGIC):
        raise KvrunError(f"{path} is not a kvrun session file")
    version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "little")
    if version != VERSION:
        raise KvrunError(f"{path} is a session file of format {version}, this kvrun reads {VERSION}; start a new session")
    try:
        state = _Unpickler(io.BytesIO(zlib.decompress(data[len(MAGIC) + 4 :]))).load()
    except (zlib.error, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as e:
        raise KvrunError(f"{path}: the session file is damaged or unsafe ({e}); start a new session") from None
    if state.get("kind", "chat") != kind:
        names = {"chat": "a saved chat (kvrun chat --session)", "prompt": "a prompt cache (kvrun run --prompt-cache)"}
        raise KvrunError(f"{path} is {names.get(state.get('kind'), 'another kind of file')}, not {names[kind]}")
    want, got = fingerprint(engine), state.get("fingerprint", {})
    diff = [k for k in want if got.get(k) != want[k]]
    if diff == ["cache code"]:
        raise KvrunError(f"{path} was saved by another version of kvrun's cache code, which this one cannot resume; start a new session")
    if diff:
        k = diff[0]
        raise KvrunError(
            f"{path} was saved with {k} {got.get(k)!r}, this run has {want[k]!r}; resume it with the same model and flags "
            "(-c, --kv-*), or start a new session"
        )
    if state.get("cache") is not None:
        state["cache"] = _resumable(path, engine, state)
    return state


def _resumable(path: str | os.PathLike, engine: Any, state: dict[str, Any]) -> Any:
    """The file's cache as ``engine``'s device holds it: the CPU's as saved, a fresh GPU cache that took it over
    (cache/hostcopy.py); refused in one line where the layouts differ (the CPU's ALiBi keys carry a position channel
    that the GPU's kernels do not)."""
    saved, on = state["cache"], state.get("device", state["fingerprint"].get("device", "cpu"))
    if [getattr(layer, "spec", None) for layer in saved.layers] != list(engine.model.layer_specs()):
        raise KvrunError(f"{path} was saved on the {on}, whose cache lays out {engine.cfg.arch}'s layers otherwise; resume it "
                         f"with --device {on}, or start a new session")  # fmt: skip
    if engine.backend.name == "cpu":
        return saved
    try:
        return onto(engine.new_cache(), saved)
    except CannotResume as e:
        raise KvrunError(f"{path} was saved on the {on}: {e}; resume it with --device {on}, or start a new session") from None


def prompt_cache(path: str | os.PathLike, engine: Any, ids: list[int]) -> tuple[Any, list[int], int]:
    """``kvrun run --prompt-cache``, as llama-cli's: the cache for ``ids`` up to their last whole batch
    (``n_batch`` tokens; the rest, at least one token, is left to evaluate), the prefix it shares with the
    cache saved at ``path`` (if any) reused and the rest evaluated, then saved back to ``path`` when anything
    new was.  The batches fall where a run without the file puts them, so a prompt that takes the whole saved
    prefix gets the same logits, compressed cache included.  One that departs inside it reuses the cache
    truncated to a batch boundary, as a chat does (exact for the fp16 cache; with a compressed one, the
    evictions and calibration of the dropped tokens stay).  Returns (cache, the tokens left, tokens reused)."""
    _check_not_encoder_decoder(engine)  # (before any of the prompt is evaluated)
    B = engine.n_batch
    n_save = (len(ids) - 1) // B * B
    n_keep = 0
    if os.path.exists(path):
        state = load(path, engine, kind="prompt")
        cache = state["cache"]
        n_keep = shared_prefix(state["tokens"], ids[:n_save])
        if n_keep < cache.offset:
            n_keep = n_keep // B * B
            n_keep = cache.truncate(n_keep)  # (a convolution's state may not go back that far: 0)
    else:
        cache = engine.new_cache()
    if n_keep < n_save:
        engine.eval(cache, ids[n_keep:n_save])
    if n_keep < n_save or not os.path.exists(path):
        save(path, engine, {"kind": "prompt", "cache": cache, "tokens": list(ids[:n_save])})
    return cache, list(ids[n_save:]), n_keep
