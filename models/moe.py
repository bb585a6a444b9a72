"""Mixture-of-experts FFN (Mixtral, Qwen3-MoE, Granite MoE, OLMoE, gpt-oss): a router picks ``n_expert_used``
of the layer's ``n_expert`` SwiGLU experts per token and the token's FFN output is their weighted sum.

As llama.cpp's ``build_moe_ffn`` with softmax gating: ``p = softmax(W_router x)`` over all experts,
the top ``k`` by ``p`` (ties to the lower index), their weights ``p`` renormalised to sum 1 (unless
the file's ``expert_weights_norm``, or the architecture's default, says not to: OLMoE's), each
expert ``down(silu(gate x) * up x)``.  gpt-oss: biases on the router and every expert product, the
top ``k`` by router logit weighted by a softmax over those ``k``, and a clamped GLU (``swiglu_oai``).

The experts' weights are the file's 3-D tensors ``[n_expert, rows, cols]``, held stacked as
``[n_expert * rows, cols]`` (a view of the memory map); :func:`expert` cuts one expert's rows.  Tokens are grouped by expert, so prefill
runs each chosen expert once over all of its tokens (a matrix product), decode runs the ``k``
experts of its one token.  Routing is host work (numpy): CPU only for now.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..loaders.errors import GGUFError, UnsupportedModelError
from ..ops.backend import Backend, Weight
from ..ops.cpu.moe import swiglu_oai
from .common import Buffers, WeightLoader


@dataclass
class MoE:
    router: Weight  # [n_expert, n_embd]
    gate: Weight  # the experts stacked: [n_expert * n_ff_exp, n_embd]
    up: Weight  # [n_expert * n_ff_exp, n_embd]
    down: Weight  # [n_expert * n_embd, n_ff_exp]
    n_expert: int
    n_used: int
    norm_weights: bool  # renormalise the chosen experts' probabilities to sum 1
    #: the router's probabilities: softmax over experts, each expert's sigmoid (LFM2-MoE), or
    #: "softmax_weight": the top k by logit, weighted by a softmax over those k logits (gpt-oss)
    gating: str = "softmax"
    bias: np.ndarray | None = None  # [n_expert]: added to the probabilities to choose experts, not to weight them
    act: str = "silu"  # the experts' GLU: silu(gate) * up, or gpt-oss's clamped "swiglu_oai"
    #: gpt-oss's biases: the router's [n_expert] (added to its logits) and each expert's, host arrays
    #: [n_expert, n_ff_exp] (gate, up) and [n_expert, n_embd] (down, added before the expert's weight)
    router_b: np.ndarray | None = None
    gate_b: np.ndarray | None = None
    up_b: np.ndarray | None = None
    down_b: np.ndarray | None = None


def expert(w: Weight, e: int, n_expert: int) -> Weight:
    """Expert e's rows of a stacked expert weight, as a Weight of their own (a view)."""
    n = w.shape[0] // n_expert
    return Weight(w.data[e * n : (e + 1) * n], w.qtype, (n, w.shape[1]))


def load_moe(w: WeightLoader, i: int, n_expert: int, n_used: int, n_ff_exp: int, n_embd: int, norm_weights: bool,
             gating: str = "softmax", act: str = "silu") -> MoE:  # fmt: skip
    """Layer i's router and experts (and, where the file has them, gpt-oss's biases)."""
    if w.be.name != "cpu":  # the routing is numpy work on host arrays
        raise UnsupportedModelError(f"{w.g.path}: mixture-of-experts models run on the CPU only for now; use --device cpu")
    if not 0 < n_used <= n_expert:
        raise GGUFError(f"{w.g.path}: expert_used_count {n_used} is not in 1..{n_expert} (expert_count)")

    def per_expert(role: str, n: int) -> np.ndarray | None:
        b = w.host_vector(role, i, required=False)
        if b is not None and b.size != n_expert * n:
            raise GGUFError(f"{w.g.path}: blk.{i} {role} has {b.size} values, expected {n_expert} x {n}; the file is not a supported model")
        return None if b is None else b.reshape(n_expert, n)

    return MoE(
        router=w.matrix("ffn_gate_inp", i),
        gate=w.experts("ffn_gate_exps", i, n_expert, n_ff_exp, n_embd),
        up=w.experts("ffn_up_exps", i, n_expert, n_ff_exp, n_embd),
        down=w.experts("ffn_down_exps", i, n_expert, n_embd, n_ff_exp),
        n_expert=n_expert,
        n_used=n_used,
        norm_weights=norm_weights,
        gating=gating,
        bias=w.host_vector("exp_probs_b", i, required=False),
        act=act,
        router_b=per_expert("ffn_gate_inp_b", 1),
        gate_b=per_expert("ffn_gate_exps_b", n_ff_exp),
        up_b=per_expert("ffn_up_exps_b", n_ff_exp),
        down_b=per_expert("ffn_down_exps_b", n_embd),
    )


