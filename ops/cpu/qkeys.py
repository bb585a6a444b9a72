"""Decode's key scores on a quantized pool as integer dot products (VNNI, Numba, CPU).

A 2- or 4-bit key row holds, per group of ``G`` values, codes ``c`` with a scale
``s`` and a zero point ``z``: ``k = s (c - z)`` (``kvrun.cache.quant``).  Its
score with a query ``q`` is ``sum_g s_g (q_g . c_g - z_g sum(q_g))``.  With the
query quantized to int8 per group, ``q_g ~ dq_g qi_g`` (as llama.cpp meets a
quantized K cache with Q8 activations), the inner product is an integer one:

    score = sum_g s_g (dq_g (qi_g . c_g) - z_g dq_g sum(qi_g))

and ``qi_g . c_g`` is what ``vpdpbusd`` computes, 4 u8 x s8 products into each
int32 lane, 64 a zmm instruction.  So the codes are never turned into floats:
a 64-byte load of codes (two SmolLM2 4-bit key rows) is split into its bit
planes with a shift and a mask each, and every plane meets the matching query
bytes of each query head of the GQA group.  The float tile path
(``qattention``) decodes every value to a float, stores it, reloads it and
FMAs it once per head.

Layout of the work: a *block* is ``L`` groups (``L`` int32 lanes: 16 with
AVX-512 VNNI, 8 with AVX-VNNI or AVX2), ``nb = G w / 8`` bytes each, contiguous in the
pool (rows are contiguous, a row's groups too), read as ``nb / 4`` loads of
``4 L`` bytes.  Byte ``i`` of a group holds values ``i, i + nb, ...`` at bit
offsets ``0, w, ...`` (group-planar), so plane ``m`` of a load meets query
bytes ``m nb .. m nb + nb`` of each of the load's groups: those are laid out
once per decode step (:func:`prep_queries`) as one ``4 L``-byte vector per
(load, plane).  After the ``vpdpbusd``\\ s a group's sum is spread over
``nb / 4`` lanes of one load's accumulator; a transpose-add tree
(:func:`_tree_plan`) turns the block's ``nb / 4`` accumulators into one
vector of its ``L`` group sums, which meet the scales (a gather from the
pool's table), zero points and query scales in float.  Rows are then the
sums of their ``D / G`` groups.

Error: the query's int8 rounding, ~0.3% of a score's spread per group of 64 (as
llama.cpp's); the keys' own 4-bit rounding is ~10%.  Exact otherwise: the
integer sums are exact, and every row goes through the same vector arithmetic
(a range's last rows from a padded copy of a block).

On an AVX2 host without VNNI each ``vpdpbusd`` is ``vpmaddubsw`` then ``vpmaddwd`` (as llama.cpp's AVX2
dots): the same integers, since a pair of code x query products is at most 15 x 127 x 2, far from the
int16 saturation.  Widths 3 and 8, and hosts without AVX2, use the float tile path.  The
intrinsic lives in this file because Numba's cache is invalidated per
defining file; its IR helpers are qmatmul's (clear Numba's cache after
changing those).
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .arraycopy import copy_range
from .outline import outline
from .parallel import EXACT_JIT
from .qgemm import LANES
from .qmatmul import HAVE_AVX2, HAVE_VNNI, LF32, LI8, LI16, LI32, V, _cvec, _G, _i64, _switch_pairs

L = LANES
#: the host has the kernel's integer dots: VNNI's ``vpdpbusd``, or AVX2's two-instruction form of it
HAVE_INT_KEYS = HAVE_VNNI or HAVE_AVX2
#: the default of ``attend_decode_q``'s ``int_keys`` (and of a compressed cache's): on where the
#: host has the kernel; ``KVRUN_INT_KEYS=0`` turns it off (to compare with the float tiles, or a GPU)
INT_KEYS = HAVE_INT_KEYS and os.environ.get("KVRUN_INT_KEYS", "1") != "0"
#: (width, group) pairs with a kernel: 2 and 4 bits, a group's bytes within one load
PAIRS = tuple((w, G) for w in (2, 4) for G in (32, 64, 128) if G * w // 8 <= 4 * L)
#: groups a call of the vector kernel scores at most before the rows are summed (its float scratch)
CHUNK_GROUPS = 256


def _tree_plan(W: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """The transpose-add tree over ``W`` int32 vectors of ``L`` lanes, each holding ``L / W`` groups
    of ``W`` adjacent lanes (vector ``v`` holds groups ``v L/W ..``): per level, the two shuffle masks
    whose sum adds lane pairs ``u`` apart within each vector and interleaves two vectors; and the
    final permutation that puts the one vector left in group order.

    Checked here by following which (vector, lane) sources each lane sums: every lane of the
    result must hold exactly the ``W`` lanes of one group."""
    P = L // W
    vecs = [[frozenset({(v, i)}) for i in range(L)] for v in range(W)]
    levels = []
    u = 1
    while len(vecs) > 1:
        even, odd = [], []
        for blk in range(L // (2 * u)):
            for src in (0, L):  # first u lanes from the first vector, next u from the second
                even += [src + blk * 2 * u + t for t in range(u)]
                odd += [src + blk * 2 * u + u + t for t in range(u)]
        vecs = [[(x + y)[even[j]] | (x + y)[odd[j]] for j in range(L)] for x, y in zip(vecs[0::2], vecs[1::2])]
        levels.append((even, odd))
        u *= 2
    perm = [-1] * L
    for lane, src in enumerate(vecs[0]):
        groups = {v * P + i // W for v, i in src}
        assert len(src) == W and len(groups) == 1, "the tree must sum each group's lanes"
        perm[groups.pop()] = lane
    assert sorted(perm) == list(range(L))
    return levels, perm


_SIG = types.void(*([types.int64] * 5 + [types.float32] + [types.int64] * 8))


@intrinsic
def _scores_ir(typingctx, w, G, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa):  # noqa: ARG001
    """Group scores of ``nblk`` blocks of ``L`` groups: ``gs[h hs + k] = s_k (dq_k isum_hk - z_k qsd_k)``.

    Arguments (int64 unless said): w, G (an IR switch over :data:`PAIRS`), codes of the first
    group, their meta ((scale code, zero code) per group), the scale table (float*), zs (float32:
    zero code -> zero point), qv (int8 [gqa][nph phases][8/w planes][4L]: the query bytes each
XX
    output), hs (its head stride, floats), nblk, gqa.  Emits nothing on a host without the integer
    dots (never called there: :func:`key_kernel_ok`).
    """

    def codegen(context, builder, sig, args):
        b = builder
        if not HAVE_INT_KEYS:
            return context.get_dummy_value()
        w_, G_, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa = args
        _switch_pairs(b, w_, G_, PAIRS, "keys", lambda w, G: _emit_blocks(_G(b), w, G, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa))
        return context.get_dummy_value()

    return _SIG, codegen


def _emit_blocks(g: _G, w: int, G: int, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa) -> None:
    """IR: the block loop of :func:`_scores_ir` for one (width, group)."""
    b = g.b
    nb_, planes = G * w // 8, 8 // w
    NL = nb_ // 4  # loads a block; also the lanes of one group in a load's accumulator
    VB, VI, VF = V(LI8, 4 * L), V(LI32, L), V(LF32, L)
    fp = LF32.as_pointer()
    cpp, mpp, qvp = g.addr(cp), g.addr(mp), g.addr(qv)
    lpp, qfp, gsp = b.inttoptr(lp, fp), b.inttoptr(qf, fp), b.inttoptr(gs, fp)
    zero = ir.Constant(VI, [ir.Constant(LI32, 0)] * L)
    ones16 = _cvec(LI16, 2 * L, 1)

    def dot(acc: ir.Value, codes: ir.Value, qb: ir.Value) -> ir.Value:
        """acc + the sums of each 4 u8 code x s8 query products, per int32 lane."""
        if HAVE_VNNI:
            return g.call(f"llvm.x86.avx512.vpdpbusd.{32 * L}", VI, [acc, codes, qb])
        return b.add(acc, g.maddwd(g.maddubs(codes, qb), ones16))  # (AVX2, L = 8)

    levels, perm = _tree_plan(NL)
    masks = [(ir.Constant(V(LI32, L), e), ir.Constant(V(LI32, L), o)) for e, o in levels]
    zsv = g.splat(zs, L)
    qoff = [[b.mul(b.add(b.mul(b.urem(_i64(ld), nph), _i64(planes)), _i64(m)), _i64(4 * L)) for m in range(planes)] for ld in range(NL)]

    def fvec(p, idx):
        return b.load(b.bitcast(b.gep(p, [idx]), VF.as_pointer()), align=4)

    with cgutils.for_range(b, nblk) as bl:
        k = bl.index
        base = b.mul(k, _i64(L * nb_))
        # the block's codes, split into bit planes once for every head
        u = []
        for ld in range(NL):
            x = g.load(cpp, b.add(base, _i64(4 * L * ld)), VB)
            u.append([g.and_(g.shr(x, w * m), (1 << w) - 1) for m in range(planes)])
        # per group: scale = table[scale code] (a gather), zero point = zero code * zs
        mv = g.load(mpp, b.mul(k, _i64(2 * L)), V(LI8, 2 * L))
        sc = b.shuffle_vector(mv, mv, ir.Constant(V(LI32, L), [2 * i for i in range(L)]))
        zc = b.shuffle_vector(mv, mv, ir.Constant(V(LI32, L), [2 * i + 1 for i in range(L)]))
        s = ir.Constant(VF, ir.Undefined)
        for i in range(L):
            code = b.zext(b.extract_element(sc, ir.Constant(LI32, i)), LI32)
            s = b.insert_element(s, b.load(b.gep(lpp, [code])), ir.Constant(LI32, i))
        z = b.fmul(b.uitofp(zc, VF), zsv)
        with cgutils.for_range(b, gqa) as hl:
            h = hl.index
            qh = b.mul(h, qs)
            acc = []
            for ld in range(NL):
                a = zero
                for m in range(planes):
                    qvec = g.load(qvp, b.add(qh, qoff[ld][m]), VB)
                    a = dot(a, u[ld][m], qvec)
                acc.append(a)
            for e, o in masks:
                acc = [b.add(b.shuffle_vector(x, y, e), b.shuffle_vector(x, y, o)) for x, y in zip(acc[0::2], acc[1::2])]
            isum = acc[0]
            if perm != list(range(L)):
                isum = b.shuffle_vector(isum, isum, ir.Constant(V(LI32, L), perm))
            fh = b.mul(h, _i64(2 * L))
            dq, qsd = fvec(qfp, fh), fvec(qfp, b.add(fh, _i64(L)))
            score = b.fmul(s, b.fsub(b.fmul(dq, b.sitofp(isum, VF)), b.fmul(z, qsd)))
            b.store(score, b.bitcast(b.gep(gsp, [b.add(b.mul(h, hs), b.mul(k, _i64(L)))]), VF.as_pointer()), align=4)


@nb.njit(inline="always", **EXACT_JIT)
def key_kernel_ok(w: int, G: int, D: int) -> bool:
    """Whether the integer kernel scores keys of this (width, group, head size) on this host."""
    if not HAVE_INT_KEYS or (w != 2 and w != 4) or (G != 32 and G != 64 and G != 128) or D % G != 0:
        return False
    ngr = D // G
    return G * w // 8 <= 4 * L and ngr <= L and L % ngr == 0


@nb.njit(**EXACT_JIT)
def prep_queries(q: np.ndarray, w: int, G: int, qv: np.ndarray, qf: np.ndarray) -> None:
    """Queries quantized to int8 per group of G and laid out for :func:`_scores_ir`.

    q: [n, D] float32; qv: [n, >= G L] int8 (the (phase, plane) vectors); qf: [n, 2 L] float32
    (dq and dq sum(qi) of each lane's group).  ``dq = max|q_g| / 127``, ``qi = rint(q / dq)``.
    """
    n, D = q.shape
    ngr = D // G
    nb_ = G * w // 8
    planes = 8 // w
    P = 4 * L // nb_  # groups a load
    qi = np.empty(D, np.int8)
    qd = np.empty((ngr, 2), np.float32)  # per group: dq, dq sum(qi)
    for h in range(n):
        for gp in range(ngr):
            seg = q[h, gp * G : (gp + 1) * G]
            amax = np.float32(0.0)
            for i in range(G):
                amax = max(amax, abs(seg[i]))
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            tot = 0
            for i in range(G):
                c = min(max(np.int32(np.rint(seg[i] * inv)), -127), 127)
                qi[gp * G + i] = c
                tot += c
            dq = amax / np.float32(127.0)
            qd[gp, 0] = dq
            qd[gp, 1] = dq * np.float32(tot)
        for k in range(L):  # lane k of a block is the block's group k: group k % ngr of its row
            qf[h, k] = qd[k % ngr, 0]
            qf[h, L + k] = qd[k % ngr, 1]
        for ph in range(_phases(w, G, D)):
            for p in range(P):
                gp = (ph * P + p) % ngr
                for m in range(planes):
                    o = (ph * planes + m) * 4 * L + p * nb_
                    copy_range(qv[h], o, qi, gp * G + m * nb_, nb_)


@nb.njit(inline="always", **EXACT_JIT)
def _phases(w: int, G: int, D: int) -> int:
    """Distinct query layouts among a block's loads: a load holds ``4L / nb`` groups, and the loads of a
    row (or of the rows it holds) meet its ``D / G`` groups in turn."""
    return max(1, (D // G) * (G * w // 8) // (4 * L))


@nb.njit(inline="always", **EXACT_JIT)
def _tree_sum(x: np.ndarray, o: int, n: int) -> float:
    """``x[o] + ... + x[o + n - 1]`` as a pairwise tree (n = 1, 2, 4, 8 or 16)."""
    if n == 1:
        return x[o]
    if n == 2:
        return x[o] + x[o + 1]
    a = (x[o] + x[o + 1]) + (x[o + 2] + x[o + 3])
    if n == 4:
        return a
    a = a + ((x[o + 4] + x[o + 5]) + (x[o + 6] + x[o + 7]))
    if n == 8:
        return a
    c = ((x[o + 8] + x[o + 9]) + (x[o + 10] + x[o + 11])) + ((x[o + 12] + x[o + 13]) + (x[o + 14] + x[o + 15]))
    return a + c


@outline("kvrun_key_blocks", _SIG, **EXACT_JIT)
def _key_blocks(w, G, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa):
    """``_scores_ir`` compiled once (:mod:`.outline`), with the flags of ``key_scores``, its caller."""
    _scores_ir(w, G, cp, mp, lp, zs, qv, qs, nph, qf, gs, hs, nblk, gqa)


@nb.njit(**EXACT_JIT)
def key_scores(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, w: int, G: int, r0: int, n: int,
               qv: np.ndarray, qf: np.ndarray, gs: np.ndarray, s: np.ndarray, j: int) -> None:  # fmt: skip
    """``s[hh, j + r] = q_hh . key(row r0 + r)`` for ``r < n`` and the GQA group's heads ``hh``.

    codes: [C, D w/8] uint8 and meta: [C, D/G, 2] uint8 of one KV head (rows contiguous);
    lut: [256] float32; qv, qf: the group's rows of :func:`prep_queries`; gs: [>= gqa,
    CHUNK_GROUPS] float32 scratch; s: [gqa, N] float32 scores.  Blocks of ``L`` groups go through
    the vector kernel in place; a range's last rows (less than a block) through it from a padded copy.
    """
    gqa = qv.shape[0]
    D = codes.shape[1] * 8 // w
    ngr = D // G
    RB = L // ngr  # rows a block
    CH = (CHUNK_GROUPS // ngr) // RB * RB  # rows a chunk
    R = codes.shape[1]
    zs = np.float32((1 << w) - 1) / np.float32(255.0)
    pad_c = np.zeros(RB * R, np.uint8)  # a range's last rows, padded to a whole block
    pad_m = np.zeros(2 * L, np.uint8)
    for c0 in range(0, n, CH):
        m = min(CH, n - c0)
        nblk = m // RB
        r = r0 + c0
        if nblk > 0:
            _key_blocks(w, G, codes.ctypes.data + r * codes.strides[0], meta.ctypes.data + r * meta.strides[0], lut.ctypes.data, zs,
                       qv.ctypes.data, qv.strides[0], _phases(w, G, D), qf.ctypes.data, gs.ctypes.data, gs.strides[0] // 4, nblk, gqa)  # fmt: skip
        if m > nblk * RB:  # the last rows: copied into a zeroed block (its other groups' scores are never read)
            for t in range(m - nblk * RB):
                copy_range(pad_c, t * R, codes[r + nblk * RB + t], 0, R)
                for gp in range(ngr):
                    pad_m[2 * (t * ngr + gp)] = meta[r + nblk * RB + t, gp, 0]
                    pad_m[2 * (t * ngr + gp) + 1] = meta[r + nblk * RB + t, gp, 1]
            _key_blocks(w, G, pad_c.ctypes.data, pad_m.ctypes.data, lut.ctypes.data, zs, qv.ctypes.data, qv.strides[0], _phases(w, G, D),
                       qf.ctypes.data, gs.ctypes.data + 4 * nblk * L, gs.strides[0] // 4, 1, gqa)  # fmt: skip
        for hh in range(gqa):
            sh = s[hh]
            gh = gs[hh]
            for t in range(m):
                sh[j + c0 + t] = _tree_sum(gh, t * ngr, ngr)
