"""Copies of a kernel's Python function with some of its globals swapped, to compile as kernels of their own."""

from __future__ import annotations

import types
from typing import Any, Callable


def variant(f: Callable[..., Any], name: str, **swap: Any) -> Callable[..., Any]:
    """A copy of function ``f`` named ``name`` whose globals in ``swap`` are replaced.

    Numba keys its on-disk cache by name, so a variant never loads the original's code (and a closure,
    the other way to vary a kernel, would not be cached at all).
    """
    g = types.FunctionType(f.__code__, dict(f.__globals__, **swap), name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    return g
