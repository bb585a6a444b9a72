"""RWKV's time and channel mixes and LFM2's short convolution on ``--device gpu``: models/rwkv7.py's (rwkv7, arwkv7),
models/rwkv6.py's (rwkv6, rwkv6qwen2) and models/lfm2.py's ``_conv`` (lfm2, lfm2moe).

The same steps as the CPU's, in the same order, each a kernel on device buffers (``ops/gpu/recurrent.cu``; the
products and the norms the backend's): the token shift reads the previous rows from the layer's GPU cache
(``cache/gpu_recurrent.py``), which keeps them, the WKV inputs and the state, and the decays, the removal key, the
bonus and the gates are kernels too, not array operations: a decode step is nothing but launches, so it is captured
as a CUDA graph and replayed (runtime/graphs.py).  The layers' host vectors are uploaded once (``recurrent.const``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.gpu import recurrent as R
from .rwkv7 import GROUP_NORM_EPS


def _planes(model: Any, name: str, m: int, n: int) -> Any:
    """The model's [m, n_batch, n] device scratch ``name`` (allocated once, so a captured step keeps its pointers; a
    chunk of T rows uses ``[j, :T]`` of each plane)."""
    store = model.__dict__.setdefault("_gpu_planes", {})
    a = store.get(name)
    if a is None or a.shape[0] != m or a.shape[2] != n:
        a = store[name] = model.be.zeros((m, model.buf.n_batch, n))
    return a


def _lora(model: Any, m1: Any, m2: Any, x: Any, act: str | None, name: str) -> Any:
    """``m2 act(m1 x)`` for the rows ``x`` [T, n_embd]: [T, n_embd], a buffer (RWKV7Model.lora's)."""
    be, buf = model.be, model.buf
    T = x.shape[0]
    h = buf.get(f"glora_{name}", T, m1.shape[0])
    be.linear(m1, x, h)
    if act is not None:
        R.act_split(h, h[None], act)
    out = buf.get(f"glora_{name}_out", T, model.cfg.n_embd)
    be.linear(m2, h, out)
    return out


def _group_norm(model: Any, L: Any, y: Any, H: int, N: int) -> None:
    """Each head's output normed alone, weighted, then the bias (``time_mix_ln``)."""
    model.be.layer_norm_heads(y.reshape(y.shape[0], H, N), R.const(L.ln).reshape(H, N), GROUP_NORM_EPS)
    model.be.add_bias(y, R.const(L.ln_b))


def rwkv7_time_mix(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray, v_first: Any) -> tuple[Any, Any]:
    """``RWKV7Model.time_mix`` on the GPU: the output before ``time_mix_output`` and the value for later layers."""
    be, buf = model.be, model.buf
    T, n = xn.shape
    N = model.head_size
    H = n // N
    xx = _planes(model, "rwkv_xx", L.lerp.shape[0], n)  # the lerped input of r, w, k, v, a (and g)
    state.lerp(xn, pos, 0, R.const(L.lerp), xx)
    state.token_shift(xn, pos, 0)
    xr, xw, xk, xv, xa = (xx[j, :T] for j in range(5))
    x6 = buf.get("rwkv_x6", T, 6 * n)  # the recurrence's inputs r, w, k, v, a, b (what the cache keeps)
    r, w, k, v = (buf.get(f"rwkv_{name}", T, n) for name in "rwkv")
    be.linear(L.wr, xr, r)
    be.linear(L.wk, xk, k)
    be.linear(L.wv, xv, v)
    lw = _lora(model, L.w1, L.w2, xw, "tanh", "w")
    R.decay(lw, R.const(L.w0), 7)
    if L.v1 is None:
        v_first = buf.get("rwkv_v_first", T, n)
        R.pack(v, v_first, 0)
    else:  # the value residual: toward layer 0's value, as far as its own LoRA says
        R.value_residual(v, v_first, _lora(model, L.v1, L.v2, xv, None, "v"), R.const(L.v0))
    R.key_prep(k, _lora(model, L.a1, L.a2, xa, None, "a"), R.const(L.a0), R.const(L.k_k), R.const(L.k_a), x6, H, N)
    for j, part in enumerate((r, lw, k, v)):
        R.pack(part, x6, j * n)
    y = buf.get("rwkv_y", T, n)
    state.wkv(x6, pos, y)
    if L.ln is not None:
        _group_norm(model, L, y, H, N)
    R.bonus(y, r, k, v, R.const(L.r_k), N)
    if L.g1 is not None:
        R.mul_act(y, _lora(model, L.g1, L.g2, xx[5, :T], "sigmoid", "g"), None)
    return y, v_first


def rwkv7_channel_mix(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray, x: Any) -> None:
    """``RWKV7Model.channel_mix`` on the GPU: ``W_v relu(W_k x)^2`` of the token-shifted ``xn``, added to ``x``."""
    T, n = xn.shape
    xk = _planes(model, "rwkv_cm_x", 1, n)
    state.lerp(xn, pos, 1, R.const(L.cm_lerp), xk)
    state.token_shift(xn, pos, 1)
    h = model.buf.get("rwkv_cm", T, model.cfg.n_ff)
    model.be.linear(L.cm_key, xk[0, :T], h)
    model.be.relu_sqr(h, h)
    model.be.linear_add(L.cm_value, h, x)


def rwkv6_time_mix(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray) -> tuple[Any, None]:
    """``RWKV6Model.time_mix`` on the GPU (RWKV6-Qwen2's too, ``L.u`` None: gated linear attention, a sigmoid gate)."""
    be, buf = model.be, model.buf
    T, n = xn.shape
    N, E = model.head_size, model.extra
    H = n // N
    # the ddlerp: the fixed lerp, a LoRA of it, then each of w, k, v, r, g lerped by its mu plus its LoRA output
    x0 = _planes(model, "rwkv6_x0", 1, n)
    state.lerp(xn, pos, 0, R.const(L.lerp_x), x0)
    h = buf.get("rwkv6_ddlerp", T, 5 * E)
    be.linear(L.w1, x0[0, :T], h)
    h5 = _planes(model, "rwkv6_h5", 5, E)
    R.act_split(h, h5, "tanh")
    mix = _planes(model, "rwkv6_mix", 5, n)
    for j in range(5):
        be.linear(L.w2[j], h5[j, :T], mix[j, :T])
    state.lerp(xn, pos, 0, R.const(L.lerp), mix, add=mix)
    state.token_shift(xn, pos, 0)
    xw, xk, xv, xr, xg = (mix[j, :T] for j in range(5))
    r, k, v = model.rkv(L, xr, xk, xv, R.const)
    if k.shape[1] != n:  # (fewer K/V heads: each read by n_head / n_head_kv consecutive heads)
        k2, v2 = buf.get("rwkv_k_rep", T, n), buf.get("rwkv_v_rep", T, n)
        R.repeat_heads(k, k2, model.kv_heads, N)
        R.repeat_heads(v, v2, model.kv_heads, N)
        k, v = k2, v2
    w = _lora(model, L.decay_w1, L.decay_w2, xw, "tanh", "w")
    R.decay(w, R.const(L.decay), 6)
    x4 = buf.get("rwkv_x4", T, 4 * n)
    gla = L.u is None
    if gla:  # gated linear attention through WKV-6: the receptance r w, the key k (1 - w) (kept for the bonus)
        R.pack(r, x4, 0, w, mode=1)
        R.pack(k, x4, 2 * n, w, mode=2)
    else:
        R.pack(r, x4, 0)
        R.pack(k, x4, 2 * n)
    R.pack(w, x4, n)
    R.pack(v, x4, 3 * n)
    y = buf.get("rwkv_y", T, n)
    state.wkv(x4, pos, y)
    if gla:
        R.bonus(y, r, k, v, None, N, float(np.float32(N**-0.5)))
    else:
        R.bonus(y, r, k, v, R.const(L.u), N)
        _group_norm(model, L, y, H, N)
    gate = buf.get("rwkv_g", T, n)
    be.linear(L.wg, xg, gate)
    R.mul_act(y, gate, "sigmoid" if gla else "silu")
    return y, None


def rwkv6_channel_mix(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray, x: Any) -> None:
    """``RWKV6Model.channel_mix`` on the GPU: ``sigmoid(W_r xr) * W_v relu(W_k xk)^2`` added to ``x``, then halved
    where the layer ends a group of rescale_every_n_layers."""
    be, buf = model.be, model.buf
    T, n = xn.shape
    mu = L.__dict__.get("_gpu_cm_mu")
    if mu is None:  # (one host array, so its device copy is made once)
        mu = L._gpu_cm_mu = np.stack([L.cm_lerp, L.cm_lerp_r]).astype(np.float32)
    xx = _planes(model, "rwkv6_cm_x", 2, n)
    state.lerp(xn, pos, 1, R.const(mu), xx)
    state.token_shift(xn, pos, 1)
    h = buf.get("rwkv_cm", T, model.cfg.n_ff)
    be.linear(L.cm_key, xx[0, :T], h)
    be.relu_sqr(h, h)
    kv, r = buf.get("rwkv_cm_kv", T, n), buf.get("rwkv_cm_r", T, n)
    be.linear(L.cm_value, h, kv)
    be.linear(L.cm_receptance, xx[1, :T], r)
    R.mul_act(kv, r, "sigmoid")
    be.add(x, kv)
    if L.halve:
        be.scale(x, 0.5)


def lfm2_conv(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray) -> Any:
    """``Lfm2Model._conv`` on the GPU: a convolution layer's output [T, n_embd] (a buffer) for the normed ``xn``."""
    n, T = model.cfg.n_embd, xn.shape[0]
    bcx = model.buf.get("conv_bcx", T, 3 * n)
    model.be.linear(L.conv_in, xn, bcx)
    y = model.buf.get("conv_y", T, n)
    state.conv(bcx, pos, R.const(L.conv), y)
    out = model.buf.get("conv_out", T, n)
    model.be.linear(L.conv_out, y, out)
    return out
