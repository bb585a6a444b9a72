"""A KV cache as a session file holds it: in the CPU's classes, whichever device made it.

A saved chat is device-independent, as llama.cpp's state files are.  The GPU's caches keep the CPU's layouts (the fp16
ring's bits slot for slot, the compressed cache's host bookkeeping and pools, which its kernels write with the CPU's
quantizer step for step, the state-space layers' state, ring and copies field for field), so a GPU layer cache turns
into the CPU's class holding the same (``to_host(moved)``) to be pickled, and a fresh GPU cache takes a CPU one's
contents (``load_host(src)``) when a file is resumed on the GPU.  So nothing of CuPy ever reaches a file
(runtime/sessionfile.py's allowlist stays the CPU's), a file saved on either device resumes on the other, and a resumed
GPU cache is a new cache of new device arrays: the CUDA graphs captured for another (runtime/graphs.py keys them by the
cache object) are captured again, never replayed over another cache's pointers.  A layer that a device's cache cannot
take raises :class:`CannotResume`, which names the pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import KVCache, LayerCache


class CannotResume(ValueError):
    """A saved layer cache that this device's layer cache cannot take over (the message names both)."""


def refuse(src: LayerCache, dst: LayerCache) -> CannotResume:
    return CannotResume(f"its {type(src).__name__} layers cannot resume as this run's {type(dst).__name__}")


def to_host(cache: KVCache) -> KVCache:
    """``cache`` in the CPU's classes (``cache`` itself where every layer is one already).  The result may share arrays
    with ``cache`` (the emulator's device arrays are numpy's): it is for pickling now, not for keeping."""
    if not any(hasattr(layer, "to_host") for layer in cache.layers):
        return cache
    moved: dict[int, LayerCache] = {}  # id of a GPU layer -> its host copy (a layer sharing its K/V looks it up)
    layers = []
    for layer in cache.layers:
        h = layer.to_host(moved) if hasattr(layer, "to_host") else layer
        moved[id(layer)] = h
        layers.append(h)
    out = KVCache(layers)
    out.offset, out.media = cache.offset, dict(cache.media)  # (media are host objects on either device)
    return out


def onto(fresh: KVCache, saved: KVCache) -> KVCache:
    """``fresh`` (an empty cache of the engine, on its device) holding what ``saved`` (host classes) holds; raises
    :class:`CannotResume` where a layer cannot take its saved one."""
    if len(fresh.layers) != len(saved.layers):
        raise CannotResume(f"it holds {len(saved.layers)} layers, this model {len(fresh.layers)}")
    for dst, src in zip(fresh.layers, saved.layers):
        if hasattr(dst, "load_host"):
            dst.load_host(src)
        elif type(dst) is type(src) and getattr(src, "spec", None) == getattr(dst, "spec", None):
            vars(dst).update(vars(src))  # (a host class in a device cache: the same object's fields)
        else:
            raise refuse(src, dst)
    fresh.offset, fresh.media = saved.offset, dict(saved.media)
    return fresh


def moved_arrays(obj: Any, xp: Any, conv: Callable[[Any], Any]) -> Any:
    """A shallow copy of ``obj`` (an eviction policy: its per-slot scores are arrays of its module ``xp``) whose arrays,
    in attributes and the dicts, lists and tuples they hold, are ``conv``'s of them, with ``xp`` as its module.  An array
    held twice (a policy's ``acc`` may be its ``score``) is converted once and still held twice.  Host-side caches of
    an order (SnapKV's ``_kept``) start over: the next ranking sorts afresh."""
    from ..ops.gpu import kernels as K

    kinds = (np.ndarray, K.runtime().xp.ndarray)
    memo: dict[int, Any] = {}

    def move(x: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, kinds):
            out = conv(x)
        elif isinstance(x, dict):
            out = {k: move(v) for k, v in x.items()}
        elif isinstance(x, list):
            out = [move(v) for v in x]
        elif isinstance(x, tuple):
            items = [move(v) for v in x]
            out = type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        else:
            return x
        memo[id(x)] = out
        return out

    new = object.__new__(type(obj))
    vars(new).update({k: move(v) for k, v in vars(obj).items()})
    new.xp = xp
    if hasattr(new, "_kept"):
        new._kept = {}
    return new
