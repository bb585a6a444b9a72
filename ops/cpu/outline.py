"""Kernels compiled once and called through a symbol, instead of copied into every caller.

Numba links a callee's LLVM module into its caller and optimises and generates machine code for
the whole again at every level: a vector-IR tile kernel called by ``_pass``, called by the decode
attention kernel (whose ``prange`` adds two levels of its own), called by a cache's one-call
step, was compiled six times on a first run.  :func:`outline` compiles a function of scalars once,
as a C function (a Numba ``cfunc``, cached on disk like the rest), registers its address under a
fixed name, and gives njit code an intrinsic that calls that name: a caller's module holds only
the call, resolved when its code is loaded, from the cache too.

Only scalar arguments (ints, floats: addresses and sizes), so the C signature is plain.

When: the C function is compiled when a caller is first compiled (typing the call), and loaded at
import where Numba's cache already holds it, which it does wherever a cached caller exists (that
caller's compile wrote it).  Another process may fill the cache after this one's import (two chats
started together, the test suite on two workers): a caller it compiled, loaded here, called a name
never registered here, and the process died in the call (seen: ``matvec``, ``decode_half_slots``).
So before each kernel is loaded from the cache (:data:`.jitstamp.LOAD_HOOKS`), the C functions the
cache now holds are registered too (:func:`register_cached`): a cached caller's C functions were
saved before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import llvmlite.binding as llb
import numba as nb
from llvmlite import ir
from numba.core import cgutils, sigutils, types
from numba.core.ccallback import CFunc
from numba.extending import intrinsic

from . import jitstamp


class _Leaf:
    """The C function ``name`` compiled from ``py_func`` with signature ``sig``, registered on demand."""

    def __init__(self, name: str, sig: types.Signature, py_func: Callable, jit: dict) -> None:
        self.name = name
        opts = {k: v for k, v in jit.items() if k != "cache"}
        self.cfunc = CFunc(py_func, sigutils.normalize_signature(sig), locals={}, options=opts)  # as nb.cfunc builds it
        self.cfunc.enable_caching()
        self.ready = False
        _LEAVES.append(self)
        if _in_cache(self.cfunc):
            self.ensure()

    def ensure(self) -> None:
        """Compile (or load from the cache) and register the address under :attr:`name`, once."""
        if not self.ready:
            self.cfunc.compile()
            llb.add_symbol(self.name, self.cfunc.address)
            self.ready = True


_LEAVES: list[_Leaf] = []
_registering = False  # (register_cached under way: a C function's own load comes through the hook again)


def register_cached() -> None:
    """Register every C function not yet registered that Numba's cache now holds (:data:`.jitstamp.LOAD_HOOKS`: before
    a kernel is loaded from the cache, which may call them)."""
    global _registering
    if _registering or all(leaf.ready for leaf in _LEAVES):
        return
    _registering = True
    try:
        for leaf in _LEAVES:
            if not leaf.ready and _in_cache(leaf.cfunc):
                leaf.ensure()
    finally:
        _registering = False


jitstamp.LOAD_HOOKS.append(register_cached)


def _in_cache(cf: CFunc) -> bool:
    """Whether Numba's cache has an index for ``cf`` (its locator is an internal API, as in
    :mod:`.jitcache`: where it is not there, says True, so the function is loaded or compiled now)."""
    try:
        return os.path.exists(cf._cache._cache_file._index_path)
    except AttributeError:
        return True


def outline(name: str, sig: types.Signature, when: bool = True, **jit) -> Callable:
    """Decorator: ``py_func`` (scalar arguments, no result) compiled as the C function ``name``;
    returns an njit-callable intrinsic that calls it, each argument cast to ``sig``'s type.

    ``when`` false (a kernel the host cannot run, as the AVX2 row dots on a host without AVX2,
    whose callers never call it there): a plain ``njit`` function instead, compiled only if a
    caller is, as before outlining."""

    def deco(py_func: Callable) -> Callable:
        if not when:
            return nb.njit(**jit)(py_func)
        leaf = _Leaf(name, sig, py_func, jit)

        def impl(typingctx, argtys: tuple):
            leaf.ensure()  # a caller is being compiled: its code will call the name

            def codegen(context, builder, s, args):
                fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in sig.args])
                fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                builder.call(fn, [context.cast(builder, v, t, want) for v, t, want in zip(args, argtys, sig.args)])
                return context.get_dummy_value()

            return types.void(*argtys), codegen

        params = ", ".join(f"a{i}" for i in range(len(sig.args)))
        ns: dict = {"impl": impl}
        exec(f"def typer(typingctx, {params}):\n    return impl(typingctx, ({params},))\n", ns)  # an intrinsic's arity is its typer's
        call = intrinsic(ns["typer"])
        call.leaf = leaf
        return call

    return deco
