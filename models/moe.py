"""Mixture-of-experts FFN (Mixtral, Qwen3-MoE, Qwen2-MoE, DeepSeek-MoE, Granite MoE, OLMoE, gpt-oss): a router picks
``n_expert_used`` of the layer's ``n_expert`` SwiGLU experts per token and the token's FFN output is their
weighted sum (plus, where the layer has one, a *shared expert*'s output).

As llama.cpp's ``build_moe_ffn`` with softmax gating: ``p = softmax(W_router x)`` over all experts,
the top ``k`` by ``p`` (ties to the lower index), their weights ``p`` renormalised to sum 1 (unless
the file's ``expert_weights_norm``, or the architecture's default, says not to: OLMoE's), each
expert ``down(silu(gate x) * up x)``.  gpt-oss: biases on the router and every expert product, the
top ``k`` by router logit weighted by a softmax over those ``k``, and a clamped GLU (``swiglu_oai``).

A shared expert (``ffn_*_shexp``: Qwen2-MoE, DeepSeek-MoE, GraniteMoeShared) is a dense SwiGLU FFN every
token runs beside its routed experts, its output added to theirs as llama.cpp's graphs add it: Qwen2-MoE's
scaled per token by ``sigmoid(ffn_gate_inp_shexp . x)``, the others' as it is.  DeepSeek-MoE also scales
the chosen experts' weights by the file's ``expert_weights_scale``; DeepSeek-V3 (``deepseek2``) may limit
the choice to the best groups of experts (:func:`group_limit`).

The experts' weights are the file's 3-D tensors ``[n_expert, rows, cols]``, held stacked as
``[n_expert * rows, cols]`` (a view of the memory map); :func:`expert` cuts one expert's rows.  Tokens are grouped by expert, so prefill
runs each chosen expert once over all of its tokens (a matrix product), decode runs the ``k``
experts of its one token.  The CPU routes on the host (numpy); the GPU routes in a kernel whose choice the
experts' kernels read from device memory (``Backend.moe_route`` / ``moe_experts``: a decode step copies nothing
to the host, so it is captured as a CUDA graph), for the variants :func:`device_unsupported` does not name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .bert import gelu  # (Grok's experts: ggml's float16-table GELU)
from .common import Buffers, WeightLoader


@dataclass
class SharedExpert:
    """A dense SwiGLU FFN ``down(silu(gate x) * up x)`` every token runs, added to the routed experts' sum."""

    gate: Weight  # [n_ff_shexp, n_embd]
    up: Weight  # [n_ff_shexp, n_embd]
    down: Weight  # [n_embd, n_ff_shexp]
    gate_inp: Weight | None = None  # [1, n_embd]: Qwen2-MoE's output scale, sigmoid(gate_inp . x) per token
    swiglu_limit: float = 0.0  # > 0: Step-3.5's clamped SwiGLU (:func:`swiglu_clamped`), llama.cpp's swiglu_clamp_shexp
    act: str = "silu"  # or "swiglu_oai": gpt-oss's clamped GLU (MiniMax-M3's shared expert; a device's: moe2.cu's)


