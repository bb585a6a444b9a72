"""Launching moe.cu: a mixture of experts' routing and experts on the device (``GPUBackend.moe_route`` / ``moe_experts``).

The router's choice is written to device buffers that the experts' kernels read (llama.cpp's ``mul_mat_id``
idea), so a decode step brings nothing to the host and is captured as a CUDA graph with the rest of the step.
A prompt of 5 tokens or more (:func:`grouped`) goes by expert instead, as llama.cpp's ``mul_mat_id``: its rows
ordered by expert on the device, one dense matmul per expert over its rows, so each expert's weights are read once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Weight
from . import kernels as K
from .arrays import device_out, to_device

WARP = 32
ROWS_PER_BLOCK = 4  # MOE_WARPS in moe.cuh: one warp per output row
GATING = {"softmax": 0, "sigmoid": 1, "softmax_weight": 2}  # MOE_SOFTMAX ... in moe.cu
ACT = {"silu": 0, "swiglu_oai": 1, "relu": 2, "gelu": 3}  # MOE_SILU ... in moe.cu (gelu: Gemma 4's tanh GELU)
MAX_GRID_Y = K.MAX_GRID_Y  # the gate/up launch's (token, slot) pairs a run


def route(logits: Any, k: int, gating: str, norm_weights: bool, scale: float, bias: Any, router_b: Any, groups: tuple[int, int],
          ids: Any, wts: Any) -> None:  # fmt: skip
    """``ids`` ``[T, k]`` int32, ``wts`` ``[T, k]``: each token's ``k`` experts by ``logits`` ``[T, n_expert]`` (+
    ``router_b``), as ``models/moe.py`` ``route`` chooses and weighs them (``bias``: the selection's; ``groups``:
    ``(n_group, n_group_used)``, (0, 0) for none), times ``scale``."""
    T, n_expert = logits.shape
    n_group, n_group_used = groups
    if n_group > 1 and (n_expert % n_group or not 0 < n_group_used <= n_group):
        raise ValueError(f"moe route: {n_expert} experts in {n_group} groups, {n_group_used} used: not a valid grouping")
    if not 0 < k <= n_expert or tuple(ids.shape) != (T, k) or tuple(wts.shape) != (T, k):
        raise ValueError(f"moe route: logits {tuple(logits.shape)}, k {k}, ids {tuple(ids.shape)}, wts {tuple(wts.shape)} do not match")
    ld = to_device(logits)
    bd = ld if bias is None else to_device(bias)  # (an unread pointer where there is none)
    rb = ld if router_b is None else to_device(router_b)
    with device_out(ids, np.int32) as idd, device_out(wts) as wd:
        K.launch("moe_route_f32", (T,), (WARP,), ld, bd, rb, idd, wd, n_expert, k, GATING[gating], int(norm_weights),
                 int(bias is not None), int(router_b is not None), n_group, n_group_used, scale,
                 shared_mem=4 * (2 * n_expert + k + 2 * max(n_group, 0)))  # fmt: skip


def experts(gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any,
            biases: tuple[Any, Any, Any] | None, act: str, accumulate: bool) -> None:  # fmt: skip
    """``x (+)= sum_j wts[:, j] * expert_{ids[:, j]}(xn)``: the gate and up products with the GLU into ``h``
    ``[T, k * n_ff]`` (one launch; two where gate and up are of two types), then the down products summed over
    the slots (one launch)."""
    if gate is None:  # (ungated squared-ReLU experts, Nemotron-H MoE's: moe3.cu)
        experts_sq(up, down, n_ff, ids, wts, xn, x, h, accumulate)
        return
    gb, ub, db = (to_device(b) for b in biases) if biases is not None else (None, None, None)
    has_b = int(biases is not None)
    if xn.shape[0] >= GROUPED_MIN_TOKENS:  # a prompt: each expert's rows together, its weights read once (grouped)
        grouped(gate, up, down, n_ff, ids, wts, xn, x, h, (gb, ub, db) if has_b else None, act, accumulate)
        return
    launch_experts("", gate, up, down, n_ff, ids, wts, xn, x, h, accumulate, False, (gb, ub), (ACT[act], has_b), (db,), (has_b,))


def experts_sq(up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any, accumulate: bool) -> None:
    """``x (+)= sum_j wts[:, j] * down_e relu(up_e xn)^2``, ``e = ids[:, j]``: experts without a gate (Nemotron-H MoE's),
    ``h`` ``[T, k * n_ff]`` scratch; moe3.cu's up product with the squared ReLU (one launch), then moe2.cu's down
    products summed over the slots (one launch)."""
    T, n_embd = xn.shape
    k = ids.shape[1]
    if T * k > MAX_GRID_Y:  # (as launch_experts: runs of tokens the grid holds)
        step = MAX_GRID_Y // k
        for t in range(0, T, step):
            s = slice(t, min(t + step, T))
            experts_sq(up, down, n_ff, ids[s], wts[s], xn[s], x[s], h[s], accumulate)
        return
    if up.n_cols != n_embd or down.n_cols != n_ff or up.n_rows % n_ff or tuple(h.shape) != (T, k * n_ff):
        raise ValueError(f"moe experts: up {up.shape}, down {down.shape}, xn {tuple(xn.shape)}, h {tuple(h.shape)} do not match")
    xd, idd, wd = to_device(xn), to_device(ids, np.int32), to_device(wts)
    block = (ROWS_PER_BLOCK * WARP,)
    with device_out(h) as hd:
        K.launch(f"moe_up_sq_{K.QTYPE_SUFFIX[up.qtype]}", (K.cdiv(n_ff, ROWS_PER_BLOCK), T * k), block,
                 up.data, xd, idd, hd, n_ff, n_embd, up.data.shape[1], k)  # fmt: skip
        with device_out(x) as od:  # (wbf 0: each slot's weight times its expert's output)
            K.launch(f"moe_down_x_{K.QTYPE_SUFFIX[down.qtype]}", (K.cdiv(n_embd, ROWS_PER_BLOCK), T), block,
                     down.data, hd, idd, wd, od, n_embd, n_ff, down.data.shape[1], k, int(accumulate), 0)  # fmt: skip


GROUPED_MIN_TOKENS = 5  #: from this many tokens (past the dense matvec's 4: ops/gpu/backend.py) the experts go grouped


def grouped(gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any, biases: tuple | None,
            act: str, accumulate: bool) -> None:  # fmt: skip
    """:func:`experts` for a prompt, by expert as llama.cpp's ``mul_mat_id``: the (token, slot) pairs ordered by expert on
    the device (moe_group_slots), each pair's input gathered into its expert's block of rows, then per expert that has
    rows one ``matmul_<type>`` each of gate, up and down over its block (the dense prefill kernel on the expert's slice
    of the stacked weights), the GLU over all rows in one launch, and the rows scattered back with the router weights.
    The host learns where each expert's rows start (n_expert + 1 int32s: the one copy down, a prefill's, never a
    captured step's) to launch the products; ``h`` ``[T, k * n_ff]`` holds the gate's products, then the GLU's."""
    rt = K.runtime()
    xp = rt.xp
    T, n_embd = xn.shape
    k = ids.shape[1]
    n, n_expert = T * k, gate.n_rows // n_ff
    if up.n_rows != gate.n_rows or down.n_rows != n_expert * n_embd or gate.n_cols != n_embd or down.n_cols != n_ff or tuple(h.shape) != (T, k * n_ff):
        raise ValueError(f"moe experts: gate {gate.shape}, up {up.shape}, down {down.shape}, xn {tuple(xn.shape)}, h {tuple(h.shape)} do not match")
    xd, idd, wd = to_device(xn), to_device(ids, np.int32), to_device(wts)
    order, inv, offs = xp.empty(n, np.int32), xp.empty(n, np.int32), xp.empty(n_expert + 1, np.int32)
    K.launch("moe_group_slots", (1,), (256,), idd, order, inv, offs, n, n_expert)
    xg = xp.empty((n, n_embd), np.float32)
    K.launch("moe_gather_rows_f32", K.ew_grid(n * n_embd), (K.EW_BLOCK,), xd, order, xg, k, n_embd, n * n_embd)
    bounds = rt.asnumpy(offs).tolist()
    busy = [(e, bounds[e], bounds[e + 1]) for e in range(n_expert) if bounds[e + 1] > bounds[e]]

    def matmul(w: Weight, rows: int, e: int, src: Any, dst: Any) -> None:  # dst = src @ W_e.T over expert e's rows of w
        m = src.shape[0]
        K.launch(f"matmul_{K.QTYPE_SUFFIX[w.qtype]}", (K.cdiv(rows, 64), K.cdiv(m, 64)), (256,), w.data[e * rows : (e + 1) * rows], src, dst,
                 rows, src.shape[1], m, w.data.shape[1])  # fmt: skip

    gb, ub, db = biases if biases is not None else (xd, xd, xd)  # (unread pointers where there are none)
    with device_out(h) as hd:
        g, u = hd.reshape(n, n_ff), xp.empty((n, n_ff), np.float32)
        for e, lo, hi in busy:
            matmul(gate, n_ff, e, xg[lo:hi], g[lo:hi])
            matmul(up, n_ff, e, xg[lo:hi], u[lo:hi])
        K.launch("moe_glu_rows_f32", K.ew_grid(n * n_ff), (K.EW_BLOCK,), g, u, idd, order, gb, ub, g, n_ff, ACT[act], int(biases is not None), n * n_ff)
        d = xp.empty((n, n_embd), np.float32)
        for e, lo, hi in busy:
            matmul(down, n_embd, e, g[lo:hi], d[lo:hi])
    with device_out(x) as od:
        K.launch("moe_scatter_rows_f32", K.ew_grid(T * n_embd), (K.EW_BLOCK,), d, idd, inv, wd, db, od, k, n_embd, int(accumulate),
                 int(biases is not None), T * n_embd)  # fmt: skip


def launch_experts(variant: str, gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any,
                   h: Any, accumulate: bool, gate_up_wts: bool, gate_up_in: tuple, gate_up_tail: tuple, down_in: tuple, down_tail: tuple) -> None:  # fmt: skip
    """The experts' launches of ``moe_gate_up{variant}_<type>`` and ``moe_down{variant}_<type>`` (moe.cu's, ``""``;
    moe2.cu's, ``"_x"``), whose arguments differ only in the extras: the gate/up kernel takes ``(wg, wu, x, ids,
    [wts,] *gate_up_in, g, h, n_ff, n_cols, row_bytes, k, mode, *gate_up_tail)`` (``wts`` where ``gate_up_wts``),
    the down kernel ``(wd, h, ids, wts, *down_in, x, n_embd, n_ff, row_bytes, k, acc, *down_tail)``; a ``None`` in
    the ``_in`` tuples is a pointer the kernel does not read.  More (token, slot) pairs than a grid holds go in runs of tokens."""
    T, n_embd = xn.shape
    k = ids.shape[1]
    if T * k > MAX_GRID_Y:  # (a prefill chunk of thousands of tokens) in runs of tokens the grid holds
        step = MAX_GRID_Y // k
        for t in range(0, T, step):
            s = slice(t, min(t + step, T))
            launch_experts(variant, gate, up, down, n_ff, ids[s], wts[s], xn[s], x[s], h[s], accumulate, gate_up_wts, gate_up_in,
                           gate_up_tail, down_in, down_tail)  # fmt: skip
        return
    if gate.n_cols != n_embd or up.n_cols != n_embd or down.n_cols != n_ff or gate.n_rows != up.n_rows or tuple(h.shape) != (T, k * n_ff):
        raise ValueError(f"moe experts: gate {gate.shape}, up {up.shape}, down {down.shape}, xn {tuple(xn.shape)}, h {tuple(h.shape)} do not match")
    xd, idd, wd = to_device(xn), to_device(ids, np.int32), to_device(wts)
    gu_in = ((wd,) if gate_up_wts else ()) + tuple(xd if a is None else a for a in gate_up_in)
    dn_in = tuple(xd if a is None else a for a in down_in)
    grid, block = (K.cdiv(n_ff, ROWS_PER_BLOCK), T * k), (ROWS_PER_BLOCK * WARP,)
    gate_up = f"moe_gate_up{variant}_"
    with device_out(h) as hd:
        if gate.qtype == up.qtype:
            K.launch(gate_up + K.QTYPE_SUFFIX[gate.qtype], grid, block,
                     gate.data, up.data, xd, idd, *gu_in, hd, hd, n_ff, n_embd, gate.data.shape[1], k, 0, *gate_up_tail)  # fmt: skip
        else:  # the gate's product into g, then the up's with the GLU reading it
            g = K.runtime().xp.empty((T, k * n_ff), np.float32)
            K.launch(gate_up + K.QTYPE_SUFFIX[gate.qtype], grid, block,
                     gate.data, gate.data, xd, idd, *gu_in, g, g, n_ff, n_embd, gate.data.shape[1], k, 1, *gate_up_tail)  # fmt: skip
            K.launch(gate_up + K.QTYPE_SUFFIX[up.qtype], grid, block,
                     up.data, up.data, xd, idd, *gu_in, g, hd, n_ff, n_embd, up.data.shape[1], k, 2, *gate_up_tail)  # fmt: skip
        with device_out(x) as od:
            K.launch(f"moe_down{variant}_{K.QTYPE_SUFFIX[down.qtype]}", (K.cdiv(n_embd, ROWS_PER_BLOCK), T), block,
                     down.data, hd, idd, wd, *dn_in, od, n_embd, n_ff, down.data.shape[1], k, int(accumulate), *down_tail)  # fmt: skip


def gated_add(x: Any, y: Any, s: Any) -> None:
    """``x[t] += sigmoid(s[t]) * y[t]``; ``x``, ``y`` ``[T, n]``, ``s`` ``[T, 1]``."""
    T, n = x.shape
    total = T * n
    yd, sd = to_device(y), to_device(s)
    with device_out(x) as xd:
        K.launch("moe_gated_add_f32", K.ew_grid(total), (K.EW_BLOCK,), xd, yd, sd, n, total)
