"""The delta-rule mixers on ``--device gpu``: Gated DeltaNet's (``qwen35.py``'s ``deltanet_y``: qwen35, qwen35moe,
qwen3next) and Kimi Delta Attention's (``kimi_linear.py``'s ``kda_y``), and the two models' numpy cuts beside them
(Qwen's gated attention's query and output gate, Kimi's unturned MLA heads).  Ling 3 (``bailingmoe3.py``) runs Kimi's
steps with its parameters: full-rank decay and output gates (no ``_b`` product), the safe gate's bound (a flag of the
decay kernel), its MLA's rope parts turned by the backend's rope and its per-head output gate a kernel.

The same steps as the CPU's, in the same order, each a kernel on device buffers (``ops/gpu/delta.cu``; the products the
backend's): the convolution and the delta rule run in the layer's GPU cache (``cache/gpu_delta.py``), which keeps the
state, and the decay, the write strength and the gated norm are kernels too, not array operations: a decode step is
nothing but launches, so it is captured as a CUDA graph and replayed (runtime/graphs.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.gpu import delta as G
from .deepseek2 import mla_project


def deltanet_y(model: Any, dn: Any, state: Any, xn: Any, pos: np.ndarray) -> Any:
    """``Qwen35Model.deltanet_y`` on the GPU: the gated and normed ``y`` [T, d_inner] (a buffer) of the normed input."""
    be, buf, geo = model.be, model.buf, model.geo
    T, nv = xn.shape[0], geo.n_v_heads
    qkv, z = buf.get("dn_qkv", T, geo.channels), buf.get("dn_z", T, geo.d_inner)
    beta, alpha = buf.get("dn_beta", T, nv), buf.get("dn_alpha", T, nv)
    be.linear_many((dn.wqkv, dn.wz, dn.wbeta, dn.walpha), xn, (qkv, z, beta, alpha))
    gb = buf.get("dn_gb", T, 2 * nv)  # each head's decay log, then its write strength (what the cache keeps)
    G.decay_beta(alpha, beta, G.const(dn.dt_b), G.const(dn.A), gb, 1)
    y = buf.get("dn_y", T, geo.d_inner)
    state.scan(qkv, gb, pos, dn, y)
    G.norm_gate(y, z, G.const(dn.norm), model.cfg.norm_eps, sigmoid_gate=False)
    return y


def kda_y(model: Any, kd: Any, state: Any, xn: Any, pos: np.ndarray) -> Any:
    """``KimiLinearModel.kda_y`` on the GPU: the gated and normed ``y`` [T, n_head * head_dim] (a buffer)."""
    be, buf, H, hd = model.be, model.buf, model.cfg.n_head, model.head_dim_kda
    T, d = xn.shape[0], H * hd
    q, k, v = buf.get("kda_q", T, d), buf.get("kda_k", T, d), buf.get("kda_v", T, d)
    fa, ga, beta = buf.get("kda_fa", T, kd.f_a.shape[0]), buf.get("kda_ga", T, kd.g_a.shape[0]), buf.get("kda_beta", T, H)
    be.linear_many((kd.wq, kd.wk, kd.wv, kd.f_a, kd.g_a, kd.wbeta), xn, (q, k, v, fa, ga, beta))
    qkv = buf.get("kda_qkv", T, 3 * d)  # (the three convolutions as one: each channel is its own)
    for i, part in enumerate((q, k, v)):
        G.put_cols(part, qkv, i * d)
    g, g2 = fa, ga  # (Ling 3's full rank: f_a and g_a give them; Kimi K3's g_a, its full-rank ssm_g, the gate's)
    if kd.f_b is not None:
        g = buf.get("kda_g", T, d)
        be.linear_many((kd.f_b,), fa, (g,))
    if kd.g_b is not None:
        g2 = buf.get("kda_g2", T, d)
        be.linear_many((kd.g_b,), ga, (g2,))
    gb = buf.get("kda_gb", T, d + H)  # every channel's decay log, then each head's write strength
    G.decay_beta(g, beta, G.const(kd.dt_b), G.const(kd.A), gb, hd, kd.lower_bound)  # (< 0: Ling 3's safe gate)
    y = buf.get("kda_y", T, d)
    state.scan(qkv, gb, pos, kd, y)
    G.norm_gate(y, g2, G.const(kd.norm), model.cfg.norm_eps, sigmoid_gate=True)
    return y


def kimi_mla_attend(model: Any, L: Any, lc: Any, xn: Any, pos: np.ndarray, rope: tuple[Any, Any, bool] | None = None,
                    gate: Any = None, rope_pos: Any = None) -> Any:  # fmt: skip
    """``KimiLinearModel.mla_attend`` on the GPU.  Kimi's heads are ``[nope, pe]`` unturned; ``mla_qk`` lays q's and k's
    heads out ``[pe, nope]`` (deepseek2's kernel): the same permutation of both, so every score is the same sum.
    Ling 3's (``Bailingmoe3Model.mla_attend``): ``rope`` (cos, sin, neox) turns the leading ``pe`` parts as deepseek2's
    forward does (at ``rope_pos`` where given: M-RoPE's rows into per-row tables, or text's shifted positions on the
    device, models/mrope_text.py; else at the slots), and ``gate`` [n_head, n_embd] gates each head's output by
    ``sigmoid(gate xn)``."""
    c, be, buf = model.cfg, model.be, model.buf
    T, H, D, Dv, R, nope, rank = xn.shape[0], c.n_head, c.head_dim, c.head_dim_v, model.n_rot, model.qk_nope, model.kv_rank
    q_raw, q, kva, kvc = buf.get("q_raw", T, H * D), buf.get("q", T, H * D), buf.get("kv_a", T, rank + R), buf.get("kv_c", T, rank)
    k_nope, k, v, att = buf.get("k_nope", T, H * nope), buf.get("k", T, H * D), buf.get("v", T, H * Dv), buf.get("att", T, H * Dv)
    mla_project(be, L, xn, buf, c.norm_eps, q_raw, kva, kvc, k_nope, v)
    q3, k3 = q.reshape(T, H, D), k.reshape(T, H, D)
    be.mla_qk(q_raw.reshape(T, H, D), k_nope.reshape(T, H, nope), kva, q3, k3)
    if rope is not None:  # (every head's copy of the shared k_pe turned alike)
        be.rope_qk(q3, k3, pos if rope_pos is None else rope_pos, *rope)
    lc.update_and_attend(q3, k3, v.reshape(T, H, Dv), pos, att.reshape(T, H, Dv))
    if gate is not None:
        s = buf.get("mla_gate", T, H)
        be.linear(gate, xn, s)
        G.head_gate(s, att.reshape(T, H, Dv))
    return att