@dataclass
class MoE:
    router: Weight  # [n_expert, n_embd]
    gate: Weight | None  # the experts stacked: [n_expert * n_ff_exp, n_embd] (None: ungated experts, act "relu_sqr")
    up: Weight  # [n_expert * n_ff_exp, n_embd]
    down: Weight  # [n_expert * n_embd, n_ff_exp]
    n_expert: int
    n_used: int
    norm_weights: bool  # renormalise the chosen experts' probabilities to sum 1
    #: the router's probabilities: softmax over experts, each expert's sigmoid (LFM2-MoE), or
    #: "softmax_weight": the top k by logit, weighted by a softmax over those k logits (gpt-oss)
    gating: str = "softmax"
    bias: np.ndarray | None = None  # [n_expert]: added to the probabilities to choose experts, not to weight them
    act: str = "silu"  # the experts' GLU: silu(gate) * up, gpt-oss's clamped "swiglu_oai", or "relu": relu(gate) * up (SmallThinker's)
    #: (or "gelu": gelu(gate) * up, Grok's, ggml's float16-table GELU; "relu_sqr": relu(up)^2 of experts without a gate,
    #: Nemotron-H MoE's)
    #: gpt-oss's biases: the router's [n_expert] (added to its logits) and each expert's, host arrays
    #: [n_expert, n_ff_exp] (gate, up) and [n_expert, n_embd] (down, added before the expert's weight)
    router_b: np.ndarray | None = None
    gate_b: np.ndarray | None = None
    up_b: np.ndarray | None = None
    down_b: np.ndarray | None = None
    shared: SharedExpert | None = None  # the layer's shared expert, if it has one
    weights_scale: float = 1.0  # the chosen experts' weights times this, after any renormalising (DeepSeek-MoE's expert_weights_scale)
    #: group-limited routing (DeepSeek-V3's expert_group_count, expert_group_used_count): the experts in ``n_group``
    #: consecutive groups, each scored by the sum of its two best selection probabilities, the experts chosen from
    #: the best ``n_group_used`` groups only (0 or 1 group: no limit)
    n_group: int = 0
    n_group_used: int = 0
    #: the rows the router reads where not the FFN's normed input ``xn``: a ``[n_batch, n_embd]`` buffer the model fills
    #: each layer (SmallThinker's router reads the layer's input, before the attention norm); None: ``xn``
    router_in: np.ndarray | None = None
    #: Llama 4 (llama.cpp's ``weight_before_ffn``): a chosen expert's weight scales its input, not its output
    weight_before_ffn: bool = False
    #: > 0: Step-3.5's clamped SwiGLU experts (:func:`swiglu_clamped`), llama.cpp's ``swiglu_clamp_exp`` of the layer
    swiglu_limit: float = 0.0
    #: with ``swiglu_limit``: the gate clamped before its SiLU, ``silu(min(gate, limit)) * clamp(up, -limit, limit)``
    #: (ggml's ``swiglu_clamp``, llama.cpp's for Maple), not after it as Step-3.5's (the device's: moe2.cu's act
    #: ``"swiglu_clamp_first"``)
    clamp_gate_first: bool = False


def expert(w: Weight, e: int, n_expert: int) -> Weight:
    """Expert e's rows of a stacked expert weight, as a Weight of their own (a view)."""
    n = w.shape[0] // n_expert
    return Weight(w.data[e * n : (e + 1) * n], w.qtype, (n, w.shape[1]))


def load_moe(w: WeightLoader, i: int, n_expert: int, n_used: int, n_ff_exp: int, n_embd: int, norm_weights: bool,
             gating: str = "softmax", act: str = "silu", shared: str | None = None) -> MoE:  # fmt: skip
    """Layer i's router and experts (and, where the file has them, gpt-oss's biases and a shared expert).
    ``shared``: the shared expert the architecture always has, as llama.cpp requires its tensors (``"gated"``:
    Qwen2-MoE's, with its sigmoid gate; ``"plain"``: DeepSeek-MoE's, without one); None: whatever the layer has
    (GraniteMoeShared's, where the file has one)."""
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
        shared=load_shared_expert(w, i, n_embd, shared),
    )


