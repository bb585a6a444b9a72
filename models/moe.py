"""Mixture-of-experts FFN (Mixtral, Qwen3-MoE, Granite MoE, OLMoE): a router picks ``n_expert_used``
of the layer's ``n_expert`` SwiGLU experts per token and the token's FFN output is their weighted sum.

As llama.cpp's ``build_moe_ffn`` with softmax gating: ``p = softmax(W_router x)`` over all experts,
the top ``k`` by ``p`` (ties to the lower index), their weights ``p`` renormalised to sum 1 (unless
the file's ``expert_weights_norm``, or the architecture's default, says not to: OLMoE's), each
expert ``down(silu(gate x) * up x)``.

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
    gating: str = "softmax"  # the router's probabilities: softmax over experts, or each expert's sigmoid (LFM2-MoE)
    bias: np.ndarray | None = None  # [n_expert]: added to the probabilities to choose experts, not to weight them


def expert(w: Weight, e: int, n_expert: int) -> Weight:
    """Expert e's rows of a stacked expert weight, as a Weight of their own (a view)."""
    n = w.shape[0] // n_expert
    return Weight(w.data[e * n : (e + 1) * n], w.qtype, (n, w.shape[1]))


def load_moe(w: WeightLoader, i: int, n_expert: int, n_used: int, n_ff_exp: int, n_embd: int, norm_weights: bool,
             gating: str = "softmax") -> MoE:  # fmt: skip
    if w.be.name != "cpu":  # the routing is numpy work on host arrays
        raise UnsupportedModelError(f"{w.g.path}: mixture-of-experts models run on the CPU only for now; use --device cpu")
    if not 0 < n_used <= n_expert:
        raise GGUFError(f"{w.g.path}: expert_used_count {n_used} is not in 1..{n_expert} (expert_count)")
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
    )


def route(logits: np.ndarray, k: int, norm_weights: bool, gating: str = "softmax", bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Router logits ``[T, n_expert]`` -> (chosen experts ``[T, k]``, their weights ``[T, k]``), float32.
    ``bias`` (DeepSeek-V3's and LFM2-MoE's load balancing) moves which experts are chosen, not their weights."""
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
    top, wts = route(be.to_host(logits), moe.n_used, moe.norm_weights, moe.gating, moe.bias)
    if T == 1 and be.moe_token(moe.gate, moe.up, moe.down, n_ff, top[0], wts[0], xn, x):
        return
    for e in np.unique(top):
        rows, slot = np.nonzero(top == e)
        n = len(rows)
        xe = buf.get("moe_x", n, n_embd)
        np.take(xn, rows, axis=0, out=xe)
        g, u, d = buf.get("moe_gate", n, n_ff), buf.get("moe_up", n, n_ff), buf.get("moe_down", n, n_embd)
        be.linear_many((expert(moe.gate, e, moe.n_expert), expert(moe.up, e, moe.n_expert)), xe, (g, u))
        be.silu_mul(g, u, g)
        be.linear(expert(moe.down, e, moe.n_expert), g, d)
        d *= wts[rows, slot][:, None]
        x[rows] += d  # a token picks an expert once: rows are distinct