def route(logits: np.ndarray, k: int, norm_weights: bool, gating: str = "softmax", bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Router logits ``[T, n_expert]`` -> (chosen experts ``[T, k]``, their weights ``[T, k]``), float32.
    ``bias`` (DeepSeek-V3's and LFM2-MoE's load balancing) moves which experts are chosen, not their weights."""
    if gating == "softmax_weight":  # (ties to the lower index, as the other gatings)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        z = np.take_along_axis(logits, top, axis=1).astype(np.float32)
        wts = np.exp(z - z.max(axis=1, keepdims=True))
        return top, (wts / wts.sum(axis=1, keepdims=True)).astype(np.float32)
    if gating == "sigmoid":
        p = (1.0 / (1.0 + np.exp(-logits.astype(np.float32)))).astype(np.float32)
    else:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z, dtype=np.float32)
        p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-(p + bias if bias is not None else p), axis=1, kind="stable")[:, :k]
    wts = np.take_along_axis(p, top, axis=1)
    if norm_weights:
        wts = wts / wts.sum(axis=1, keepdims=True)
    return top, wts.astype(np.float32)


def moe_add(be: Backend, moe: MoE, xn: np.ndarray, x: np.ndarray, buf: Buffers, accumulate: bool = True) -> None:
    """``x += MoE(xn)`` for the ``T`` tokens of ``xn`` (the FFN-normed residual stream); ``accumulate``
    False: ``x = MoE(xn)`` (Granite scales the FFN's output before its residual add)."""
    T, n_embd = xn.shape
    if not accumulate:
        x.fill(0.0)
    n_ff = moe.gate.shape[0] // moe.n_expert
    logits = buf.get("moe_router", T, moe.n_expert)
    be.linear(moe.router, xn, logits)
    logits = be.to_host(logits)
    if moe.router_b is not None:
        logits = logits + moe.router_b[:, 0]
    top, wts = route(logits, moe.n_used, moe.norm_weights, moe.gating, moe.bias)
    bs = (moe.gate_b, moe.up_b, moe.down_b)
    biases = bs if all(b is not None for b in bs) else None
    if T == 1 and (biases is not None or bs == (None,) * 3) and be.moe_token(moe.gate, moe.up, moe.down, n_ff, top[0], wts[0], xn, x, biases, moe.act):
        return
    for e in np.unique(top):
        rows, slot = np.nonzero(top == e)
        n = len(rows)
        xe = buf.get("moe_x", n, n_embd)
        np.take(xn, rows, axis=0, out=xe)
        g, u, d = buf.get("moe_gate", n, n_ff), buf.get("moe_up", n, n_ff), buf.get("moe_down", n, n_embd)
        be.linear_many((expert(moe.gate, e, moe.n_expert), expert(moe.up, e, moe.n_expert)), xe, (g, u))
        if moe.gate_b is not None:
            g += moe.gate_b[e]
        if moe.up_b is not None:
            u += moe.up_b[e]
        if moe.act == "swiglu_oai":
            swiglu_oai(g, u, g)
        else:
            be.silu_mul(g, u, g)
        be.linear(expert(moe.down, e, moe.n_expert), g, d)
        if moe.down_b is not None:
            d += moe.down_b[e]
        d *= wts[rows, slot][:, None]
        x[rows] += d  # a token picks an expert once: rows are distinct
