"""Products with weights in their GGUF block format (Numba, CPU).

``w`` is always the raw weight ``[n_rows, row_bytes]`` uint8 (a zero-copy view
of the memory-mapped file, rows of ``n_cols / block_size`` blocks); byte
layouts are documented in ``loaders/quants.py``.  Weights are never copied or
converted as a whole.

* :func:`matvec` (decode, one token; memory-bound).  As llama.cpp does, ``x``
  is quantized once per call to int8 blocks of 32 (int16 for Q8_0 weights)
  into a reused scratch row, with per-block sums of the quantized ``x`` on the
  side; each weight row is then dotted block by block with integer SIMD
  (``vpmaddubsw``/``vpmaddwd``, written as LLVM vector IR below), one float
  FMA per 32 weights, constant offsets and minimums folded into the block
  sums, software prefetch ahead of the 32-block rows.  Matrices smaller than
  :data:`PAR_MIN_BYTES` run on the calling thread (an OpenMP fork/join costs
  more than they do), larger ones on all Numba threads over row ranges.
* :func:`matmul` (prefill, many tokens; compute-bound).  Fewer than
  :data:`BLAS_MIN_TOKENS` tokens: the same integer kernel, each weight row
  dotted with every token while it is in L1.  More: on a host with VNNI
  (:data:`HAVE_VNNI`) block types go to the int8 GEMM of ``qgemm.py``; else
  :data:`TILE_ROWS` rows at a time are decoded (SIMD, bit-exact) into a reused
  float32 tile and multiplied with numpy's BLAS; the whole matrix is never
  dequantized at once.
* :func:`get_rows`: embedding lookup, decoding only the rows asked for; equal
  bit for bit to ``gguf.quants.dequantize`` (no FMA contraction).

Error: ``matvec`` and few-token ``matmul`` compute W @ x_q exactly up to float32
rounding, where x_q is x quantized per 32; for 4/5/6-bit weights that is a
relative error of about 0.5% of ``|out|`` (as llama.cpp), for Q8_0 weights
(int16 x) about 2e-5.  The VNNI GEMM is W @ x_q too, with int8 x for every type.
Float weights (F32/F16/BF16) and the BLAS path are float32 throughout.

Hosts without AVX2/F16C/FMA (:data:`HAVE_AVX2` false) fall back to plain
Numba loops over decoded rows (float32 results, much slower).

Measured speeds and the choices behind them: ``python -m
kvrun.ops.cpu.bench_matmul --threads 1``.
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import IQ4_NL as _GGUF_IQ4_NL
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ...loaders.quants import E8M0_HALF, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS, MXFP4_VALUES
from .blas import blas_threads, chosen_blas_threads, resize_blas_threads
from .f16 import bf16_to_f32, f16_to_f32
from .outline import outline
from .parallel import EXACT_JIT, num_threads, prange_only
from .variant import variant
from .qternary import emit_tq1_0, emit_tq2_0, row_tq1_0, row_tq2_0

_JIT = dict(cache=True, fastmath=True, nogil=True)
_JIT_EXACT = EXACT_JIT  # decoders and the row loops: bit-exact weights, the same sums on any thread

# ================================================================= SIMD kernels (LLVM vector IR)
# These live in this file (not a submodule) on purpose: Numba's on-disk cache
# is invalidated only by changes to the file that defines a cached function, so
# intrinsics in another module could leave stale machine code behind.
#
# Block dot products written as LLVM vector IR (Numba intrinsics), AVX2-shaped.
#
# Each ``dot_<type>(w, xq, xd, xs, xs16, n)`` returns the float32 dot product of
# one weight row with an activation vector that was quantized once per call:
#
# * ``w``    address of the row's first block (raw GGUF bytes)
# * ``xq``   address of the quantized activations: int8 ``[n_cols]`` (int16 for
#   Q8_0 weights, see ``quant_x16``)
# * ``xd``   address of float32 ``[n_cols/32]`` per-32 scales (x ~= xd * xq)
# * ``xs``   address of float32 ``[n_cols/32]``: sums of the quantized x per 32
#   (``xd * sum(xq)``)
# * ``xs16`` address of float32 ``[n_cols/16]``: the same per 16
# * ``n``    number of GGUF blocks in the row
#
# All arguments are int64 (addresses come from ``arr.ctypes.data``), so the
# callers keep the arrays alive.  The integer work follows llama.cpp's AVX2
# ``ggml_vec_dot_*``: nibbles are unpacked to unsigned bytes, multiplied with the
# signed int8 activations by ``vpmaddubsw`` (pairs summed to int16, no overflow:
# |q| <= 63, |x| <= 127), widened and summed by ``vpmaddwd``, converted to float
# and accumulated with one FMA per 32 weights using ``d_w * d_x``.  Constant
# offsets (Q4_0's -8, Q5_0's -16, Q6_K's -32) and the minimums of Q4_1/Q5_1/K
# types are folded into per-block sums of the quantized x, so each row's result
# is exactly (up to float32 rounding) the dot product of the row with the
# quantized x.  Q8_0 weights (signed, so no vpmaddubsw) are sign-extended to
# int16 and meet int16 activations in two vpmaddwd: same instruction count,
# 250x smaller activation error, which matters for the logits (output layer).
# The 32-block loops are unrolled by two into two accumulators (halving the FMA
# latency chains); the K types alternate accumulators between sub-blocks.
#
# The vector instructions are spelled as LLVM intrinsics
# (``llvm.x86.avx2.pmadd.ub.sw`` etc.), so this module needs an x86-64 CPU with
# AVX2 and F16C; :data:`HAVE_AVX2` says whether the host has them, and the
# callers fall back to plain Numba loops when it does not.


def _host_has(*names: str) -> bool:
    """Whether the host CPU has all these LLVM features."""
    try:
        f = llvm.get_host_cpu_features()
        return all(bool(f.get(k)) for k in names)
    except Exception:  # pragma: no cover - non-x86 hosts
        return False


HAVE_AVX2 = _host_has("avx2", "f16c", "fma")
#: AVX-512 (Zen 4/5, Skylake-X and later Xeons): decode attention's tile kernels on 512-bit vectors
HAVE_AVX512 = HAVE_AVX2 and _host_has("avx512f", "avx512bw", "avx512vl")
#: AVX-512 VNNI (Zen 4/5, Ice Lake and later Xeons): ``qgemm`` on 512-bit vectors
HAVE_VNNI512 = HAVE_AVX512 and _host_has("avx512vnni")
#: int8 dot products (AVX-512 VNNI, or AVX-VNNI on Alder Lake and later Intel desktops and
#: laptops): prefill products run on ``qgemm`` (vpdpbusd) instead of tile + BLAS
HAVE_VNNI = HAVE_VNNI512 or (HAVE_AVX2 and _host_has("avxvnni"))
#: the row dots' u8 x s8 products by vpdpbusd (256-bit: AVX512-VNNI with VL, or AVX-VNNI)
_DOT_VNNI = HAVE_VNNI and (_host_has("avxvnni") or _host_has("avx512vl"))

LI1, LI8, LI16, LI32, LI64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
LF32 = ir.FloatType()
LF16 = ir.HalfType()


def V(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


V32I8, V16I8, V16I16, V8I32, V8F32 = V(LI8, 32), V(LI8, 16), V(LI16, 16), V(LI32, 8), V(LF32, 8)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(LI64, v)


def _switch_pairs(b: ir.IRBuilder, w: ir.Value, G: ir.Value, pairs, tag: str, emit) -> None:
    """IR: ``emit(pw, pG)`` for the (width, group) pair of ``pairs`` that the run-time ``w``, ``G`` name
    (a switch; a pair outside ``pairs`` runs nothing).  The kernels specialised per pair use it."""
    done = b.append_basic_block(f"{tag}.done")
    switch = b.switch(b.add(b.mul(w, _i64(1024)), G), done)
    for pw, pG in pairs:
        block = b.append_basic_block(f"{tag}.{pw}.{pG}")
        switch.add_case(_i64(1024 * pw + pG), block)
        b.position_at_end(block)
        emit(pw, pG)
        b.branch(done)
    b.position_at_end(done)


def _cvec(t: ir.Type, n: int, val: int) -> ir.Constant:
    return ir.Constant(V(t, n), [ir.Constant(t, val)] * n)


class _G:
    """Small IR-emitting helpers around one builder."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder
        self.m = builder.module

    # ---- memory
    def addr(self, a: ir.Value) -> ir.Value:
        """int64 address -> i8*"""
        return self.b.inttoptr(a, LI8.as_pointer())

    def off(self, p: ir.Value, o) -> ir.Value:
        return self.b.gep(p, [o if isinstance(o, ir.Value) else ir.Constant(LI64, o)])

    def load(self, p: ir.Value, o, ty: ir.Type) -> ir.Value:
        q = self.b.bitcast(self.off(p, o), ty.as_pointer())
        return self.b.load(q, align=1)

    def f16(self, p: ir.Value, o) -> ir.Value:
        h = self.b.bitcast(self.load(p, o, LI16), LF16)
        return self.b.fpext(h, LF32)

    def f16x2(self, p: ir.Value, o) -> tuple[ir.Value, ir.Value]:
        """Two adjacent float16 (d, m) converted together."""
        h = self.b.bitcast(self.load(p, o, V(LI16, 2)), V(LF16, 2))
        f = self.b.fpext(h, V(LF32, 2))
        return self.b.extract_element(f, ir.Constant(LI32, 0)), self.b.extract_element(f, ir.Constant(LI32, 1))

    def prefetch(self, p: ir.Value, o) -> None:
        self.call("llvm.prefetch.p0", ir.VoidType(), [self.off(p, o), ir.Constant(LI32, 0), ir.Constant(LI32, 3), ir.Constant(LI32, 1)])

    def u8(self, p: ir.Value, o) -> ir.Value:
        return self.b.zext(self.load(p, o, LI8), LI32)

    def i8(self, p: ir.Value, o) -> ir.Value:
        return self.b.sext(self.load(p, o, LI8), LI32)

    # ---- intrinsics
    def call(self, name: str, ret: ir.Type, args: list[ir.Value]) -> ir.Value:
        fnty = ir.FunctionType(ret, [a.type for a in args])
        fn = cgutils.get_or_insert_function(self.m, fnty, name)
        return self.b.call(fn, args)

    def maddubs(self, u: ir.Value, s: ir.Value) -> ir.Value:
        """<32 x u8> * <32 x i8>, adjacent pairs summed -> <16 x i16> (saturating)."""
        return self.call("llvm.x86.avx2.pmadd.ub.sw", V16I16, [u, s])

    def maddwd(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """<16 x i16> * <16 x i16>, adjacent pairs summed -> <8 x i32>."""
        return self.call("llvm.x86.avx2.pmadd.wd", V8I32, [a, b])

    def psign(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.call("llvm.x86.avx2.psign.b", V32I8, [a, b])

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.call("llvm.fma.v8f32", V8F32, [a, b, c])

    def splat(self, v: ir.Value, n: int = 8) -> ir.Value:
        u = ir.Constant(V(v.type, n), ir.Undefined)
        u = self.b.insert_element(u, v, ir.Constant(LI32, 0))
        return self.b.shuffle_vector(u, u, ir.Constant(V(LI32, n), [0] * n))

    def and_(self, v: ir.Value, c: int) -> ir.Value:
        return self.b.and_(v, _cvec(v.type.element, v.type.count, c))

    def shr(self, v: ir.Value, c: int) -> ir.Value:
        return self.b.lshr(v, _cvec(v.type.element, v.type.count, c)) if c else v

    def shl(self, v: ir.Value, c: int) -> ir.Value:
        return self.b.shl(v, _cvec(v.type.element, v.type.count, c)) if c else v

    def nibbles(self, q16: ir.Value) -> ir.Value:
        """<16 x i8> packed nibbles -> <32 x i8>: low nibbles then high nibbles."""
        lo = self.and_(q16, 15)
        hi = self.shr(q16, 4)
        return self.b.shuffle_vector(lo, hi, ir.Constant(V(LI32, 32), list(range(32))))

    def dot_u8s8(self, q: ir.Value, x: ir.Value) -> ir.Value:
        """sum over 32 lanes of u8 q * s8 x as <8 x float> partial sums.  With VNNI one ``vpdpbusd`` sums each
        four products straight to int32, where AVX2 takes ``vpmaddubsw`` then ``vpmaddwd``: the same integers (no
        pair of these kernels' products reaches vpmaddubsw's int16 saturation), one instruction fewer."""
        if _DOT_VNNI:
            zero = ir.Constant(V8I32, [ir.Constant(LI32, 0)] * 8)
            p = self.call("llvm.x86.avx512.vpdpbusd.256", V8I32, [zero, self.b.bitcast(q, V8I32), self.b.bitcast(x, V8I32)])
        else:
            p = self.maddwd(self.maddubs(q, x), _cvec(LI16, 16, 1))
        return self.b.sitofp(p, V8F32)

    def bits32(self, qh: ir.Value) -> ir.Value:
        """i32 -> <32 x i8> holding 16 where bit j is set (lane j), else 0."""
        m = self.b.bitcast(qh, V(LI1, 32))
        return self.shl(self.b.zext(m, V32I8), 4)

    def hsum(self, v: ir.Value) -> ir.Value:
        n = v.type.count
        while n > 1:
            h = n // 2
            lo = self.b.shuffle_vector(v, v, ir.Constant(V(LI32, h), list(range(h))))
            hi = self.b.shuffle_vector(v, v, ir.Constant(V(LI32, h), list(range(h, n))))
            v = self.b.fadd(lo, hi)
            n = h
        return self.b.extract_element(v, ir.Constant(LI32, 0))


_PREFETCH = 1024  # bytes ahead for software prefetch in the 32-block row loops (Q8_0 cold: +15%)

_SIG = types.float32(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)


def _blocks_unrolled(builder: ir.IRBuilder, n: ir.Value, unroll: int, block) -> None:
    """Emit ``block(i, u)`` for the ``n`` blocks of a row: ``unroll`` a loop iteration (block ``i`` in slot ``u``,
    its place in the iteration), then the rest one by one in slot 0."""
    cnt = builder.udiv(n, ir.Constant(LI64, unroll)) if unroll > 1 else n
    with cgutils.for_range(builder, cnt) as loop:
        for u in range(unroll):
            block(builder.add(builder.mul(loop.index, ir.Constant(LI64, unroll)), ir.Constant(LI64, u)), u)
    if unroll > 1:
        with cgutils.for_range(builder, builder.sub(n, builder.mul(cnt, ir.Constant(LI64, unroll)))) as loop:
            block(builder.add(builder.mul(cnt, ir.Constant(LI64, unroll)), loop.index), 0)


def _row_dot(block_bytes: int, x_per_block: int, x_bytes: int, emit, unroll: int, prefetch: int = 0):
    """An intrinsic looping over the blocks of one row.

    ``emit(g, wb, xq, xd, xs, xs16, st, u)`` emits one block: ``wb`` points at
    the block, ``xq`` at its quantized activations, ``xd``/``xs`` at its float
    scales/sums (float*) and ``xs16`` at its sums per 16.  ``st`` is the state,
    a list ``[acc0, acc1, s0, s1]`` of two <8 x float> accumulators and two
    scalar ones (two of each to halve the FMA latency chains); ``u`` is the
    unroll slot of this block (0 or 1).  It returns the new state.  Blocks are
    emitted ``unroll`` at a time, slot ``u`` for the u-th of them.
    """

    def codegen(context, builder, sig, args):
        g = _G(builder)
        w, xq, xd, xs, xs16, n = args
        wp, xqp = g.addr(w), g.addr(xq)
        fp = LF32.as_pointer()
        xdp = builder.inttoptr(xd, fp)
        xsp = builder.inttoptr(xs, fp)
        x16p = builder.inttoptr(xs16, fp)
        zv = ir.Constant(V8F32, [ir.Constant(LF32, 0.0)] * 8)
        slots = [cgutils.alloca_once_value(builder, v) for v in (zv, zv, _c(0.0), _c(0.0))]
        nsub = x_per_block // 32

        def block(i, u):
            wb = g.off(wp, builder.mul(i, ir.Constant(LI64, block_bytes)))
            if prefetch and u == 0:
                g.prefetch(wb, prefetch)
            xqb = g.off(xqp, builder.mul(i, ir.Constant(LI64, x_bytes)))
            j = builder.mul(i, ir.Constant(LI64, nsub))
            xdb = builder.gep(xdp, [j])
            xsb = builder.gep(xsp, [j])
            x16b = builder.gep(x16p, [builder.mul(j, ir.Constant(LI64, 2))])
            st = emit(g, wb, xqb, xdb, xsb, x16b, [builder.load(s) for s in slots], u)
            for s, v in zip(slots, st):
                builder.store(v, s)

        _blocks_unrolled(builder, n, unroll, block)
        acc0, acc1, s0, s1 = (builder.load(s) for s in slots)
        return builder.fadd(g.hsum(builder.fadd(acc0, acc1)), builder.fadd(s0, s1))

    def typer(typingctx, w, xq, xd, xs, xs16, n):  # noqa: ARG001
        return _SIG, codegen

    return intrinsic(typer)


_SIG_T = types.void(*([types.int64] * 9))


def _row_dot_tokens(block_bytes: int, x_per_block: int, x_bytes: int, emit, unroll: int, n_tok: int, prefetch: int = 0):
    """As :func:`_row_dot` for ``n_tok`` activation vectors at once: ``(w, xq, xd, xs, xs16, n, ss, op, ts)``
    writes row . x_t to ``op + t*ts`` (float32) for t < n_tok, where token t's quantized activations, scales
    and sums sit ``t*ss`` bytes after token 0's (one scratch row a token).

    Each block is emitted once per token on the same ``wb``: the weight loads and the unpacking of the
    codes are the same instructions on the same values, so LLVM keeps one copy (GVN), and a block's bytes
    are decoded once for every token; only the multiply-adds and the activation loads repeat.  A small
    batch (lookup's drafts, a server's parallel slots) then costs far less than a matvec per token."""

    def codegen(context, builder, sig, args):
        g = _G(builder)
        w, xq, xd, xs, xs16, n, ss, op, ts = args
        wp = g.addr(w)
        fp = LF32.as_pointer()
        zv = ir.Constant(V8F32, [ir.Constant(LF32, 0.0)] * 8)
        slots = [[cgutils.alloca_once_value(builder, v) for v in (zv, zv, _c(0.0), _c(0.0))] for _ in range(n_tok)]
        nsub = x_per_block // 32
        toks = []
        for t in range(n_tok):
            off = builder.mul(ss, ir.Constant(LI64, t))
            toks.append((g.addr(builder.add(xq, off)), builder.inttoptr(builder.add(xd, off), fp),
                         builder.inttoptr(builder.add(xs, off), fp), builder.inttoptr(builder.add(xs16, off), fp)))  # fmt: skip

        def block(i, u):
            wb = g.off(wp, builder.mul(i, ir.Constant(LI64, block_bytes)))
            if prefetch and u == 0:
                g.prefetch(wb, prefetch)
            j = builder.mul(i, ir.Constant(LI64, nsub))
            for t, (xqp, xdp, xsp, x16p) in enumerate(toks):
                xqb = g.off(xqp, builder.mul(i, ir.Constant(LI64, x_bytes)))
                x16b = builder.gep(x16p, [builder.mul(j, ir.Constant(LI64, 2))])
                st = emit(g, wb, xqb, builder.gep(xdp, [j]), builder.gep(xsp, [j]), x16b, [builder.load(s) for s in slots[t]], u)
                for s, v in zip(slots[t], st):
                    builder.store(v, s)

        # blocks as :func:`_row_dot` takes them (``unroll`` at a time, slot u for the u-th): each token's sums
        # are added in the same order as its own row dot's, so a token gets the same bits either way
        _blocks_unrolled(builder, n, unroll, block)
        for t in range(n_tok):
            acc0, acc1, s0, s1 = (builder.load(s) for s in slots[t])
            r = builder.fadd(g.hsum(builder.fadd(acc0, acc1)), builder.fadd(s0, s1))
            dst = builder.add(op, builder.mul(ts, ir.Constant(LI64, t)))
            builder.store(r, builder.inttoptr(dst, fp))
        return context.get_dummy_value()

    def typer(typingctx, w, xq, xd, xs, xs16, n, ss, op, ts):  # noqa: ARG001
        return _SIG_T, codegen

    return intrinsic(typer)


def _blk32(core):
    """Adapt ``core(g, wb, xq, xd, xs, acc, sacc) -> (acc, sacc)`` to the state protocol."""

    def emit(g, wb, xq, xd, xs, xs16, st, u):
        st = list(st)
        st[u], st[2 + u] = core(g, wb, xq, xd, xs, st[u], st[2 + u])
        return st

    return emit


def _fl(p: ir.Value, k: int, g: _G) -> ir.Value:
    return g.b.load(g.b.gep(p, [ir.Constant(LI64, k)]))


def _c(v: float) -> ir.Constant:
    return ir.Constant(LF32, v)


# ----------------------------------------------------------------- SIMD: 32-element block types
def _emit_q4_0(g, wb, xq, xd, xs, acc, sacc):
    b = g.b
    d = g.f16(wb, 0)
    q = g.nibbles(g.load(wb, 2, V16I8))
    p = g.dot_u8s8(q, g.load(xq, 0, V32I8))
    acc = g.fma(p, g.splat(b.fmul(d, _fl(xd, 0, g))), acc)
    sacc = b.fsub(sacc, b.fmul(b.fmul(d, _c(8.0)), _fl(xs, 0, g)))
    return acc, sacc


def _emit_q4_1(g, wb, xq, xd, xs, acc, sacc):
    b = g.b
    d, m = g.f16x2(wb, 0)
    q = g.nibbles(g.load(wb, 4, V16I8))
    p = g.dot_u8s8(q, g.load(xq, 0, V32I8))
    acc = g.fma(p, g.splat(b.fmul(d, _fl(xd, 0, g))), acc)
    sacc = b.fadd(sacc, b.fmul(m, _fl(xs, 0, g)))
    return acc, sacc


def _emit_q5_0(g, wb, xq, xd, xs, acc, sacc):
    b = g.b
    d = g.f16(wb, 0)
    qh = g.bits32(g.load(wb, 2, LI32))
    q = b.or_(g.nibbles(g.load(wb, 6, V16I8)), qh)
    p = g.dot_u8s8(q, g.load(xq, 0, V32I8))
    acc = g.fma(p, g.splat(b.fmul(d, _fl(xd, 0, g))), acc)
    sacc = b.fsub(sacc, b.fmul(b.fmul(d, _c(16.0)), _fl(xs, 0, g)))
    return acc, sacc


def _emit_q5_1(g, wb, xq, xd, xs, acc, sacc):
    b = g.b
    d, m = g.f16x2(wb, 0)
    qh = g.bits32(g.load(wb, 4, LI32))
    q = b.or_(g.nibbles(g.load(wb, 8, V16I8)), qh)
    p = g.dot_u8s8(q, g.load(xq, 0, V32I8))
    acc = g.fma(p, g.splat(b.fmul(d, _fl(xd, 0, g))), acc)
    sacc = b.fadd(sacc, b.fmul(m, _fl(xs, 0, g)))
    return acc, sacc


def _emit_q8_0(g, wb, xq, xd, xs, acc, sacc):
    """Q8_0 weights with int16 activations: sign-extend both halves, two vpmaddwd."""
    b = g.b
    d = g.f16(wb, 0)
    q = g.load(wb, 2, V32I8)
    lo = b.sext(b.shuffle_vector(q, q, ir.Constant(V(LI32, 16), list(range(16)))), V16I16)
    hi = b.sext(b.shuffle_vector(q, q, ir.Constant(V(LI32, 16), list(range(16, 32)))), V16I16)
    p = b.add(g.maddwd(lo, g.load(xq, 0, V16I16)), g.maddwd(hi, g.load(xq, 32, V16I16)))
    acc = g.fma(b.sitofp(p, V8F32), g.splat(b.fmul(d, _fl(xd, 0, g))), acc)
    return acc, sacc


dot_q4_0 = _row_dot(18, 32, 32, _blk32(_emit_q4_0), 2, _PREFETCH)
dot_q4_1 = _row_dot(20, 32, 32, _blk32(_emit_q4_1), 2, _PREFETCH)
dot_q5_0 = _row_dot(22, 32, 32, _blk32(_emit_q5_0), 2, _PREFETCH)
dot_q5_1 = _row_dot(24, 32, 32, _blk32(_emit_q5_1), 2, _PREFETCH)
dot_q8_0 = _row_dot(34, 32, 64, _blk32(_emit_q8_0), 2, _PREFETCH)


# ----------------------------------------------------------------- SIMD: K super-blocks (256)
def _k_scales(g, wb, o):
    """6-bit (scale, min) pairs of the 8 sub-blocks from the 12 bytes at wb+o, as i32."""
    by = [g.u8(wb, o + k) for k in range(12)]
    b = g.b

    def c(v):
        return ir.Constant(LI32, v)

    out = []
    for j in range(8):
        if j < 4:
            sc = b.and_(by[j], c(63))
            mn = b.and_(by[j + 4], c(63))
        else:
            sc = b.or_(b.and_(by[j + 4], c(15)), b.shl(b.lshr(by[j - 4], c(6)), c(4)))
            mn = b.or_(b.lshr(by[j + 4], c(4)), b.shl(b.lshr(by[j], c(6)), c(4)))
        out.append((sc, mn))
    return out


def _qk45_codes(g, wb, five: bool) -> list:
    """The unsigned codes (<32 x u8>: 0..15, or 0..31 with Q5_K's high bits) of a Q4_K/Q5_K block's 8 sub-blocks."""
    b = g.b
    qh = g.load(wb, 16, V32I8) if five else None
    codes = []
    for j in range(4):
        raw = g.load(wb, (48 if five else 16) + 32 * j, V32I8)
        for h in range(2):
            s = 2 * j + h
            q = g.and_(raw, 15) if h == 0 else g.shr(raw, 4)
            if five:
                q = b.or_(q, g.and_(g.shl(qh, 4 - s) if s <= 4 else g.shr(qh, s - 4), 16))
            codes.append(q)
    return codes


def _q6_k_codes(g, wb, h: int) -> list:
    """The unsigned 6-bit codes (<32 x u8>, 0..63) of Q6_K sub-blocks 4h..4h+3 (half h of the block)."""
    b = g.b
    ql0 = g.load(wb, 64 * h, V32I8)
    ql1 = g.load(wb, 64 * h + 32, V32I8)
    qh = g.load(wb, 128 + 32 * h, V32I8)
    return [
        b.or_(g.and_(ql0, 15), g.shl(g.and_(qh, 3), 4)),
        b.or_(g.and_(ql1, 15), g.shl(g.and_(qh, 12), 2)),
        b.or_(g.shr(ql0, 4), g.and_(qh, 48)),
        b.or_(g.shr(ql1, 4), g.shr(g.and_(qh, 192), 2)),
    ]


def _emit_qk45(five: bool):
    def emit(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
        b = g.b
        accs = [st[0], st[1]]
        d, dmin = g.f16x2(wb, 0)
        sm = _k_scales(g, wb, 4)
        msum = _c(0.0)
        for s, q in enumerate(_qk45_codes(g, wb, five)):
            sc, mn = sm[s]
            p = g.dot_u8s8(q, g.load(xq, 32 * s, V32I8))
            ds = b.fmul(b.fmul(d, b.sitofp(sc, LF32)), _fl(xd, s, g))
            accs[s % 2] = g.fma(p, g.splat(ds), accs[s % 2])
            msum = b.fadd(msum, b.fmul(b.sitofp(mn, LF32), _fl(xs, s, g)))
        return [accs[0], accs[1], b.fsub(st[2], b.fmul(dmin, msum)), st[3]]

    return emit


def _emit_q6_k(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    b = g.b
    accs = [st[0], st[1]]
    d = g.f16(wb, 208)
    sc8 = g.load(wb, 192, V16I8)  # int8 scales of the 16 groups of 16
    for h in range(2):
        qs = _q6_k_codes(g, wb, h)
        for k in range(4):
            s = 4 * h + k  # 32-element sub-block: groups 2s, 2s+1
            pick = b.shuffle_vector(sc8, sc8, ir.Constant(V(LI32, 16), [2 * s] * 8 + [2 * s + 1] * 8))
            scv = b.sext(pick, V16I16)  # vpshufb xmm + vpmovsxbw
            p16 = g.maddubs(qs[k], g.load(xq, 32 * s, V32I8))
            p = b.sitofp(g.maddwd(p16, scv), V8F32)
            accs[k & 1] = g.fma(p, g.splat(b.fmul(d, _fl(xd, s, g))), accs[k & 1])
    # the -32 offsets: -32 d sum_g scale_g * xs16_g, as two 8-lane products
    fp8 = V8F32.as_pointer()
    x16v = b.bitcast(xs16, fp8)
    lo = b.sitofp(b.sext(b.shuffle_vector(sc8, sc8, ir.Constant(V(LI32, 8), list(range(8)))), V8I32), V8F32)
    hi = b.sitofp(b.sext(b.shuffle_vector(sc8, sc8, ir.Constant(V(LI32, 8), list(range(8, 16)))), V8I32), V8F32)
    t = b.fmul(lo, b.load(x16v, align=4))
    t = g.fma(hi, b.load(b.gep(x16v, [ir.Constant(LI64, 1)]), align=4), t)
    accs[0] = g.fma(t, g.splat(b.fmul(d, _c(-32.0))), accs[0])
    return [accs[0], accs[1], st[2], st[3]]


dot_q4_k = _row_dot(144, 256, 256, _emit_qk45(False), 1)
dot_q5_k = _row_dot(176, 256, 256, _emit_qk45(True), 1)
dot_q6_k = _row_dot(210, 256, 256, _emit_q6_k, 1)

# the same for 2 and 4 tokens at once (``_row_dot_tokens``): the types small models ship in
dot2_q4_0, dot4_q4_0 = (_row_dot_tokens(18, 32, 32, _blk32(_emit_q4_0), 2, t, _PREFETCH) for t in (2, 4))
dot2_q4_1, dot4_q4_1 = (_row_dot_tokens(20, 32, 32, _blk32(_emit_q4_1), 2, t, _PREFETCH) for t in (2, 4))
dot2_q5_0, dot4_q5_0 = (_row_dot_tokens(22, 32, 32, _blk32(_emit_q5_0), 2, t, _PREFETCH) for t in (2, 4))
dot2_q5_1, dot4_q5_1 = (_row_dot_tokens(24, 32, 32, _blk32(_emit_q5_1), 2, t, _PREFETCH) for t in (2, 4))
dot2_q8_0, dot4_q8_0 = (_row_dot_tokens(34, 32, 64, _blk32(_emit_q8_0), 2, t, _PREFETCH) for t in (2, 4))
dot2_q4_k, dot4_q4_k = (_row_dot_tokens(144, 256, 256, _emit_qk45(False), 1, t) for t in (2, 4))
dot2_q5_k, dot4_q5_k = (_row_dot_tokens(176, 256, 256, _emit_qk45(True), 1, t) for t in (2, 4))
dot2_q6_k, dot4_q6_k = (_row_dot_tokens(210, 256, 256, _emit_q6_k, 1, t) for t in (2, 4))


# ----------------------------------------------------------------- SIMD: 2/3-bit K types and the 4-bit table types
def _crumb_codes(g, wb, o: int) -> list:
    """The 2-bit codes (<32 x u8>, 0..3) of a Q2_K/Q3_K block's 8 runs of 32 weights (``qs`` at wb+o)."""
    codes = []
    for h in range(2):
        raw = g.load(wb, o + 32 * h, V32I8)
        codes += [g.and_(g.shr(raw, 2 * k), 3) for k in range(4)]
    return codes


def _q3_k_scales(g, wb) -> ir.Value:
    """Q3_K's 16 signed 6-bit scales (``sc - 32``) as <16 x i16>, from the 12 bytes at wb+96."""
    b = g.b
    lo8 = g.load(wb, 96, V(LI8, 8))
    lo = b.shuffle_vector(g.and_(lo8, 15), g.shr(lo8, 4), ir.Constant(V(LI32, 16), list(range(16))))
    hi4 = g.load(wb, 104, V(LI8, 4))
    hi = b.zext(b.shuffle_vector(hi4, hi4, ir.Constant(V(LI32, 16), [i % 4 for i in range(16)])), V16I16)
    hi = b.lshr(hi, ir.Constant(V16I16, [ir.Constant(LI16, 2 * (i // 4)) for i in range(16)]))
    sc = b.or_(b.zext(lo, V16I16), g.shl(g.and_(hi, 3), 4))
    return b.sub(sc, _cvec(LI16, 16, 32))


def _pick16(b, v16: ir.Value, s: int) -> ir.Value:
    """<16 x i16> holding group 2s's value in lanes 0..7 and group 2s+1's in 8..15."""
    return b.shuffle_vector(v16, v16, ir.Constant(V(LI32, 16), [2 * s] * 8 + [2 * s + 1] * 8))


def _groups16_dot(g, codes, scv, xq, xd, d, accs) -> None:
    """accs += d * xd[s] * sum_g scale_g (codes . x)_g over the 8 runs of 32 (two groups of 16 each)."""
    b = g.b
    for s, q in enumerate(codes):
        p = b.sitofp(g.maddwd(g.maddubs(q, g.load(xq, 32 * s, V32I8)), _pick16(b, scv, s)), V8F32)
        accs[s & 1] = g.fma(p, g.splat(b.fmul(d, _fl(xd, s, g))), accs[s & 1])


def _groups16_sums(g, v16: ir.Value, xs16) -> ir.Value:
    """<8 x float> whose lanes add up to sum_g v16_g * xs16_g (the sums of x per 16)."""
    b = g.b
    fp8 = V8F32.as_pointer()
    x16v = b.bitcast(xs16, fp8)
    lo = b.sitofp(b.sext(b.shuffle_vector(v16, v16, ir.Constant(V(LI32, 8), list(range(8)))), V8I32), V8F32)
    hi = b.sitofp(b.sext(b.shuffle_vector(v16, v16, ir.Constant(V(LI32, 8), list(range(8, 16)))), V8I32), V8F32)
    t = b.fmul(lo, b.load(x16v, align=4))
    return g.fma(hi, b.load(b.gep(x16v, [ir.Constant(LI64, 1)]), align=4), t)


def _emit_q2_k(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """w = d sc q - dmin m per group of 16: the codes meet x by vpmaddubsw, the mins the sums per 16."""
    b = g.b
    accs = [st[0], st[1]]
    d, dmin = g.f16x2(wb, 80)
    sc8 = g.load(wb, 0, V16I8)
    _groups16_dot(g, _crumb_codes(g, wb, 16), b.zext(g.and_(sc8, 15), V16I16), xq, xd, d, accs)
    mins = _groups16_sums(g, b.zext(g.shr(sc8, 4), V16I16), xs16)
    accs[1] = g.fma(mins, g.splat(b.fneg(dmin)), accs[1])
    return [accs[0], accs[1], st[2], st[3]]


def _q3_k_codes(g, wb) -> list:
    """Q3_K's unsigned codes q + 4 (<32 x u8>, 0..7) of its 8 runs of 32: 2 low bits, the hmask bit as bit 2."""
    hm = g.load(wb, 0, V32I8)
    return [g.b.or_(q, g.shl(g.and_(g.shr(hm, c), 1), 2)) for c, q in enumerate(_crumb_codes(g, wb, 32))]


def _emit_q3_k(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """w = d (sc - 32) (u - 4) with u = q + 4 unsigned: the -4 offsets meet the sums per 16."""
    b = g.b
    accs = [st[0], st[1]]
    d = g.f16(wb, 108)
    scv = _q3_k_scales(g, wb)
    _groups16_dot(g, _q3_k_codes(g, wb), scv, xq, xd, d, accs)
    accs[1] = g.fma(_groups16_sums(g, scv, xs16), g.splat(b.fmul(d, _c(-4.0))), accs[1])
    return [accs[0], accs[1], st[2], st[3]]


#: IQ4_NL / IQ4_XS code -> weight (ggml's kvalues_iq4nl)
IQ4_VALUES = np.array(_GGUF_IQ4_NL.kvalues, np.int8)


def _lut16(values: np.ndarray) -> ir.Constant:
    """A 16-entry byte table, twice (vpshufb looks up within each 16-byte lane)."""
    return ir.Constant(V32I8, [ir.Constant(LI8, int(v) & 0xFF) for v in list(values) * 2])


_IQ4_TABLE = _lut16(IQ4_VALUES)
_MXFP4_TABLE = _lut16(MXFP4_VALUES)  # -12..12: the E2M1 values doubled


def _iq4_dot(g, q16: ir.Value, x: ir.Value, table: ir.Constant = _IQ4_TABLE) -> ir.Value:
    """16 bytes of nibbles (as Q4_0) looked up in a signed 16-entry ``table`` . 32 int8 x, as <8 x float>
    partial sums.  IQ4's values are -127..113: |v| meets x with v's sign by vpsignb, so vpmaddubsw
    cannot saturate (MXFP4's -12..12 the same way: no offset to fold into the sums of x)."""
    v = g.call("llvm.x86.avx2.pshuf.b", V32I8, [table, g.nibbles(q16)])
    return g.dot_u8s8(g.psign(v, v), g.psign(x, v))


def _e8m0_half(g, e: ir.Value) -> ir.Value:
    """An E8M0 byte (i32 0..255) -> 2^(e - 128) as float: the exponent field e - 1, or for e < 2 the
    subnormals 2^-128, 2^-127 (ggml's GGML_E8M0_TO_FP32_HALF; e = 255 is 2^127, not inf or NaN)."""
    b = g.b
    sub = b.shl(_ci(0x00200000), b.and_(e, _ci(1)))
    return b.bitcast(b.select(b.icmp_unsigned("<", e, _ci(2)), sub, b.shl(b.sub(e, _ci(1)), _ci(23))), LF32)


def _emit_mxfp4(g, wb, xq, xd, xs, acc, sacc):  # noqa: ARG001
    b = g.b
    p = _iq4_dot(g, g.load(wb, 1, V16I8), g.load(xq, 0, V32I8), _MXFP4_TABLE)
    return g.fma(p, g.splat(b.fmul(_e8m0_half(g, g.u8(wb, 0)), _fl(xd, 0, g))), acc), sacc


def _emit_iq4_nl(g, wb, xq, xd, xs, acc, sacc):  # noqa: ARG001
    b = g.b
    p = _iq4_dot(g, g.load(wb, 2, V16I8), g.load(xq, 0, V32I8))
    return g.fma(p, g.splat(b.fmul(g.f16(wb, 0), _fl(xd, 0, g))), acc), sacc


def _iq4_xs_scale(g, wb, s: int) -> ir.Value:
    """d (ls - 32) of IQ4_XS sub-block s, as float."""
    b = g.b
    lo = b.and_(b.lshr(g.u8(wb, 4 + s // 2), ir.Constant(LI32, 4 * (s % 2))), ir.Constant(LI32, 15))
    hi = b.and_(b.lshr(b.zext(g.load(wb, 2, LI16), LI32), ir.Constant(LI32, 2 * s)), ir.Constant(LI32, 3))
    ls = b.sub(b.or_(lo, b.shl(hi, ir.Constant(LI32, 4))), ir.Constant(LI32, 32))
    return b.fmul(g.f16(wb, 0), b.sitofp(ls, LF32))


def _emit_iq4_xs(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    b = g.b
    accs = [st[0], st[1]]
    for s in range(8):
        p = _iq4_dot(g, g.load(wb, 8 + 16 * s, V16I8), g.load(xq, 32 * s, V32I8))
        accs[s & 1] = g.fma(p, g.splat(b.fmul(_iq4_xs_scale(g, wb, s), _fl(xd, s, g))), accs[s & 1])
    return [accs[0], accs[1], st[2], st[3]]


dot_q2_k = _row_dot(84, 256, 256, _emit_q2_k, 1)
dot_q3_k = _row_dot(110, 256, 256, _emit_q3_k, 1)
dot_iq4_nl = _row_dot(18, 32, 32, _blk32(_emit_iq4_nl), 2, _PREFETCH)
dot_iq4_xs = _row_dot(136, 256, 256, _emit_iq4_xs, 1)
dot_mxfp4 = _row_dot(17, 32, 32, _blk32(_emit_mxfp4), 2, _PREFETCH)


# ----------------------------------------------------------------- SIMD: i-quants (grid lattices)
# IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M (layouts in loaders/quants.py).  A group of 8
# weights (IQ3: two grids of 4) is one entry of a constant grid table, looked up by a scalar load
# each (the tables live in the module as constant globals; 2-16 KB, they stay in L1), gathered into
# a <32 x u8> per sub-block of 32.  The grid values are unsigned (IQ1's -1/0/1 stored as 0/1/2),
# so they meet x in vpmaddubsw as the unsigned side, with the weights' signs moved onto x (a
# masked negate from the sign bits as an <32 x i1>: llama.cpp's psign of the activations).
# |grid| <= 62, |x| <= 127: pairs stay inside int16.  The 4-bit scales enter as (2 ls + 1) (IQ1:
# 2 ls + 1, IQ3_S: 1 + 2 ls) in vpmaddwd, their constant factors (1/8, 1/4) in the float scale.
# IQ1's delta: IQ1_S's (one a sub-block) meets the sums of x per 32; IQ1_M's (one a group of 8)
# is folded into the codes.  These dots are compute-bound (~45 instructions a sub-block, half of
# them the lookups and the sign bits).  Tried and slower on Zen 4: AVX2 gathers for the lookups
# (IQ2_XXS 285 against 215 us for 2048 x 2048, IQ3_XXS 333 against 247); building the indices in
# vectors, or the entries through a stack buffer (the same).
def _grid_bytes(grid: np.ndarray) -> bytes:
    """A grid [n, k] of values in 0..255 as its bytes, entry after entry (entry i at 8i or 4i)."""
    return np.ascontiguousarray(grid, np.uint8).tobytes()


_IQ2XXS_TAB = _grid_bytes(IQ2XXS_GRID)  # 256 x 8 B
_IQ2XS_TAB = _grid_bytes(IQ2XS_GRID)  # 512 x 8 B
_IQ2S_TAB = _grid_bytes(IQ2S_GRID)  # 1024 x 8 B
_IQ3XXS_TAB = _grid_bytes(IQ3XXS_GRID)  # 256 x 4 B
_IQ3S_TAB = _grid_bytes(IQ3S_GRID)  # 512 x 4 B
_IQ1S_TAB = _grid_bytes(IQ1S_GRID + 1)  # 2048 x 8 B of grid + 1 (0, 1, 2)


def _table(g: _G, name: str, data: bytes) -> ir.Value:
    """i8* to the constant global ``name`` holding ``data`` (added to the module on first use)."""
    gv = g.m.globals.get(name)
    if gv is None:
        ty = ir.ArrayType(LI8, len(data))
        gv = ir.GlobalVariable(g.m, ty, name)
        gv.initializer = ir.Constant(ty, bytearray(data))
        gv.global_constant = True
        gv.linkage = "internal"
        gv.align = 64
    return g.b.bitcast(gv, LI8.as_pointer())


def _ci(v: int) -> ir.Constant:
    return ir.Constant(LI32, v)


def _grid8(g, tab: ir.Value, idx: list) -> ir.Value:
    """<32 x u8>: the 8-byte grid entries tab[idx[0..3]] (i32 indices) one after the other."""
    b = g.b
    v = ir.Constant(V(LI64, 4), ir.Undefined)
    for l, i in enumerate(idx):
        v = b.insert_element(v, g.load(tab, b.mul(b.zext(i, LI64), _i64(8)), LI64), _ci(l))
    return b.bitcast(v, V32I8)


def _grid4(g, tab: ir.Value, idx: list) -> ir.Value:
    """<32 x u8>: the 4-byte grid entries tab[idx[0..7]] (i32 indices) one after the other."""
    b = g.b
    v = ir.Constant(V8I32, ir.Undefined)
    for k, i in enumerate(idx):
        v = b.insert_element(v, g.load(tab, b.mul(b.zext(i, LI64), _i64(4)), LI32), _ci(k))
    return b.bitcast(v, V32I8)


def _ksigns_bytes(g, s: ir.Value) -> ir.Value:
    """i32 of four 7-bit sign indices, one a byte -> the four sign bytes KSIGNS[...] (bit 7 of each
    byte set to the parity of its 7 bits: the eighth sign keeps the count of negatives even)."""
    b = g.b
    t = b.xor(s, b.lshr(s, _ci(4)))  # per byte, bit 0 ends as the parity of the byte's 7 bits
    t = b.xor(t, b.lshr(t, _ci(2)))
    t = b.xor(t, b.lshr(t, _ci(1)))
    return b.or_(s, b.shl(b.and_(t, _ci(0x01010101)), _ci(7)))


def _ksigns(g, a: ir.Value) -> ir.Value:
    """i32 holding four 7-bit sign indices in bits 7l .. 7l + 6 (IQ2_XXS, IQ3_XXS) -> their four sign bytes."""
    b = g.b
    s = b.and_(a, _ci(0x7F))
    for l in (1, 2, 3):
        s = b.or_(s, b.and_(b.shl(a, _ci(l)), _ci(0x7F << (8 * l))))
    return _ksigns_bytes(g, s)


def _negate_where(g, x: ir.Value, bits: ir.Value) -> ir.Value:
    """<32 x i8> x with lane j negated where bit j of the i32 ``bits`` is set."""
    b = g.b
    return b.select(b.bitcast(bits, V(LI1, 32)), b.sub(_cvec(LI8, 32, 0), x), x)


def _odd16(g, v: ir.Value) -> ir.Value:
    """2 v + 1 (v: i32 0..15) as i16."""
    b = g.b
    return b.trunc(b.add(b.shl(v, _ci(1)), _ci(1)), LI16)


def _iq2_scales(g, wb, o: int) -> ir.Value:
    """IQ2_XS/IQ2_S: the 16 scales per 16 weights (2 ls + 1) as <16 x i16> from the 8 bytes at wb+o
    (group 2ib the low nibble of byte ib, 2ib + 1 the high one), in :func:`_pick16`'s order."""
    b = g.b
    s8 = g.load(wb, o, V(LI8, 8))
    ls = b.shuffle_vector(g.and_(s8, 15), g.shr(s8, 4), ir.Constant(V(LI32, 16), [i // 2 + 8 * (i % 2) for i in range(16)]))
    return g.b.add(g.shl(b.zext(ls, V16I16), 1), _cvec(LI16, 16, 1))


def _iq2_xxs_sub(g, wb, ib: int, tab):
    """IQ2_XXS sub-block ib: (grid <32 x u8>, sign bits i32, ls i32)."""
    b = g.b
    idx = g.load(wb, 2 + 8 * ib, LI32)
    a = g.load(wb, 6 + 8 * ib, LI32)
    q = _grid8(g, tab, [b.and_(b.lshr(idx, _ci(8 * l)), _ci(255)) for l in range(4)])
    return q, _ksigns(g, a), b.lshr(a, _ci(28))


def _iq2_xs_sub(g, wb, ib: int, tab):
    """IQ2_XS sub-block ib: (grid, sign bits); its four u16 hold a 9-bit index and a 7-bit sign index each."""
    b = g.b
    q4 = g.load(wb, 2 + 8 * ib, V(LI16, 4))
    q = _grid8(g, tab, [b.and_(b.zext(b.extract_element(q4, _ci(l)), LI32), _ci(511)) for l in range(4)])
    signs = b.bitcast(b.trunc(g.shr(q4, 9), V(LI8, 4)), LI32)
    return q, _ksigns_bytes(g, signs)


def _iq2_s_sub(g, wb, ib: int, tab):
    """IQ2_S sub-block ib: (grid, sign bits); 10-bit indices, the top 2 bits of each in qh[ib]."""
    b = g.b
    qh = g.u8(wb, 66 + ib)
    idx = [b.or_(g.u8(wb, 2 + 4 * ib + l), b.shl(b.and_(b.lshr(qh, _ci(2 * l)), _ci(3)), _ci(8))) for l in range(4)]
    return _grid8(g, tab, idx), g.load(wb, 34 + 4 * ib, LI32)


def _iq3_xxs_sub(g, wb, ib: int, tab):
    """IQ3_XXS sub-block ib: (grid, sign bits, ls)."""
    b = g.b
    a = g.load(wb, 66 + 4 * ib, LI32)
    q = _grid4(g, tab, [g.u8(wb, 2 + 8 * ib + k) for k in range(8)])
    return q, _ksigns(g, a), b.lshr(a, _ci(28))


def _iq3_s_sub(g, wb, ib: int, tab):
    """IQ3_S sub-block ib: (grid, sign bits, ls); 9-bit indices, the top bit of entry k in bit k of qh[ib]."""
    b = g.b
    qh = g.u8(wb, 66 + ib)
    idx = [b.or_(g.u8(wb, 2 + 8 * ib + k), b.shl(b.and_(b.lshr(qh, _ci(k)), _ci(1)), _ci(8))) for k in range(8)]
    ls = b.and_(b.lshr(g.u8(wb, 106 + ib // 2), _ci(4 * (ib % 2))), _ci(15))
    return _grid4(g, tab, idx), g.load(wb, 74 + 4 * ib, LI32), ls


def _iq1_s_sub(g, wb, ib: int, tab):
    """IQ1_S sub-block ib: (grid + 1 <32 x u8>, the u16 qh[ib] as i32: index bits, ls, delta's sign)."""
    b = g.b
    qh = b.zext(g.load(wb, 34 + 2 * ib, LI16), LI32)
    idx = [b.or_(g.u8(wb, 2 + 4 * ib + l), b.shl(b.and_(b.lshr(qh, _ci(3 * l)), _ci(7)), _ci(8))) for l in range(4)]
    return _grid8(g, tab, idx), qh


def _iq1_s_scale(g, d, qh):
    """IQ1_S: (d (2 ls + 1), delta - 1) of a sub-block, as float: w = dl (grid + 1) + dl (delta - 1)."""
    b = g.b
    dl = b.fmul(d, b.sitofp(b.add(b.shl(b.and_(b.lshr(qh, _ci(12)), _ci(7)), _ci(1)), _ci(1)), LF32))
    off = b.select(b.icmp_unsigned("!=", b.and_(qh, _ci(0x8000)), _ci(0)), _c(-1.125), _c(-0.875))
    return dl, off


def _iq1_m_d(g, wb) -> ir.Value:
    """IQ1_M's f16 d, gathered from the top nibbles of its four u16 scales, as float."""
    b = g.b
    sc = [b.zext(g.load(wb, 48 + 2 * k, LI16), LI32) for k in range(4)]
    h = b.lshr(sc[0], _ci(12))
    for k in (1, 2, 3):
        h = b.or_(h, b.and_(b.lshr(sc[k], _ci(12 - 4 * k)), _ci(0xF000 >> (12 - 4 * k))))
    return b.fpext(b.bitcast(b.trunc(h, LI16), LF16), LF32)


def _iq1_m_sub(g, wb, ib: int, tab):
    """IQ1_M sub-block ib as codes u = 8 (grid + 1) + (2 if delta > 0 else 0) (<32 x u8>, 0..18): w = d (2 ls + 1)
    (u - 9) / 8, since 8 (grid + delta) = 8 grid +- 1.  Group l's index and delta are nibble l % 2 of qh[2ib + l // 2]."""
    b = g.b
    v = ir.Constant(V(LI64, 4), ir.Undefined)
    for l in range(4):
        nib = b.lshr(g.u8(wb, 32 + 2 * ib + l // 2), _ci(4 * (l % 2)))
        i = b.or_(g.u8(wb, 4 * ib + l), b.shl(b.and_(nib, _ci(7)), _ci(8)))
        e = b.shl(g.load(tab, b.mul(b.zext(i, LI64), _i64(8)), LI64), ir.Constant(LI64, 3))
        pos = b.icmp_unsigned("==", b.and_(nib, _ci(8)), _ci(0))
        e = b.or_(e, b.select(pos, ir.Constant(LI64, 0x0202020202020202), ir.Constant(LI64, 0)))
        v = b.insert_element(v, e, _ci(l))
    return b.bitcast(v, V32I8)


def _iq1_m_scales(g, wb) -> ir.Value:
    """IQ1_M's 16 scales per 16 weights (2 ls + 1) as <16 x i16>: 3-bit fields 3m of u16 k for group 4k + m."""
    b = g.b
    sc = b.zext(g.load(wb, 48, V(LI16, 4)), V(LI32, 4))
    sc = b.shuffle_vector(sc, sc, ir.Constant(V(LI32, 16), [j // 4 for j in range(16)]))
    sh = ir.Constant(V(LI32, 16), [ir.Constant(LI32, 3 * (j % 4)) for j in range(16)])
    ls = b.and_(b.lshr(sc, sh), _cvec(LI32, 16, 7))
    return b.trunc(b.add(b.shl(ls, _cvec(LI32, 16, 1)), _cvec(LI32, 16, 1)), V16I16)


def _iq_dot(g, q, x, sc16, d, xd, ib: int, accs) -> None:
    """accs[ib % 2] += d xd[ib] sum_16-groups sc16 (q . x): q unsigned codes, x already signed."""
    b = g.b
    p = b.sitofp(g.maddwd(g.maddubs(q, x), sc16), V8F32)
    accs[ib & 1] = g.fma(p, g.splat(b.fmul(d, _fl(xd, ib, g))), accs[ib & 1])


def _emit_iq_signed(name: str, data: bytes, mul: float, sub, scales_at: int | None):
    """The dot of the types whose weights are (d mul sc) grid sign: IQ2_*, IQ3_*.  ``sub(g, wb, ib, tab)``
    gives (grid, sign bits[, ls]); ``scales_at``: the byte offset of IQ2_XS/IQ2_S's nibble scales per 16,
    or None for a scale per 32 from the sub-block's ls (as 2 ls + 1; IQ3_S's 1 + 2 ls is the same)."""

    def emit(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
        b = g.b
        accs = [st[0], st[1]]
        tab = _table(g, name, data)
        d = b.fmul(g.f16(wb, 0), _c(mul))
        scv = _iq2_scales(g, wb, scales_at) if scales_at is not None else None
        for ib in range(8):
            r = sub(g, wb, ib, tab)
            sc16 = _pick16(b, scv, ib) if scv is not None else g.splat(_odd16(g, r[2]), 16)
            _iq_dot(g, r[0], _negate_where(g, g.load(xq, 32 * ib, V32I8), r[1]), sc16, d, xd, ib, accs)
        return [accs[0], accs[1], st[2], st[3]]

    return emit


def _emit_iq1_s(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """w = dl (grid + 1) + dl (delta - 1): codes 0..2 meet x, the offset the sums per 32."""
    b = g.b
    accs, sacc = [st[0], st[1]], st[2]
    tab = _table(g, "kvrun_iq1s_grid", _IQ1S_TAB)
    d = g.f16(wb, 0)
    for ib in range(8):
        q, qh = _iq1_s_sub(g, wb, ib, tab)
        dl, off = _iq1_s_scale(g, d, qh)
        p = g.dot_u8s8(q, g.load(xq, 32 * ib, V32I8))
        accs[ib & 1] = g.fma(p, g.splat(b.fmul(dl, _fl(xd, ib, g))), accs[ib & 1])
        sacc = b.fadd(sacc, b.fmul(b.fmul(dl, off), _fl(xs, ib, g)))
    return [accs[0], accs[1], sacc, st[3]]


def _emit_iq1_m(g, wb, xq, xd, xs, xs16, st, u):  # noqa: ARG001
    """w = d/8 (2 ls + 1) (u - 9) per 16: the codes meet x, the -9 the sums per 16."""
    b = g.b
    accs = [st[0], st[1]]
    tab = _table(g, "kvrun_iq1s_grid", _IQ1S_TAB)
    d = _iq1_m_d(g, wb)
    d8 = b.fmul(d, _c(0.125))
    scv = _iq1_m_scales(g, wb)
    for ib in range(8):
        _iq_dot(g, _iq1_m_sub(g, wb, ib, tab), g.load(xq, 32 * ib, V32I8), _pick16(b, scv, ib), d8, xd, ib, accs)
    accs[1] = g.fma(_groups16_sums(g, scv, xs16), g.splat(b.fmul(d, _c(-9.0 / 8.0))), accs[1])
    return [accs[0], accs[1], st[2], st[3]]


dot_iq3_xxs = _row_dot(98, 256, 256, _emit_iq_signed("kvrun_iq3xxs_grid", _IQ3XXS_TAB, 0.25, _iq3_xxs_sub, None), 1)
dot_iq3_s = _row_dot(110, 256, 256, _emit_iq_signed("kvrun_iq3s_grid", _IQ3S_TAB, 1.0, _iq3_s_sub, None), 1)
dot_iq2_xxs = _row_dot(66, 256, 256, _emit_iq_signed("kvrun_iq2xxs_grid", _IQ2XXS_TAB, 0.125, _iq2_xxs_sub, None), 1)
dot_iq2_xs = _row_dot(74, 256, 256, _emit_iq_signed("kvrun_iq2xs_grid", _IQ2XS_TAB, 0.125, _iq2_xs_sub, 66), 1)
dot_iq2_s = _row_dot(82, 256, 256, _emit_iq_signed("kvrun_iq2s_grid", _IQ2S_TAB, 0.125, _iq2_s_sub, 74), 1)
dot_iq1_s = _row_dot(50, 256, 256, _emit_iq1_s, 1)
dot_iq1_m = _row_dot(56, 256, 256, _emit_iq1_m, 1)
# the ternary types (their blocks in qternary.py)
dot_tq1_0 = _row_dot(54, 256, 256, emit_tq1_0, 1, _PREFETCH)
dot_tq2_0 = _row_dot(66, 256, 256, emit_tq2_0, 1, _PREFETCH)


# ----------------------------------------------------------------- SIMD: activation quantization
def _quant_codegen(bits16: bool):
    """quant(x, n_blocks, xq, xf): x float32 [32 n] -> xq int8 (int16) [32 n], xf float32 [4 n].

    xf holds xd[n] (scale), xs[n] (xd * sum q per 32) and xs16[2n] (per 16); int8
    scales to +-127, int16 to +-32767, rounding half to even.
    """
    qmax = 32767.0 if bits16 else 127.0
    qt = LI16 if bits16 else LI8

    def codegen(context, builder, sig, args):
        g = _G(builder)
        b = builder
        x, n, xq, xf = args
        fp8 = V8F32.as_pointer()
        xp = b.inttoptr(x, fp8)
        xfp = b.inttoptr(xf, LF32.as_pointer())
        qp = b.inttoptr(xq, V(qt, 8).as_pointer())
        with cgutils.for_range(b, n) as loop:
            i = loop.index
            v = [b.load(b.gep(xp, [b.add(b.mul(i, ir.Constant(LI64, 4)), ir.Constant(LI64, k))]), align=4) for k in range(4)]
            a = [g.call("llvm.fabs.v8f32", V8F32, [t]) for t in v]
            m = _vmax(b, _vmax(b, a[0], a[1]), _vmax(b, a[2], a[3]))
            for h in (4, 2, 1):
                m = _vmax(b, m, b.shuffle_vector(m, m, ir.Constant(V(LI32, 8), [(j + h) % 8 for j in range(8)])))
            amax = b.extract_element(m, ir.Constant(LI32, 0))
            pos = b.fcmp_ordered(">", amax, _c(0.0))
            idd = b.select(pos, b.fdiv(_c(qmax), amax), _c(0.0))
            d = b.fdiv(amax, _c(qmax))
            ids = g.splat(idd)
            q = [b.fptosi(g.call("llvm.rint.v8f32", V8F32, [b.fmul(t, ids)]), V8I32) for t in v]
            p01 = g.call("llvm.x86.avx2.packssdw", V16I16, [q[0], q[1]])  # lanes interleaved
            p23 = g.call("llvm.x86.avx2.packssdw", V16I16, [q[2], q[3]])
            if bits16:
                fix = ir.Constant(V(LI32, 4), [0, 2, 1, 3])
                for k, pk in enumerate((p01, p23)):
                    o = b.shuffle_vector(b.bitcast(pk, V(LI64, 4)), ir.Constant(V(LI64, 4), ir.Undefined), fix)
                    b.store(o, b.bitcast(b.gep(qp, [b.add(b.mul(i, ir.Constant(LI64, 4)), ir.Constant(LI64, 2 * k))]), V(LI64, 4).as_pointer()), align=1)
            else:
                p8 = g.call("llvm.x86.avx2.packsswb", V32I8, [p01, p23])
                fix = ir.Constant(V(LI32, 8), [0, 4, 1, 5, 2, 6, 3, 7])
                o = b.shuffle_vector(b.bitcast(p8, V8I32), ir.Constant(V8I32, ir.Undefined), fix)
                b.store(o, b.bitcast(b.gep(qp, [b.mul(i, ir.Constant(LI64, 4))]), V8I32.as_pointer()), align=1)
            t = b.add(q[0], q[1])
            u = b.add(q[2], q[3])
            w = b.add(b.shuffle_vector(t, u, ir.Constant(V(LI32, 8), [0, 1, 2, 3, 8, 9, 10, 11])),
                      b.shuffle_vector(t, u, ir.Constant(V(LI32, 8), [4, 5, 6, 7, 12, 13, 14, 15])))
            w = b.add(w, b.shuffle_vector(w, w, ir.Constant(V(LI32, 8), [2, 3, 2, 3, 6, 7, 6, 7])))
            w = b.add(w, b.shuffle_vector(w, w, ir.Constant(V(LI32, 8), [1, 1, 1, 1, 5, 5, 5, 5])))
            s0 = b.sitofp(b.extract_element(w, ir.Constant(LI32, 0)), LF32)
            s1 = b.sitofp(b.extract_element(w, ir.Constant(LI32, 4)), LF32)
            b.store(d, b.gep(xfp, [i]))
            if not bits16:
                b.store(b.fmul(d, b.fadd(s0, s1)), b.gep(xfp, [b.add(i, n)]))
                base16 = b.add(b.mul(n, ir.Constant(LI64, 2)), b.mul(i, ir.Constant(LI64, 2)))
                b.store(b.fmul(d, s0), b.gep(xfp, [base16]))
                b.store(b.fmul(d, s1), b.gep(xfp, [b.add(base16, ir.Constant(LI64, 1))]))
        return context.get_dummy_value()

    def typer(typingctx, x, n, xq, xf):  # noqa: ARG001
        return types.none(types.int64, types.int64, types.int64, types.int64), codegen

    return intrinsic(typer)


def _vmax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """max without NaN handling (a single vmaxps)."""
    return b.select(b.fcmp_ordered(">", x, y), x, y)


def _hsum_i(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    n = v.type.count
    while n > 1:
        h = n // 2
        lo = b.shuffle_vector(v, v, ir.Constant(V(LI32, h), list(range(h))))
        hi = b.shuffle_vector(v, v, ir.Constant(V(LI32, h), list(range(h, n))))
        v = b.add(lo, hi)
        n = h
    return b.extract_element(v, ir.Constant(LI32, 0))


quant_x8 = _quant_codegen(False)
quant_x16 = _quant_codegen(True)


# ----------------------------------------------------------------- SIMD: block decoders (float32, bit-exact)
# deq_<type>(w, n, out): the n blocks at address w -> float32 at address out.
# Same float32 operations in the same order as gguf.quants.dequantize (no FMA
# contraction: no fast-math flags on these instructions), so bit-identical.
_DEQ_SIG = types.none(types.int64, types.int64, types.int64)


def _deq_driver(block_bytes: int, elems: int, emit):
    def codegen(context, builder, sig, args):
        g = _G(builder)
        w, n, out = args
        wp, op = g.addr(w), g.addr(out)
        with cgutils.for_range(builder, n) as loop:
            i = loop.index
            wb = g.off(wp, builder.mul(i, ir.Constant(LI64, block_bytes)))
            ob = g.off(op, builder.mul(i, ir.Constant(LI64, elems * 4)))
            emit(g, wb, ob)
        return context.get_dummy_value()

    def typer(typingctx, w, n, out):  # noqa: ARG001
        return _DEQ_SIG, codegen

    return intrinsic(typer)


def _put32(g, q, lo, hi, m, sub, ob, o):
    """Store 32 floats at ob+o: (q[j] as float) * (lo for j < 16, else hi), then +m (or -m if sub)."""
    b = g.b
    for k in range(4):
        part = b.shuffle_vector(q, q, ir.Constant(V(LI32, 8), list(range(8 * k, 8 * k + 8))))
        v = b.fmul(b.sitofp(b.sext(part, V8I32), V8F32), g.splat(lo if k < 2 else hi))
        if m is not None:
            v = b.fsub(v, g.splat(m)) if sub else b.fadd(v, g.splat(m))
        b.store(v, b.bitcast(g.off(ob, o + 32 * k), V8F32.as_pointer()), align=4)


def _sub8(g, v, c):
    return g.b.sub(v, _cvec(LI8, 32, c))


def _deq_q4_0(g, wb, ob):
    d = g.f16(wb, 0)
    _put32(g, _sub8(g, g.nibbles(g.load(wb, 2, V16I8)), 8), d, d, None, False, ob, 0)


def _deq_q4_1(g, wb, ob):
    d = g.f16(wb, 0)
    _put32(g, g.nibbles(g.load(wb, 4, V16I8)), d, d, g.f16(wb, 2), False, ob, 0)


def _deq_q5_0(g, wb, ob):
    d = g.f16(wb, 0)
    q = g.b.or_(g.nibbles(g.load(wb, 6, V16I8)), g.bits32(g.load(wb, 2, LI32)))
    _put32(g, _sub8(g, q, 16), d, d, None, False, ob, 0)


def _deq_q5_1(g, wb, ob):
    d = g.f16(wb, 0)
    q = g.b.or_(g.nibbles(g.load(wb, 8, V16I8)), g.bits32(g.load(wb, 4, LI32)))
    _put32(g, q, d, d, g.f16(wb, 2), False, ob, 0)


def _deq_q8_0(g, wb, ob):
    d = g.f16(wb, 0)
    _put32(g, g.load(wb, 2, V32I8), d, d, None, False, ob, 0)


def _deq_qk45(five: bool):
    def emit(g, wb, ob):
        b = g.b
        d = g.f16(wb, 0)
        dmin = g.f16(wb, 2)
        sm = _k_scales(g, wb, 4)
        for s, q in enumerate(_qk45_codes(g, wb, five)):
            sc, mn = sm[s]
            dl = b.fmul(d, b.sitofp(sc, LF32))
            ml = b.fmul(dmin, b.sitofp(mn, LF32))
            _put32(g, q, dl, dl, ml, True, ob, 128 * s)

    return emit


def _deq_q6_k(g, wb, ob):
    b = g.b
    d = g.f16(wb, 208)
    for h in range(2):
        qs = _q6_k_codes(g, wb, h)
        for k in range(4):
            s = 4 * h + k
            sa = b.sitofp(g.i8(wb, 192 + 2 * s), LF32)
            sb = b.sitofp(g.i8(wb, 192 + 2 * s + 1), LF32)
            _put32(g, _sub8(g, qs[k], 32), b.fmul(d, sa), b.fmul(d, sb), None, False, ob, 128 * s)


deq_q4_0 = _deq_driver(18, 32, _deq_q4_0)
deq_q4_1 = _deq_driver(20, 32, _deq_q4_1)
deq_q5_0 = _deq_driver(22, 32, _deq_q5_0)
deq_q5_1 = _deq_driver(24, 32, _deq_q5_1)
deq_q8_0 = _deq_driver(34, 32, _deq_q8_0)
deq_q4_k = _deq_driver(144, 256, _deq_qk45(False))
deq_q5_k = _deq_driver(176, 256, _deq_qk45(True))
deq_q6_k = _deq_driver(210, 256, _deq_q6_k)


# ----------------------------------------------------------------- types
# kind: index used inside the kernels
F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS = range(15)
IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, MXFP4 = range(15, 23)
TQ1_0, TQ2_0 = range(23, 25)  # ternary (qternary.py): no int8 GEMM, so a prefill takes tile + BLAS
_TYPES = {  # ggml id -> (kind, block elements, block bytes)
    int(T.F32): (F32, 1, 4),
    int(T.F16): (F16, 1, 2),
    int(T.BF16): (BF16, 1, 2),
    int(T.Q4_0): (Q4_0, 32, 18),
    int(T.Q4_1): (Q4_1, 32, 20),
    int(T.Q5_0): (Q5_0, 32, 22),
    int(T.Q5_1): (Q5_1, 32, 24),
    int(T.Q8_0): (Q8_0, 32, 34),
    int(T.Q4_K): (Q4_K, 256, 144),
    int(T.Q5_K): (Q5_K, 256, 176),
    int(T.Q6_K): (Q6_K, 256, 210),
    int(T.Q2_K): (Q2_K, 256, 84),
    int(T.Q3_K): (Q3_K, 256, 110),
    int(T.IQ4_NL): (IQ4_NL, 32, 18),
    int(T.IQ4_XS): (IQ4_XS, 256, 136),
    int(T.IQ3_XXS): (IQ3_XXS, 256, 98),
    int(T.IQ3_S): (IQ3_S, 256, 110),
    int(T.IQ2_XXS): (IQ2_XXS, 256, 66),
    int(T.IQ2_XS): (IQ2_XS, 256, 74),
    int(T.IQ2_S): (IQ2_S, 256, 82),
    int(T.IQ1_S): (IQ1_S, 256, 50),
    int(T.IQ1_M): (IQ1_M, 256, 56),
    int(T.MXFP4): (MXFP4, 32, 17),
    int(T.TQ1_0): (TQ1_0, 256, 54),
    int(T.TQ2_0): (TQ2_0, 256, 66),
}
SUPPORTED: tuple[int, ...] = tuple(_TYPES)
# kind -> block elements / block bytes, for the shape checks inside the kernels
_BLOCK_ELEMS = np.array([e for _, e, _ in sorted(_TYPES.values())], np.int64)
_BLOCK_BYTES = np.array([b for _, _, b in sorted(_TYPES.values())], np.int64)
#: kinds with 2- and 4-token row dots (:func:`_dot_rows_tok`); the rest take a token at a time
_TOKENS_AT_ONCE = np.array([k in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) for k in range(len(_TYPES))])

#: matrices smaller than this run on one thread in matvec (fork/join costs more).
#: Measured (2 threads, tg128 alternating): 4 MiB left every per-layer matrix of
#: the small models on one thread: SmolLM2 147 -> 189 t/s, Gemma 3 97 -> 112 t/s
#: at 64 KiB; always splitting (0) was slower again.
PAR_MIN_BYTES = 64 << 10
#: matmul with fewer tokens than this uses the integer kernel, else tile + BLAS
BLAS_MIN_TOKENS = 8
#: on a VNNI host, with fewer tokens than this, else the int8 GEMM.  The integer kernel's cost grows with
#: every token (it is compute-bound, not memory-bound, here); the GEMM's barely does.  Measured on one
#: thread (Zen 5): a 1536 x 576 Q4_1 product took 26 / 51 / 75 / 100 / 173 us for 1 / 2 / 3 / 4 / 7
#: tokens on the integer kernel, 90-96 us on the GEMM; SmolLM2's 49152 x 576 Q8_0 output, 3237 against
#: 3249 us at 4 tokens.  Lookup decoding's checks of 5-7 tokens gained most: 172 -> 300 tok/s.
#: With the 2- and 4-token row dots (each block decoded once for all tokens) 4 tokens moved back to the
#: integer kernel.  Measured on the Xeon, 2 threads, SmolLM2's matrices, integer kernel / GEMM, us: 1536 x 576
#: Q4_1 at 4 tokens 62 / 64, at 5 85 / 63; 576 x 576 26 / 30, 35 / 30; the 49152 x 576 Q8_0 output 1755 / 2114,
#: 2441 / 2101.  Four parallel slots' decode: 196 -> 242-250 tok/s.
GEMM_MIN_TOKENS = 5
#: rows decoded per BLAS call in matmul
TILE_ROWS = 128

_USE_SIMD = HAVE_AVX2
_USE_VNNI = HAVE_VNNI


def kernel_kind(qtype: int) -> int:
    """The kernels' kind number of ggml type ``qtype``; ValueError naming the supported types otherwise."""
    return _type(qtype)[0]


def _type(qtype: int) -> tuple[int, int, int]:
    try:
        return _TYPES[int(qtype)]
    except (KeyError, TypeError, ValueError):
        try:
            name = T(int(qtype)).name
        except (ValueError, TypeError):
            name = repr(qtype)
        supported = ", ".join(T(t).name for t in SUPPORTED)
        raise ValueError(f"no CPU kernel for tensor type {name}; supported: {supported}") from None


# ----------------------------------------------------------------- row decoders (float32, bit-exact)
@nb.njit(inline="always", cache=True)
def _h(row, o):
    """float16 at byte offset o of a uint8 row."""
    return f16_to_f32(np.uint16(row[o]) | (np.uint16(row[o + 1]) << np.uint16(8)))


@nb.njit(**_JIT_EXACT)
def _row_f32(row, out):
    v = row[: out.size * 4].view(np.float32)
    for i in range(out.size):
        out[i] = v[i]


@nb.njit(**_JIT_EXACT)
def _row_f16(row, out):
    for i in range(out.size):
        out[i] = _h(row, 2 * i)


@nb.njit(**_JIT_EXACT)
def _row_bf16(row, out):
    for i in range(out.size):
        out[i] = bf16_to_f32(np.uint16(row[2 * i]) | (np.uint16(row[2 * i + 1]) << np.uint16(8)))


@nb.njit(**_JIT_EXACT)
def _row_q4_0(row, out):
    for b in range(out.size // 32):
        o = b * 18
        d = _h(row, o)
        for j in range(16):
            q = np.int32(row[o + 2 + j])
            out[b * 32 + j] = d * np.float32((q & 15) - 8)
            out[b * 32 + 16 + j] = d * np.float32((q >> 4) - 8)


@nb.njit(**_JIT_EXACT)
def _row_q4_1(row, out):
    for b in range(out.size // 32):
        o = b * 20
        d = _h(row, o)
        m = _h(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 4 + j])
            out[b * 32 + j] = d * np.float32(q & 15) + m
            out[b * 32 + 16 + j] = d * np.float32(q >> 4) + m


@nb.njit(inline="always", cache=True)
def _u32(row, o):
    return np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8) | (np.uint32(row[o + 2]) << 16) | (np.uint32(row[o + 3]) << 24)


@nb.njit(**_JIT_EXACT)
def _row_q5_0(row, out):
    for b in range(out.size // 32):
        o = b * 22
        d = _h(row, o)
        qh = _u32(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32(((q & 15) | h0) - 16)
            out[b * 32 + 16 + j] = d * np.float32(((q >> 4) | h1) - 16)


@nb.njit(**_JIT_EXACT)
def _row_q5_1(row, out):
    for b in range(out.size // 32):
        o = b * 24
        d = _h(row, o)
        m = _h(row, o + 2)
        qh = _u32(row, o + 4)
        for j in range(16):
            q = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32((q & 15) | h0) + m
            out[b * 32 + 16 + j] = d * np.float32((q >> 4) | h1) + m


@nb.njit(**_JIT_EXACT)
def _row_q8_0(row, out):
    for b in range(out.size // 32):
        o = b * 34
        d = _h(row, o)
        for j in range(32):
            out[b * 32 + j] = d * np.float32(np.int8(row[o + 2 + j]))


@nb.njit(inline="always", cache=True)
def _k_scale_min(row, o, j):
    """6-bit scale and min of sub-block j (0..7) from the 12 bytes at row[o:]."""
    if j < 4:
        sc = np.int32(row[o + j]) & 63
        mn = np.int32(row[o + j + 4]) & 63
    else:
        sc = (np.int32(row[o + j + 4]) & 0xF) | ((np.int32(row[o + j - 4]) >> 6) << 4)
        mn = (np.int32(row[o + j + 4]) >> 4) | ((np.int32(row[o + j]) >> 6) << 4)
    return sc, mn


@nb.njit(**_JIT_EXACT)
def _row_q4_k(row, out):
    for b in range(out.size // 256):
        o = b * 144
        d = _h(row, o)
        dmin = _h(row, o + 2)
        for s in range(8):
            sc, mn = _k_scale_min(row, o + 4, s)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(mn)
            qo = o + 16 + (s // 2) * 32
            shift = 4 * (s & 1)
            for j in range(32):
                out[b * 256 + s * 32 + j] = dl * np.float32((np.int32(row[qo + j]) >> shift) & 15) - ml


@nb.njit(**_JIT_EXACT)
def _row_q5_k(row, out):
    for b in range(out.size // 256):
        o = b * 176
        d = _h(row, o)
        dmin = _h(row, o + 2)
        for s in range(8):
            sc, mn = _k_scale_min(row, o + 4, s)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(mn)
            qo = o + 48 + (s // 2) * 32
            shift = 4 * (s & 1)
            for j in range(32):
                q = ((np.int32(row[qo + j]) >> shift) & 15) | (((np.int32(row[o + 16 + j]) >> s) & 1) << 4)
                out[b * 256 + s * 32 + j] = dl * np.float32(q) - ml


@nb.njit(**_JIT_EXACT)
def _row_q6_k(row, out):
    for b in range(out.size // 256):
        o = b * 210
        d = _h(row, o + 208)
        for half in range(2):
            ql = o + half * 64
            qh = o + 128 + half * 32
            sc = o + 192 + half * 8
            base = b * 256 + half * 128
            for j in range(32):
                isc = j // 16
                h = np.int32(row[qh + j])
                q1 = ((np.int32(row[ql + j]) & 15) | ((h & 3) << 4)) - 32
                q2 = ((np.int32(row[ql + 32 + j]) & 15) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((np.int32(row[ql + j]) >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((np.int32(row[ql + 32 + j]) >> 4) | (((h >> 6) & 3) << 4)) - 32
                out[base + j] = d * np.float32(np.int8(row[sc + isc])) * np.float32(q1)
                out[base + 32 + j] = d * np.float32(np.int8(row[sc + isc + 2])) * np.float32(q2)
                out[base + 64 + j] = d * np.float32(np.int8(row[sc + isc + 4])) * np.float32(q3)
                out[base + 96 + j] = d * np.float32(np.int8(row[sc + isc + 6])) * np.float32(q4)


@nb.njit(inline="always", cache=True)
def _crumb(row, qs, e):
    """The 2-bit code of weight e (0..255) of a Q2_K/Q3_K block whose qs starts at row[qs]: bits 2k of
    qs[32h + l] for e = 128h + 32k + l."""
    return (np.int32(row[qs + 32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3


@nb.njit(**_JIT_EXACT)
def _row_q2_k(row, out):
    for b in range(out.size // 256):
        o = b * 84
        d = _h(row, o + 80)
        dmin = _h(row, o + 82)
        for s in range(16):
            sc = np.int32(row[o + s])
            dl = d * np.float32(sc & 15)
            ml = dmin * np.float32(sc >> 4)
            for e in range(16 * s, 16 * s + 16):
                out[b * 256 + e] = dl * np.float32(_crumb(row, o + 16, e)) - ml


@nb.njit(**_JIT_EXACT)
def _row_q3_k(row, out):
    for b in range(out.size // 256):
        o = b * 110
        d = _h(row, o + 108)
        for s in range(16):
            lo = (np.int32(row[o + 96 + s]) & 15) if s < 8 else (np.int32(row[o + 96 + s - 8]) >> 4)
            hi = (np.int32(row[o + 104 + s % 4]) >> (2 * (s // 4))) & 3
            dl = d * np.float32((lo | (hi << 4)) - 32)
            for e in range(16 * s, 16 * s + 16):
                h = (np.int32(row[o + e % 32]) >> (e // 32)) & 1  # hmask: 0 means the code is offset by -4
                out[b * 256 + e] = dl * np.float32(_crumb(row, o + 32, e) - 4 * (1 - h))


_IQ4 = IQ4_VALUES.astype(np.float32)


@nb.njit(inline="always", cache=True)
def _iq4_32(row, qo, dl, out, oo):
    """32 IQ4 weights from the 16 bytes at row[qo:] (nibbles as Q4_0) into out[oo:], times dl."""
    for j in range(16):
        q = np.int32(row[qo + j])
        out[oo + j] = dl * _IQ4[q & 15]
        out[oo + 16 + j] = dl * _IQ4[q >> 4]


@nb.njit(**_JIT_EXACT)
def _row_iq4_nl(row, out):
    for b in range(out.size // 32):
        _iq4_32(row, b * 18 + 2, _h(row, b * 18), out, b * 32)


_MXFP4 = MXFP4_VALUES.astype(np.float32)


@nb.njit(**_JIT_EXACT)
def _row_mxfp4(row, out):
    for b in range(out.size // 32):
        o = b * 17
        d = E8M0_HALF[row[o]]
        for j in range(16):
            q = np.int32(row[o + 1 + j])
            out[b * 32 + j] = d * _MXFP4[q & 15]
            out[b * 32 + 16 + j] = d * _MXFP4[q >> 4]


@nb.njit(**_JIT_EXACT)
def _row_iq4_xs(row, out):
    for b in range(out.size // 256):
        o = b * 136
        d = _h(row, o)
        sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
        for s in range(8):
            ls = ((np.int32(row[o + 4 + s // 2]) >> (4 * (s % 2))) & 15) | (((sh >> (2 * s)) & 3) << 4)
            _iq4_32(row, o + 8 + 16 * s, d * np.float32(ls - 32), out, b * 256 + 32 * s)


# the i-quant grids as float32 for the row decoders (IQ1: the -1/0/1 values themselves)
_G2XXS, _G2XS, _G2S, _G3XXS, _G3S, _G1S = (t.astype(np.float32) for t in (IQ2XXS_GRID, IQ2XS_GRID, IQ2S_GRID, IQ3XXS_GRID, IQ3S_GRID, IQ1S_GRID))


@nb.njit(inline="always", cache=True)
def _iq_put(grid, idx, signs, db, out, oo):
    """The values of grid entry idx (8 or 4) into out[oo:], times db, value j negated where bit j of signs is set."""
    for j in range(grid.shape[1]):
        v = grid[idx, j]
        out[oo + j] = db * (-v if (signs >> j) & 1 else v)


@nb.njit(inline="always", cache=True)
def _iq1_put(idx, delta, dl, out, oo):
    """The 8 values of IQ1 grid entry idx into out[oo:]: dl * (grid + delta)."""
    for j in range(8):
        out[oo + j] = dl * (_G1S[idx, j] + delta)


@nb.njit(inline="always", cache=True)
def _half_scale(d, ls, mul):
    """d * (0.5 + ls) * mul, the IQ2/IQ3_XXS scale, in gguf's order."""
    return d * (np.float32(0.5) + np.float32(ls)) * np.float32(mul)


@nb.njit(**_JIT_EXACT)
def _row_iq2_xxs(row, out):
    for b in range(out.size // 256):
        o = b * 66
        d = _h(row, o)
        for ib in range(8):
            q = o + 2 + 8 * ib
            a = np.int64(_u32(row, q + 4))
            db = _half_scale(d, a >> 28, 0.25)
            for l in range(4):
                _iq_put(_G2XXS, row[q + l], KSIGNS[(a >> (7 * l)) & 127], db, out, b * 256 + 32 * ib + 8 * l)


@nb.njit(**_JIT_EXACT)
def _row_iq2_xs(row, out):
    for b in range(out.size // 256):
        o = b * 74
        d = _h(row, o)
        for k in range(32):  # groups of 8; a scale per 16 (nibble k // 2 % 2 of scales[k // 4])
            q = np.int32(row[o + 2 + 2 * k]) | (np.int32(row[o + 3 + 2 * k]) << 8)
            db = _half_scale(d, (np.int32(row[o + 66 + k // 4]) >> (4 * (k // 2 % 2))) & 15, 0.25)
            _iq_put(_G2XS, q & 511, KSIGNS[q >> 9], db, out, b * 256 + 8 * k)


@nb.njit(**_JIT_EXACT)
def _row_iq2_s(row, out):
    for b in range(out.size // 256):
        o = b * 82
        d = _h(row, o)
        for k in range(32):
            idx = np.int32(row[o + 2 + k]) | (((np.int32(row[o + 66 + k // 4]) >> (2 * (k % 4))) & 3) << 8)
            db = _half_scale(d, (np.int32(row[o + 74 + k // 4]) >> (4 * (k // 2 % 2))) & 15, 0.25)
            _iq_put(_G2S, idx, row[o + 34 + k], db, out, b * 256 + 8 * k)


@nb.njit(**_JIT_EXACT)
def _row_iq3_xxs(row, out):
    for b in range(out.size // 256):
        o = b * 98
        d = _h(row, o)
        for ib in range(8):
            a = np.int64(_u32(row, o + 66 + 4 * ib))
            db = _half_scale(d, a >> 28, 0.5)
            for l in range(4):  # two grid entries of 4 per sign byte
                s = np.int32(KSIGNS[(a >> (7 * l)) & 127])
                q = o + 2 + 8 * ib + 2 * l
                _iq_put(_G3XXS, row[q], s, db, out, b * 256 + 32 * ib + 8 * l)
                _iq_put(_G3XXS, row[q + 1], s >> 4, db, out, b * 256 + 32 * ib + 8 * l + 4)


@nb.njit(**_JIT_EXACT)
def _row_iq3_s(row, out):
    for b in range(out.size // 256):
        o = b * 110
        d = _h(row, o)
        for ib in range(8):
            ls = (np.int32(row[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15
            db = d * np.float32(1 + 2 * ls)
            qh = np.int32(row[o + 66 + ib])
            for k in range(8):
                idx = np.int32(row[o + 2 + 8 * ib + k]) | (((qh >> k) & 1) << 8)
                s = np.int32(row[o + 74 + 4 * ib + k // 2]) >> (4 * (k % 2))
                _iq_put(_G3S, idx, s, db, out, b * 256 + 32 * ib + 4 * k)


@nb.njit(**_JIT_EXACT)
def _row_iq1_s(row, out):
    for b in range(out.size // 256):
        o = b * 50
        d = _h(row, o)
        for ib in range(8):
            qh = np.int32(row[o + 34 + 2 * ib]) | (np.int32(row[o + 35 + 2 * ib]) << 8)
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = np.float32(-0.125) if qh & 0x8000 else np.float32(0.125)
            for l in range(4):
                idx = np.int32(row[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                _iq1_put(idx, delta, dl, out, b * 256 + 32 * ib + 8 * l)


@nb.njit(**_JIT_EXACT)
def _row_iq1_m(row, out):
    for b in range(out.size // 256):
        o = b * 56
        dh = 0
        for k in range(4):  # d: the top nibble of scale u16 k is bits 4k .. 4k + 3 of the f16
            dh |= (np.int32(row[o + 49 + 2 * k]) >> 4) << (4 * k)
        d = f16_to_f32(np.uint16(dh))
        for k in range(32):  # groups of 8; a scale per 16: 3-bit field j % 4 of u16 j // 4 for j = k // 2
            nib = (np.int32(row[o + 32 + k // 2]) >> (4 * (k % 2))) & 15
            idx = np.int32(row[o + k]) | ((nib & 7) << 8)
            j = k // 2
            sc = np.int32(row[o + 48 + 2 * (j // 4)]) | (np.int32(row[o + 49 + 2 * (j // 4)]) << 8)
            dl = d * np.float32(2 * ((sc >> (3 * (j % 4))) & 7) + 1)
            _iq1_put(idx, np.float32(-0.125) if nib & 8 else np.float32(0.125), dl, out, b * 256 + 8 * k)


@nb.njit(inline="always", cache=True)
def _decode_row(kind, row, out):
    if kind == F32:
        _row_f32(row, out)
    elif kind == F16:
        _row_f16(row, out)
    elif kind == BF16:
        _row_bf16(row, out)
    elif kind == Q4_0:
        _row_q4_0(row, out)
    elif kind == Q4_1:
        _row_q4_1(row, out)
    elif kind == Q5_0:
        _row_q5_0(row, out)
    elif kind == Q5_1:
        _row_q5_1(row, out)
    elif kind == Q8_0:
        _row_q8_0(row, out)
    elif kind == Q4_K:
        _row_q4_k(row, out)
    elif kind == Q5_K:
        _row_q5_k(row, out)
    elif kind == Q6_K:
        _row_q6_k(row, out)
    elif kind == Q2_K:
        _row_q2_k(row, out)
    elif kind == Q3_K:
        _row_q3_k(row, out)
    elif kind == IQ4_NL:
        _row_iq4_nl(row, out)
    elif kind == IQ4_XS:
        _row_iq4_xs(row, out)
    elif kind == IQ3_XXS:
        _row_iq3_xxs(row, out)
    elif kind == IQ3_S:
        _row_iq3_s(row, out)
    elif kind == IQ2_XXS:
        _row_iq2_xxs(row, out)
    elif kind == IQ2_XS:
        _row_iq2_xs(row, out)
    elif kind == IQ2_S:
        _row_iq2_s(row, out)
    elif kind == IQ1_S:
        _row_iq1_s(row, out)
    elif kind == MXFP4:
        _row_mxfp4(row, out)
    elif kind == TQ1_0:
        row_tq1_0(row, out)
    elif kind == TQ2_0:
        row_tq2_0(row, out)
    else:
        _row_iq1_m(row, out)


@nb.njit(inline="always", cache=True)
def _decode_row_simd(kind, row, out):
    """As _decode_row, with the AVX2 block decoders for the block types."""
    if kind == F32:
        _row_f32(row, out)
        return
    if kind == F16:
        _row_f16(row, out)
        return
    if kind == BF16:
        _row_bf16(row, out)
        return
    if kind >= Q2_K:  # no vector decoders for these: get_rows and the BLAS path of non-VNNI hosts only
        _decode_row(kind, row, out)
        return
    a = row.ctypes.data
    o = out.ctypes.data
    n = out.size
    if kind == Q4_0:
        deq_q4_0(a, n // 32, o)
    elif kind == Q4_1:
        deq_q4_1(a, n // 32, o)
    elif kind == Q5_0:
        deq_q5_0(a, n // 32, o)
    elif kind == Q5_1:
        deq_q5_1(a, n // 32, o)
    elif kind == Q8_0:
        deq_q8_0(a, n // 32, o)
    elif kind == Q4_K:
        deq_q4_k(a, n // 256, o)
    elif kind == Q5_K:
        deq_q5_k(a, n // 256, o)
    else:
        deq_q6_k(a, n // 256, o)


# ----------------------------------------------------------------- activation quantization
# Scratch for one token, a uint8 row of _scratch_bytes(n) bytes:
#   [0, 2n)            quantized x: int8 [n] (int16 [n] for Q8_0 weights)
#   [2n, 2n + 4*nb)    xd   float32 [nb]     scale per 32 (x ~= xd * q)
#   [.., + 4*nb)       xs   float32 [nb]     sum of the quantized x per 32 (xd * sum q)
#   [.., + 8*nb)       xs16 float32 [2*nb]   the same per 16
# The sums are of the *quantized* x so that offsets and minimums multiply the
# same x as the integer part: the result is exactly W . x_quantized, whose
# error sum_j w_j e_j is centred (an exact float sum would leave d * sum_j q_j e_j
# with unsigned q, about twice as large).
def _scratch_bytes(n_cols: int) -> int:
    return 2 * n_cols + 16 * (n_cols // 32) + 64


@nb.njit(inline="always", cache=True)
def _quant_x(kind, x, sc):
    """Quantize x [n] into the scratch row sc; returns the kernel addresses (xq, xd, xs, xs16)."""
    n = x.size
    nbk = n // 32
    a = sc.ctypes.data
    xd = a + 2 * n
    if not x.flags.c_contiguous:
        raise ValueError("x must be contiguous")
    if kind == Q8_0:
        quant_x16(x.ctypes.data, nbk, a, xd)
    else:
        quant_x8(x.ctypes.data, nbk, a, xd)
    return a, xd, xd + 4 * nbk, xd + 8 * nbk


# ----------------------------------------------------------------- row dot products
@nb.njit(inline="always", cache=True)
def _dot_float(kind, row, x):
    """F32/F16/BF16 row (uint8 bytes) . float x."""
    y = np.float32(0.0)
    if kind == F32:
        v = row[: x.size * 4].view(np.float32)
        for i in range(x.size):
            y += v[i] * x[i]
    elif kind == F16:
        v = row[: x.size * 2].view(np.uint16)
        for i in range(x.size):
            y += f16_to_f32(v[i]) * x[i]
    else:
        v = row[: x.size * 2].view(np.uint16)
        for i in range(x.size):
            y += bf16_to_f32(v[i]) * x[i]
    return y


@intrinsic
def _put_f32(typingctx, addr, value):  # noqa: ARG001
    """``*(float *)addr = value`` (rounded to float32, as a store into a float32 array)."""

    def codegen(context, builder, sig, args):
        a, v = args
        builder.store(context.cast(builder, v, sig.args[1], types.float32), builder.inttoptr(a, LF32.as_pointer()))
        return context.get_dummy_value()

    return types.void(types.int64, value), codegen


@outline("kvrun_dot_rows", types.void(*([types.int64] * 12)), when=HAVE_AVX2, **_JIT_EXACT)
def _dot_rows(kind, wa, rs, rb, r0, r1, op, os, xq, xd, xs, x16):
    """``*(op + r os) = row r . quantized x`` for r in [r0, r1) of the weight rows at ``wa`` (row stride
    ``rs``, ``rb`` bytes): one loop per type, the kind test outside the loops so each loop is compiled
    on its own.  Compiled once (:mod:`.outline`): every matvec, fused product and int8 matmul calls it."""
    if kind == Q4_0:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q4_0(wa + r * rs, xq, xd, xs, x16, rb // 18))
    elif kind == Q4_1:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q4_1(wa + r * rs, xq, xd, xs, x16, rb // 20))
    elif kind == Q5_0:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q5_0(wa + r * rs, xq, xd, xs, x16, rb // 22))
    elif kind == Q5_1:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q5_1(wa + r * rs, xq, xd, xs, x16, rb // 24))
    elif kind == Q8_0:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q8_0(wa + r * rs, xq, xd, xs, x16, rb // 34))
    elif kind == Q4_K:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q4_k(wa + r * rs, xq, xd, xs, x16, rb // 144))
    elif kind == Q5_K:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q5_k(wa + r * rs, xq, xd, xs, x16, rb // 176))
    elif kind == Q6_K:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q6_k(wa + r * rs, xq, xd, xs, x16, rb // 210))
    elif kind == Q2_K:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q2_k(wa + r * rs, xq, xd, xs, x16, rb // 84))
    elif kind == Q3_K:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_q3_k(wa + r * rs, xq, xd, xs, x16, rb // 110))
    elif kind == IQ4_NL:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq4_nl(wa + r * rs, xq, xd, xs, x16, rb // 18))
    elif kind == IQ4_XS:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq4_xs(wa + r * rs, xq, xd, xs, x16, rb // 136))
    elif kind == IQ3_XXS:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq3_xxs(wa + r * rs, xq, xd, xs, x16, rb // 98))
    elif kind == IQ3_S:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq3_s(wa + r * rs, xq, xd, xs, x16, rb // 110))
    elif kind == IQ2_XXS:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq2_xxs(wa + r * rs, xq, xd, xs, x16, rb // 66))
    elif kind == IQ2_XS:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq2_xs(wa + r * rs, xq, xd, xs, x16, rb // 74))
    elif kind == IQ2_S:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq2_s(wa + r * rs, xq, xd, xs, x16, rb // 82))
    elif kind == IQ1_S:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq1_s(wa + r * rs, xq, xd, xs, x16, rb // 50))
    elif kind == MXFP4:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_mxfp4(wa + r * rs, xq, xd, xs, x16, rb // 17))
    elif kind == TQ1_0:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_tq1_0(wa + r * rs, xq, xd, xs, x16, rb // 54))
    elif kind == TQ2_0:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_tq2_0(wa + r * rs, xq, xd, xs, x16, rb // 66))
    else:
        for r in range(r0, r1):
            _put_f32(op + r * os, dot_iq1_m(wa + r * rs, xq, xd, xs, x16, rb // 56))


@outline("kvrun_dot_rows_tok", types.void(*([types.int64] * 15)), when=HAVE_AVX2, **_JIT_EXACT)
def _dot_rows_tok(kind, nt, wa, rs, rb, r0, r1, op, os, ts, xq, xd, xs, x16, ss):
    """As :func:`_dot_rows` for ``nt`` (2 or 4) tokens at once (``dot2_*``/``dot4_*``): ``*(op + t ts + r os) =
    row r . token t's quantized x``, token t's scratch ``t ss`` bytes after token 0's.  The kinds of
    :data:`_TOKENS_AT_ONCE` only."""
    if nt == 4:
        if kind == Q4_0:
            for r in range(r0, r1):
                dot4_q4_0(wa + r * rs, xq, xd, xs, x16, rb // 18, ss, op + r * os, ts)
        elif kind == Q4_1:
            for r in range(r0, r1):
                dot4_q4_1(wa + r * rs, xq, xd, xs, x16, rb // 20, ss, op + r * os, ts)
        elif kind == Q5_0:
            for r in range(r0, r1):
                dot4_q5_0(wa + r * rs, xq, xd, xs, x16, rb // 22, ss, op + r * os, ts)
        elif kind == Q5_1:
            for r in range(r0, r1):
                dot4_q5_1(wa + r * rs, xq, xd, xs, x16, rb // 24, ss, op + r * os, ts)
        elif kind == Q8_0:
            for r in range(r0, r1):
                dot4_q8_0(wa + r * rs, xq, xd, xs, x16, rb // 34, ss, op + r * os, ts)
        elif kind == Q4_K:
            for r in range(r0, r1):
                dot4_q4_k(wa + r * rs, xq, xd, xs, x16, rb // 144, ss, op + r * os, ts)
        elif kind == Q5_K:
            for r in range(r0, r1):
                dot4_q5_k(wa + r * rs, xq, xd, xs, x16, rb // 176, ss, op + r * os, ts)
        else:
            for r in range(r0, r1):
                dot4_q6_k(wa + r * rs, xq, xd, xs, x16, rb // 210, ss, op + r * os, ts)
    else:
        if kind == Q4_0:
            for r in range(r0, r1):
                dot2_q4_0(wa + r * rs, xq, xd, xs, x16, rb // 18, ss, op + r * os, ts)
        elif kind == Q4_1:
            for r in range(r0, r1):
                dot2_q4_1(wa + r * rs, xq, xd, xs, x16, rb // 20, ss, op + r * os, ts)
        elif kind == Q5_0:
            for r in range(r0, r1):
                dot2_q5_0(wa + r * rs, xq, xd, xs, x16, rb // 22, ss, op + r * os, ts)
        elif kind == Q5_1:
            for r in range(r0, r1):
                dot2_q5_1(wa + r * rs, xq, xd, xs, x16, rb // 24, ss, op + r * os, ts)
        elif kind == Q8_0:
            for r in range(r0, r1):
                dot2_q8_0(wa + r * rs, xq, xd, xs, x16, rb // 34, ss, op + r * os, ts)
        elif kind == Q4_K:
            for r in range(r0, r1):
                dot2_q4_k(wa + r * rs, xq, xd, xs, x16, rb // 144, ss, op + r * os, ts)
        elif kind == Q5_K:
            for r in range(r0, r1):
                dot2_q5_k(wa + r * rs, xq, xd, xs, x16, rb // 176, ss, op + r * os, ts)
        else:
            for r in range(r0, r1):
                dot2_q6_k(wa + r * rs, xq, xd, xs, x16, rb // 210, ss, op + r * os, ts)


@nb.njit(**_JIT_EXACT)
def _rows_q(kind, w, r0, r1, out, xq, xd, xs, x16):
    """out[r] = row r . quantized x for r in [r0, r1) (:func:`_dot_rows`)."""
    _dot_rows(kind, w.ctypes.data, w.strides[0], w.shape[1], r0, r1, out.ctypes.data, out.strides[0], xq, xd, xs, x16)


@nb.njit(**_JIT)
def _rows_f(kind, w, r0, r1, out, x):
    for r in range(r0, r1):
        out[r] = _dot_float(kind, w[r], x)


@nb.njit(inline="always", cache=True)
def _check(kind, w, n_cols, out_n):
    if w.strides[1] != 1:
        raise ValueError("weight rows must be contiguous bytes")
    nc = w.shape[1] // _BLOCK_BYTES[kind] * _BLOCK_ELEMS[kind]
    if nc != n_cols:
        raise ValueError("x length does not match the weight's row length")
    if out_n != w.shape[0]:
        raise ValueError("out length does not match the weight's row count")


# ----------------------------------------------------------------- matvec kernels
#: the first row, passed where a bare ``0`` would do (here, and in qattention's ``_pass``): Numba types a bare constant
#: argument ``Literal[int](0)`` and compiles the callee (``_rows_q``, ``_rows_f``, ``_half_pass``) once more for it
#: beside the callers' int64 rows, ~1.3 s of a first run; a numpy scalar is typed plain int64
ROW0 = np.int64(0)


@nb.njit(**_JIT)
def _mv_1(kind, w, x, out, sc):
    """One thread: out[n_rows] = W @ x."""
    _check(kind, w, x.size, out.size)
    if kind <= BF16:
        _rows_f(kind, w, ROW0, w.shape[0], out, x)
    else:
        xq, xd, xs, x16 = _quant_x(kind, x, sc)
        _rows_q(kind, w, ROW0, w.shape[0], out, xq, xd, xs, x16)


@nb.njit(parallel=prange_only(), **_JIT)
def _mv_n(kind, w, x, out, sc, nt):
    """nt threads (nb.get_num_threads(), passed in: reading it here would stop
    the caching), contiguous row ranges: out[n_rows] = W @ x."""
    _check(kind, w, x.size, out.size)
    n = w.shape[0]
    chunk = (n + nt - 1) // nt
    if kind <= BF16:
        for t in nb.prange(nt):
            _rows_f(kind, w, t * chunk, min(n, (t + 1) * chunk), out, x)
    else:
        xq, xd, xs, x16 = _quant_x(kind, x, sc)
        for t in nb.prange(nt):
            _row_range(kind, w, out, t, nt, xq, xd, xs, x16)


def _mv_generic(w, x, out, tmp):
    """Fallback without AVX2: decode each row into a per-thread float buffer, then dot.  tmp: [n_threads, n_cols].
    A template: :func:`_for_kind` makes a kernel of it per quant type."""
    _check(_KIND, w, x.size, out.size)
    n_rows = w.shape[0]
    n_thr = tmp.shape[0]
    chunk = (n_rows + n_thr - 1) // n_thr
    for t in nb.prange(n_thr):
        buf = tmp[t]
        for r in range(t * chunk, min(n_rows, (t + 1) * chunk)):
            _decode_row(_KIND, w[r], buf)
            y = np.float32(0.0)
            for i in range(buf.size):
                y += buf[i] * x[i]
            out[r] = y


# ----------------------------------------------------------------- matmul kernels
@nb.njit(inline="always", cache=True)
def _mm_rows(kind, w, x, out, sc, r0, r1):
    """out[t, r] for r in [r0, r1), every token t: chunks of 16 rows (a few KB,
    they stay in L1) are dotted with each token in turn."""
    n = x.shape[1]
    nbk = n // 32
    ss = sc.strides[0]
    base = sc.ctypes.data
    T = x.shape[0]
    multi = _TOKENS_AT_ONCE[kind]
    for c in range(r0, r1, 16):
        ce = min(c + 16, r1)
        t = 0
        while multi and t < T - 1:  # 4 tokens at once, then 2: each block decoded once for all of them
            k = 4 if t + 4 <= T else 2
            xq = base + t * ss
            xd = xq + 2 * n
            _dot_rows_tok(kind, k, w.ctypes.data, w.strides[0], w.shape[1], c, ce, out[t].ctypes.data, out.strides[1],
                          out.strides[0], xq, xd, xd + 4 * nbk, xd + 8 * nbk, ss)  # fmt: skip
            t += k
        for t in range(t, T):
            xq = base + t * ss
            xd = xq + 2 * n
            _rows_q(kind, w, c, ce, out[t], xq, xd, xd + 4 * nbk, xd + 8 * nbk)


@nb.njit(**_JIT)
def _mm_int_1(kind, w, x, out, sc):
    """One thread, quantized x: out[n_tok, n_rows] = x @ W.T.  sc: [n_tok, scratch bytes]."""
    _check(kind, w, x.shape[1], out.shape[1])
    for t in range(x.shape[0]):
        _quant_x(kind, x[t], sc[t])
    _mm_rows(kind, w, x, out, sc, ROW0, w.shape[0])


@nb.njit(parallel=prange_only(), **_JIT)
def _mm_int_n(kind, w, x, out, sc, nt):
    """nt threads (rows split), quantized x: out[n_tok, n_rows] = x @ W.T."""
    _check(kind, w, x.shape[1], out.shape[1])
    for t in range(x.shape[0]):
        _quant_x(kind, x[t], sc[t])
    n = w.shape[0]
    chunk = (n + nt - 1) // nt
    for t in nb.prange(nt):
        _mm_rows(kind, w, x, out, sc, t * chunk, min(n, (t + 1) * chunk))


# ----------------------------------------------------------------- kernels made per quant type
# The row decoders of all ~25 types compiled into one kernel took a first run ~13 s (SmolLM2's embedding
# lookup alone, which needs one of them).  These kernels are templates: the quant type is the global
# _KIND, a constant that Numba's branch pruning resolves through the inlined _decode_row, so each type's
# kernel compiles that type's decoder alone, when a model first needs it.
_KIND = -1
_per_kind: dict = {}


def _for_kind(template, kind: int, parallel: bool = False):
    """``template`` compiled for quant type ``kind`` (made once; Numba caches each on disk by its name)."""
    k = _per_kind.get((template, kind))
    if k is None:
        opts = dict(_JIT, parallel=prange_only()) if parallel else _JIT_EXACT
        k = _per_kind[template, kind] = nb.njit(**opts)(variant(template, f"{template.__name__}_{kind}", _KIND=kind))
    return k


def _decode_rows(w, r0, tile):
    """tile[i] = row r0+i of w, decoded.   tile: [n, n_cols] float32, C-contiguous.  A template (:func:`_for_kind`).

    Serial on purpose: BLAS runs its own threads right after, and two thread
    pools taking turns on two vCPUs spin against each other.
    """
    for i in range(tile.shape[0]):
        _decode_row(_KIND, w[r0 + i], tile[i])


def _decode_rows_simd(w, r0, tile):
    """As _decode_rows with the AVX2 block decoders (bit-identical results).  A template (:func:`_for_kind`)."""
    for i in range(tile.shape[0]):
        _decode_row_simd(_KIND, w[r0 + i], tile[i])


@nb.njit(inline="always", cache=True)
def _check_rows(kind, w, ids, out):
    if w.strides[1] != 1 or out.strides[1] != 4:
        raise ValueError("weight rows and out rows must be contiguous")
    if ids.size != out.shape[0]:
        raise ValueError("out must have one row per id")
    _check(kind, w, out.shape[1], w.shape[0])
    for i in range(ids.size):
        if ids[i] < 0 or ids[i] >= w.shape[0]:
            raise IndexError("row id out of range")


def _gather_rows(w, ids, out):
    """out[i] = row ids[i] of w, decoded.  A template (:func:`_for_kind`)."""
    _check_rows(_KIND, w, ids, out)
    for i in range(ids.size):
        _decode_row(_KIND, w[ids[i]], out[i])


def _gather_rows_simd(w, ids, out):
    """As _gather_rows with the AVX2 block decoders.  A template (:func:`_for_kind`)."""
    _check_rows(_KIND, w, ids, out)
    for i in range(ids.size):
        _decode_row_simd(_KIND, w[ids[i]], out[i])


# ----------------------------------------------------------------- scratch
class _Scratch(threading.local):
    """Buffers reused across calls, one set per Python thread (the kernels
    release the GIL, so two threads must not share them); sized on first use,
    grown when needed."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, int], np.ndarray] = {}
        self.xsc: dict[int, np.ndarray] = {}  # n_cols -> matvec activation scratch
        self.flat: dict[str, np.ndarray] = {}  # name -> float32 buffer of any [rows, cols] (see ``grown``)

    def get(self, name: str, rows: int, cols: int, dtype=np.float32) -> np.ndarray:
        a = self.bufs.get((name, cols))
        if a is None or a.shape[0] < rows:
            a = np.zeros((max(rows, 1), cols), dtype)
            self.bufs[(name, cols)] = a
        return a[:rows]

    def grown(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A [rows, cols] float32 view of the flat buffer ``name``, whatever the width: for
        shapes that change every call (prefill attention's scores grow with the cache).  Grown
        with 25% headroom and held at the largest size seen, so a long prefill does not fault
        in fresh pages every chunk."""
        buf = self.flat.get(name)
        if buf is None or buf.size < rows * cols:
            buf = self.flat[name] = np.empty(rows * cols + rows * cols // 4, np.float32)
        return buf[: rows * cols].reshape(rows, cols)

    def x(self, n_cols: int) -> np.ndarray:
        sc = self.xsc.get(n_cols)
        if sc is None:
            sc = self.xsc[n_cols] = np.zeros(_scratch_bytes(n_cols), np.uint8)
        return sc


_scratch = _Scratch()
_n_threads = num_threads
_EMPTY = np.zeros(64, np.uint8)


@nb.njit(inline="always", **_JIT)
def _row_range(kind, w, out, t, nt, xq, xd, xs, x16):
    """Thread t's rows of nt contiguous ranges of w (as :func:`_mv_n` cuts them)."""
    n = w.shape[0]
    chunk = (n + nt - 1) // nt
    _rows_q(kind, w, t * chunk, min(n, (t + 1) * chunk), out, xq, xd, xs, x16)


# ----------------------------------------------------------------- public API
def readonly(w: np.ndarray) -> np.ndarray:
    """``w`` as the kernels take weights (and other inputs): read-only, as a GGUF file's memory map is.  Writability is part of
    Numba's array type, so an array made in memory (a test's, a converted tensor) would otherwise compile a
    second copy of every product kernel (10-30 s of a first run: the suite compiled most of them twice)."""
    if w.flags.writeable:
        w = w.view()
        w.flags.writeable = False
    return w


def matvec(w: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    """out = W @ x (decode, one token).

    w : uint8 ``[n_rows, row_bytes]``, the raw GGUF blocks (a zero-copy view of
        the memory map is fine: rows may be strided, bytes within a row contiguous)
    qtype : ggml type id, one of :data:`SUPPORTED` (float, block, K-quant, i-quant types, MXFP4, TQ1_0, TQ2_0)
    x : float32 ``[n_cols]``, contiguous
    out : float32 ``[n_rows]``, written in place

    Block types quantize ``x`` to int8 per 32 (int16 for Q8_0) into a reused
    scratch row; the result is W @ x_quantized (see the module docstring for
    the error).  Matrices of at least :data:`PAR_MIN_BYTES` run on all Numba
    threads, smaller ones on the calling thread.  Allocates nothing after the
    first call for a given ``n_cols``.

    Raises ValueError for an unsupported type or mismatched shapes.
    """
    t = _TYPES.get(qtype)
    kind = t[0] if t is not None else _type(qtype)[0]
    w = readonly(w)
    if kind <= BF16:
        sc = _EMPTY
    elif _USE_SIMD:
        sc = _scratch.xsc.get(x.shape[0])
        if sc is None:
            sc = _scratch.x(x.shape[0])
    else:
        _for_kind(_mv_generic, kind, parallel=True)(w, x, out, _scratch.get("mv_tmp", _n_threads(), x.size))
        return
    if w.nbytes >= PAR_MIN_BYTES and (nt := _n_threads()) > 1:
        _mv_n(kind, w, x, out, sc, nt)
    else:
        _mv_1(kind, w, x, out, sc)


def matmul(w: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    """out = x @ W.T (prefill, many tokens).

    w : uint8 ``[n_rows, row_bytes]`` raw GGUF blocks
    qtype : ggml type id
    x : float32 ``[n_tok, n_cols]``
    out : float32 ``[n_tok, n_rows]``, written in place

    Fewer than :data:`BLAS_MIN_TOKENS` tokens (:data:`GEMM_MIN_TOKENS` on a VNNI host): the quantized-activation integer
    kernel (as :func:`matvec`, each weight row reused across the tokens).
    Otherwise, block types on a host with VNNI (:data:`HAVE_VNNI`), the ternary TQ1_0/TQ2_0 excepted: the
    int8 GEMM of ``ops/cpu/qgemm.py`` (x quantized per 32 as for matvec, ~4x the
    BLAS path).  Otherwise rows of W are decoded :data:`TILE_ROWS` at a time into a reused
    float32 buffer and multiplied with numpy's BLAS (float32 throughout; BLAS
    uses its own thread pool, which ``--threads`` sizes too: ``ops/cpu/blas.py``).
    """
    kind = _type(qtype)[0]
    n_tok, n_cols = x.shape
    n_rows = w.shape[0]
    if out.shape != (n_tok, n_rows):
        raise ValueError(f"out has shape {out.shape}, expected {(n_tok, n_rows)}")
    if n_tok == 1:
        matvec(w, qtype, x[0], out[0])
        return
    w = readonly(w)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    if kind > BF16 and _USE_SIMD and n_tok < (GEMM_MIN_TOKENS if _USE_VNNI else BLAS_MIN_TOKENS):
        sc = _scratch.get("xm", n_tok, _scratch_bytes(n_cols), np.uint8)
        if w.nbytes * n_tok >= PAR_MIN_BYTES and (nt := _n_threads()) > 1:
            _mm_int_n(kind, w, x, out, sc, nt)
        else:
            _mm_int_1(kind, w, x, out, sc)
        return
    if kind > BF16 and _USE_VNNI and kind not in (TQ1_0, TQ2_0):  # (no GEMM for the ternary types)
        from . import qgemm  # here, not at the top: qgemm builds on this module

        qgemm.matmul(w, kind, x, out)
        return
    # a prefill holds BLAS at one thread beside the VNNI GEMM (blas.one_thread_beside_the_gemm): products that still
    # run on it (float weights) get the count --threads chose (not Numba's now: the tuner's switches would round them otherwise)
    nt, held = chosen_blas_threads(), blas_threads()
    if held == 1 and nt > 1:
        resize_blas_threads(nt)
    try:
        if kind == F32 and w.shape[1] == 4 * n_cols and w.strides[1] == 1 and w.strides[0] % 4 == 0:
            np.matmul(x, w.view(np.float32).T, out=out)  # already float32: no decoding
            return
        tile = _scratch.get("tile", TILE_ROWS, n_cols)
        decode = _for_kind(_decode_rows_simd if _USE_SIMD else _decode_rows, kind)
        for r0 in range(0, n_rows, TILE_ROWS):
            n = min(TILE_ROWS, n_rows - r0)
            decode(w, r0, tile[:n])
            np.matmul(x, tile[:n].T, out=out[:, r0 : r0 + n])
    finally:
        if held == 1 and nt > 1:
            resize_blas_threads(1)


def get_rows(w: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] of W, decoded to float32 (embedding lookup).

    w : uint8 ``[n_rows, row_bytes]`` raw GGUF blocks
    ids : integer ``[n]``
    out : float32 ``[n, n_cols]`` (rows contiguous); equal bit for bit to
        ``gguf.quants.dequantize`` of those rows

    Raises ValueError for an unsupported type or shapes, IndexError for an id
    outside ``[0, n_rows)``.
    """
    kind = _type(qtype)[0]
    _for_kind(_gather_rows_simd if _USE_SIMD else _gather_rows, kind)(readonly(w), np.asarray(ids, np.int64).reshape(-1), out)


__all__ = ["matvec", "matmul", "get_rows", "readonly", "kernel_kind", "SUPPORTED", "HAVE_AVX2", "HAVE_VNNI", "PAR_MIN_BYTES", "BLAS_MIN_TOKENS", "GEMM_MIN_TOKENS", "TILE_ROWS"]