def load_shared_expert(w: WeightLoader, i: int, n_embd: int, kind: str | None) -> SharedExpert | None:
    """Layer i's shared expert (None where it has none and ``kind`` is None); its width is the file's."""
    if kind is None and not w.has("ffn_gate_shexp", i):
        return None
    gate, up, down = (w.matrix(r, i) for r in ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"))
    gate_inp = None if kind == "plain" else w.matrix("ffn_gate_inp_shexp", i, required=kind == "gated")
    n_ff = gate.shape[0]
    want = {"ffn_gate_shexp": (gate, (n_ff, n_embd)), "ffn_up_shexp": (up, (n_ff, n_embd)), "ffn_down_shexp": (down, (n_embd, n_ff))}
    if gate_inp is not None:
        want["ffn_gate_inp_shexp"] = (gate_inp, (1, n_embd))
    for role, (m, shape) in want.items():
        if tuple(m.shape) != shape:
            raise GGUFError(f"{w.g.path}: blk.{i}.{role} has shape {tuple(m.shape)}, expected {shape}; the file is not a supported model")
    return SharedExpert(gate, up, down, gate_inp)


def check_expert_counts(g: GGUFFile, n_expert: int, n_expert_used: int) -> None:
    """llama.cpp's loader requires both counts of a mixture of experts."""
    if n_expert <= 0 or n_expert_used <= 0:
        raise GGUFError(f"{g.path}: {g.architecture} states {n_expert} experts, {n_expert_used} used a token; llama.cpp requires both > 0")


def gating_func(g: GGUFFile, gating: dict[int, str]) -> str:
    """The router's probabilities as ``expert_gating_func`` names them (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_*: 1
    softmax, 2 sigmoid; 0 where unstated, which ``gating`` maps to the architecture's default if it has one)."""
    v = int(g.arch_get("expert_gating_func", 0) or 0)
    if v not in gating:
        raise UnsupportedModelError(f"{g.path}: {g.architecture} expert_gating_func {v} is not supported (1 softmax, 2 sigmoid are)")
    return gating[v]


def weights_scale(g: GGUFFile) -> float:
    """``expert_weights_scale``, what the chosen experts' weights are multiplied by (llama.cpp: 0, unstated, scales nothing)."""
    scale = float(g.arch_get("expert_weights_scale", 0.0) or 0.0)
    return scale if scale != 0.0 else 1.0


def expert_groups(g: GGUFFile, n_expert: int) -> tuple[int, int]:
    """The file's ``(expert_group_count, expert_group_used_count)`` for :func:`group_limit` ((0, 0): no grouping), which
    llama.cpp reads for every architecture and its ``build_moe_ffn`` applies wherever more than one group is stated."""
    n_group, n_group_used = int(g.arch_get("expert_group_count", 0) or 0), int(g.arch_get("expert_group_used_count", 0) or 0)
    if n_group <= 1:
        return 0, 0
    if n_expert % n_group or not 0 < n_group_used <= n_group or n_expert // n_group < 2:
        raise GGUFError(f"{g.path}: {n_expert} experts in expert_group_count {n_group} groups, "
                        f"expert_group_used_count {n_group_used}: not a grouping llama.cpp runs")  # fmt: skip
    return n_group, n_group_used


def route(logits: np.ndarray, k: int, norm_weights: bool, gating: str = "softmax", bias: np.ndarray | None = None,
          n_group: int = 0, n_group_used: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Router logits ``[T, n_expert]`` -> (chosen experts ``[T, k]``, their weights ``[T, k]``), float32.
    ``bias`` (DeepSeek-V3's and LFM2-MoE's load balancing) moves which experts are chosen, not their weights.
    ``n_group`` > 1 (DeepSeek-V3's group-limited routing, as llama.cpp's ``build_moe_ffn``): the experts chosen
    only from the ``n_group_used`` groups (of ``n_group`` consecutive ones) whose two best selection scores
    (probability plus bias) sum highest."""
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
    sel = p + bias if bias is not None else p
    if n_group > 1:
        sel = group_limit(sel, n_group, n_group_used)
    top = np.argsort(-sel, axis=1, kind="stable")[:, :k]
    wts = np.take_along_axis(p, top, axis=1)
    if norm_weights:
        wts = wts / wts.sum(axis=1, keepdims=True)
    return top, wts.astype(np.float32)


def group_limit(sel: np.ndarray, n_group: int, n_group_used: int) -> np.ndarray:
    """Selection scores ``[T, n_expert]`` with every expert outside each token's best ``n_group_used`` groups set
    to -inf: the experts in ``n_group`` consecutive groups, a group's score the sum of its two best."""
    T, n_expert = sel.shape
    if n_expert % n_group or not 0 < n_group_used <= n_group:
        raise ValueError(f"{n_expert} experts in {n_group} groups, {n_group_used} used: not a valid grouping")
    g = sel.reshape(T, n_group, n_expert // n_group)
    score = -np.sort(-g, axis=2)[:, :, :2].sum(axis=2)  # [T, n_group]
    best = np.argsort(-score, axis=1, kind="stable")[:, :n_group_used]
    keep = np.zeros((T, n_group), bool)
    np.put_along_axis(keep, best, True, axis=1)
    return np.where(keep[:, :, None], g, -np.inf).reshape(T, n_expert).astype(sel.dtype)


def moe_add(be: Backend, moe: MoE, xn: np.ndarray, x: np.ndarray, buf: Buffers, accumulate: bool = True) -> None:
    """``x += MoE(xn)`` for the ``T`` tokens of ``xn`` (the FFN-normed residual stream); ``accumulate``
    False: ``x = MoE(xn)`` (Granite scales the FFN's output before its residual add)."""
    T = xn.shape[0]
    n_ff = moe.up.shape[0] // moe.n_expert
    logits = buf.get("moe_router", T, moe.n_expert)
    be.linear(moe.router, xn if moe.router_in is None else moe.router_in[:T], logits)
    ids, wts = buf.get("moe_ids", T, moe.n_used, dtype=np.int32), buf.get("moe_wts", T, moe.n_used)
    groups = (moe.n_group, moe.n_group_used)
    if device_unsupported(moe) is None and be.moe_route(logits, moe.n_used, moe.gating, moe.norm_weights, moe.weights_scale, moe.bias,
                                                        moe.router_b, groups, ids, wts):  # fmt: skip
        # a device's: the experts' kernels read the choice from device memory (nothing comes to the host)
        h = buf.get("moe_h", T, moe.n_used * n_ff)
        if moe.weight_before_ffn or moe.swiglu_limit > 0.0 or moe.act == "gelu":  # (moe2.cu's variants; no biases)
            # (this module's "gelu" is Grok's float16-table GELU; the kernels' "gelu" Gemma 4's plain tanh one)
            # (the clamp before the SiLU or after it: Maple's, Step-3.5's)
            clamp = "swiglu_clamp_first" if moe.clamp_gate_first else "swiglu_clamp"
            act = clamp if moe.swiglu_limit > 0.0 else "gelu_f16" if moe.act == "gelu" else moe.act
            be.moe_experts_x(moe.gate, moe.up, moe.down, n_ff, ids, wts, xn, x, h, act, moe.swiglu_limit, moe.weight_before_ffn, accumulate)
        else:
            biases = None if moe.gate_b is None else (moe.gate_b, moe.up_b, moe.down_b)
            be.moe_experts(moe.gate, moe.up, moe.down, n_ff, ids, wts, xn, x, h, biases, moe.act, accumulate)
    else:
        host_moe_add(be, moe, xn, x, buf, be.to_host(logits), accumulate)
    if moe.shared is not None:  # (ordinary products, after the routed experts)
        shared_add(be, moe.shared, xn, x, buf)


def device_unsupported(moe: MoE) -> str | None:
    """What of ``moe`` the device kernels (``Backend.moe_route`` / ``moe_experts``, ``moe_experts_x``) do not do, or
    None: they do softmax, sigmoid and softmax_weight gating, the selection bias, group-limited routing,
    renormalising and scaling, and silu, swiglu_oai (with gpt-oss's biases) and ReLU GLUs; without biases also
    Grok's float16-table GELU, the clamped SwiGLUs (Step-3.5's, the clamp after the SiLU, and Maple's, before it) and
    Llama 4's weight before the FFN (moe2.cu); and experts without a gate, Nemotron-H MoE's squared ReLU without
    biases (moe3.cu)."""
    if moe.gate is None and moe.act == "relu_sqr" and not moe.weight_before_ffn and moe.swiglu_limit == 0.0:
        return "relu_sqr experts with biases" if moe.up_b is not None or moe.down_b is not None else None
    if moe.gate is None or moe.act not in ("silu", "swiglu_oai", "relu", "gelu"):
        return f"{moe.act} experts"
    if len({b is None for b in (moe.gate_b, moe.up_b, moe.down_b)}) > 1:
        return "experts with biases on some of their products"
    if (moe.weight_before_ffn or moe.swiglu_limit > 0.0 or moe.act == "gelu") and moe.gate_b is not None:
        return f"{moe.act} experts with biases"
    return None


def host_moe_add(be: Backend, moe: MoE, xn: np.ndarray, x: np.ndarray, buf: Buffers, logits: np.ndarray, accumulate: bool) -> None:
    """:func:`moe_add`'s routed experts where the routing is host work (numpy): the CPU's way."""
    T = xn.shape[0]
    if not accumulate:
        x.fill(0.0)
    n_ff = moe.up.shape[0] // moe.n_expert
    if moe.router_b is not None:
        logits = logits + moe.router_b[:, 0]
    top, wts = route(logits, moe.n_used, moe.norm_weights, moe.gating, moe.bias, moe.n_group, moe.n_group_used)
    if moe.weights_scale != 1.0:
        wts *= np.float32(moe.weights_scale)
    bs = (moe.gate_b, moe.up_b, moe.down_b)
    biases = bs if all(b is not None for b in bs) else None
    one_call = T == 1 and moe.act in ("silu", "swiglu_oai") and moe.swiglu_limit == 0.0 and (biases is not None or bs == (None,) * 3)  # decode: the k experts in one kernel call, where it takes them
    xe = xn  # the routed experts' input
    if moe.weight_before_ffn:  # (Llama 4) each slot's input is x times its weight: slot by slot, unless there is one
        ones = np.ones((T, 1), np.float32)
        for j in range(1, top.shape[1]):
            experts_add(be, moe, xn * wts[:, j : j + 1], x, buf, top[:, j : j + 1], ones)
        xe, top, wts = xn * wts[:, :1], top[:, :1], ones
    if not (one_call and be.moe_token(moe.gate, moe.up, moe.down, n_ff, top[0], wts[0], xe, x, biases, moe.act)):
        experts_add(be, moe, xe, x, buf, top, wts)


def moe_or_swiglu_add(be: Backend, L: Any, x: np.ndarray, xn: np.ndarray, eps: float, buf: Buffers, limit: float = 0.0) -> None:
    """``x +=`` a layer's FFN of RMSNorm(x) (``L.ffn_norm``; ``xn`` takes it): its mixture of experts ``L.moe``, or else
    a dense SwiGLU as wide as its own ``L.w_gate`` (MiMo-V2's and Step-3.5's dense layers), clamped where ``limit``
    is above 0 (:func:`swiglu_clamped`)."""
    if L.moe is not None:
        be.rms_norm(x, L.ffn_norm, eps, xn)
        moe_add(be, L.moe, xn, x, buf)
        return
    T, n_ff = x.shape[0], L.w_gate.shape[0]
    gate, up = buf.get("gate", T, n_ff), buf.get("up", T, n_ff)
    be.norm_linear_many(x, L.ffn_norm, eps, xn, (L.w_gate, L.w_up), (gate, up))
    if limit > 0.0:
        clamped_glu(be, gate, up, limit)
        be.linear_add(L.w_down, gate, x)
    else:
        be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)


def swiglu_clamped(g: np.ndarray, u: np.ndarray, limit: float) -> None:
    """``g = min(silu(g), limit) * clamp(u, -limit, limit)`` in place (``u`` clamped too): Step-3.5's SwiGLU, as llama.cpp
    clamps it where the file's ``swiglu_clamp_exp``/``swiglu_clamp_shexp`` is above 0 (the SiLU first, then the clamps)."""
    g *= 0.5 + 0.5 * np.tanh(0.5 * g)  # silu, without exp's overflow for large negative g
    np.minimum(g, np.float32(limit), out=g)
    np.clip(u, np.float32(-limit), np.float32(limit), out=u)
    g *= u


def clamped_glu(be: Backend, g: Any, u: Any, limit: float, gate_first: bool = False) -> None:
    """``g = min(silu(g), limit) * clamp(u, -limit, limit)`` (:func:`swiglu_clamped`) on either backend: the CPU's in host
    numpy, a device's in a kernel (a captured decode step brings nothing to the host).  ``gate_first``: the gate
    clamped before its SiLU, ``silu(min(g, limit)) * clamp(u, -limit, limit)`` (ggml's ``swiglu_clamp``)."""
    if be.name == "cpu":
        if gate_first:  # (silu(g) <= limit then, which swiglu_clamped's min leaves as it is)
            np.minimum(g, np.float32(limit), out=g)
        swiglu_clamped(g, u, limit)
    else:
        be.swiglu_clamp(g, u, g, limit, gate_first)


def gelu_glu(be: Backend, g: Any, u: Any) -> None:
    """``g = gelu(g) * u``, ggml's float16-table GELU (Grok's), on either backend as :func:`clamped_glu`."""
    if be.name == "cpu":
        g[...] = gelu(g) * u
    else:
        be.gelu_f16_mul(g, u, g)


def experts_add(be: Backend, moe: MoE, xn: np.ndarray, x: np.ndarray, buf: Buffers, top: np.ndarray, wts: np.ndarray) -> None:
    """``x += `` the chosen experts' weighted outputs, each expert run once over all the tokens that chose it."""
    n_embd = xn.shape[1]
    n_ff = moe.up.shape[0] // moe.n_expert
    for e in np.unique(top):
        rows, slot = np.nonzero(top == e)
        n = len(rows)
        xe = buf.get("moe_x", n, n_embd)
        np.take(xn, rows, axis=0, out=xe)
        g, u, d = buf.get("moe_gate", n, n_ff), buf.get("moe_up", n, n_ff), buf.get("moe_down", n, n_embd)
        if moe.gate is None:  # (ungated: the up product alone, its activation in place)
            be.linear(expert(moe.up, e, moe.n_expert), xe, g)
        else:
            be.linear_many((expert(moe.gate, e, moe.n_expert), expert(moe.up, e, moe.n_expert)), xe, (g, u))
        if moe.gate_b is not None:
            g += moe.gate_b[e]
        if moe.up_b is not None:
            u += moe.up_b[e]
        if moe.swiglu_limit > 0.0:  # (Step-3.5's: host work, as the routing)
            if moe.clamp_gate_first:  # (Maple's: silu(g) <= limit then, which swiglu_clamped's min leaves as it is)
                np.minimum(g, np.float32(moe.swiglu_limit), out=g)
            swiglu_clamped(g, u, moe.swiglu_limit)
        elif moe.act == "swiglu_oai":
            from ..ops.cpu.moe import swiglu_oai  # (here, not at the top: `kvrun info` of a llama imports no kernels)

            swiglu_oai(g, u, g)
        elif moe.act == "relu":  # (ReGLU: host work, as the routing; the one-token kernel knows silu and swiglu_oai only)
            np.maximum(g, 0.0, out=g)
            g *= u
        elif moe.act == "relu_sqr":
            be.relu_sqr(g, g)
        elif moe.act == "gelu":  # (as ggml's CPU GELU: its float16 table, which Grok's large gates meet at 1e-3 otherwise)
            g[...] = gelu(g) * u
        else:
            be.silu_mul(g, u, g)
        be.linear(expert(moe.down, e, moe.n_expert), g, d)
        if moe.down_b is not None:
            d += moe.down_b[e]
        d *= wts[rows, slot][:, None]
        x[rows] += d  # a token picks an expert once: rows are distinct


def shared_add(be: Backend, sh: SharedExpert, xn: np.ndarray, x: np.ndarray, buf: Buffers) -> None:
    """``x += `` the shared expert's output for every token of ``xn`` (times its sigmoid gate, where it has one)."""
    T, n_embd = xn.shape
    n_ff = sh.gate.shape[0]
    g, u = buf.get("shexp_gate", T, n_ff), buf.get("shexp_up", T, n_ff)
    be.linear_many((sh.gate, sh.up), xn, (g, u))
    if sh.act == "swiglu_oai":  # (MiniMax-M3's: never gated)
        if be.name == "cpu":
            from ..ops.cpu.moe import swiglu_oai

            swiglu_oai(g, u, g)
        else:  # (a kernel: a captured decode step brings nothing to the host)
            be.swiglu_oai(g, u, g)
        be.linear_add(sh.down, g, x)
        return
    if sh.swiglu_limit > 0.0:  # (Step-3.5's clamped shared expert: never gated)
        clamped_glu(be, g, u, sh.swiglu_limit)
        be.linear_add(sh.down, g, x)
        return
    if sh.gate_inp is None:
        be.linear_glu(sh.down, g, u, x, "silu", accumulate=True)
        return
    s, d = buf.get("shexp_gate_inp", T, 1), buf.get("shexp_down", T, n_embd)
    be.linear(sh.gate_inp, xn, s)
    be.linear_glu(sh.down, g, u, d, "silu")
    be.sigmoid_gated_add(x, d, s)
