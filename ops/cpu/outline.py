"""Kernels compiled once and called through a symbol, instead of copied into every caller.

Numba links a callee's LLVM module into its caller and optimises and generates machine code for
the whole again at every level: a vector-IR tile kernel called by ``_pass``, called by the decode
attention kernel (whose ``prange`` adds two levels of its own), called by a cache's one-call
step, was compiled six times on a first run.  :func:`outline` compiles a function of scalars once,
as a C function (a Numba ``cfunc``, cached on disk like the rest), registers its address under a
fixed name, and gives njit code an intrinsic that calls that name: a caller's module holds only
the call, resolved when its code is loaded, from the cache too.

Only scalar arguments (ints, floats: addresses and sizes), so the C signature is plain.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.binding as llb
import numba as nb
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def outline(name: str, sig: types.Signature, **jit) -> Callable:
    """Decorator: ``py_func`` (scalar arguments, no result) compiled as the C function ``name``;
    returns an njit-callable intrinsic that calls it, each argument cast to ``sig``'s type."""

    def deco(py_func: Callable) -> Callable:
        cf = nb.cfunc(sig, **dict(jit, cache=True))(py_func)
        llb.add_symbol(name, cf.address)
        params = ", ".join(f"a{i}" for i in range(len(sig.args)))
        src = f"def typer(typingctx, {params}):\n    return impl(typingctx, ({params},))\n"

        def impl(typingctx, argtys: tuple):
            def codegen(context, builder, s, args):
                fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in sig.args])
                fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                builder.call(fn, [context.cast(builder, v, t, want) for v, t, want in zip(args, argtys, sig.args)])
                return context.get_dummy_value()

            return types.void(*argtys), codegen

        ns: dict = {"impl": impl}
        exec(src, ns)  # an intrinsic's arity is its typer's
        call = intrinsic(ns["typer"])
        call.cfunc = cf
        return call

    return deco
