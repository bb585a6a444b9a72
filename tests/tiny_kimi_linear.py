"""A tiny random Kimi Linear GGUF (``tinymodel.write_tiny_model(arch="kimi-linear")`` writes it through here).

As llama.cpp's converter lays out Kimi-Linear-48B-A3B (``KimiLinearModel``): head_count_kv a per-layer list, 0 for the
Kimi Delta Attention layers and 1 for the MLA ones (the converter's MQA form of the latent attention), kda.head_dim,
ssm.conv_kernel, kv_lora_rank (q_lora_rank none, as Kimi's: ``attn_q``; llama.cpp 0.3.36 reads no q_lora_rank for
kimi-linear and refuses ``attn_q_a_norm``), key_length/value_length the latent's, key_length_mla/value_length_mla the heads', rope.dimension_count
qk_rope (which Kimi's MLA never turns); a leading dense layer, then sigmoid-routed experts with ``exp_probs_b``,
renormalised and scaled (expert_weights_scale, Kimi's 2.446), a shared expert.

A KDA layer: ``attn_q``/``attn_k``/``attn_v`` each with its short convolution (``ssm_conv1d_q/k/v``, the converter's
4-D [1, d_inner, 1, d_conv]), the decay's low-rank ``ssm_f_a`` -> ``ssm_f_b`` with ``ssm_dt.bias`` per channel and
``ssm_a`` = -exp(A_log) per head, ``ssm_beta``, the output gate's ``ssm_g_a`` -> ``ssm_g_b``, ``ssm_norm`` [head_dim],
``attn_output``.

The layer writers here (``add_kda_metadata``, ``kda_layer``, ``mla_layer``, ``ffn``) are the family's:
tiny_bailingmoe3.py and tiny_kimi_k3.py call them with their own gates, names and shapes, so each file's tensors are
drawn in the same order from its seed as when each writer had its own copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, kda head_dim, d_conv, qk_nope, qk_rope, v_head_dim, kv_lora_rank, n_ff, n_layer
GEOMETRY = (64, 4, 16, 4, 16, 8, 16, 32, 96, 4)
#: which layers attend (MLA); the rest are KDA (Kimi's: every 4th from the 4th; here layers 1 and 3)
MLA_LAYERS = (1, 3)
#: experts, used a token, their width, shared experts, leading dense layers, the chosen weights' scale
MOE = (8, 2, 32, 1, 1, 2.446)


class Adders(NamedTuple):
    """A writer's tensor adders: tinymodel's ``mat`` and ``vec`` (drawing from ``rng`` in call order) and ``raw``, an
    array drawn by the caller from ``rng`` stored float32 whatever the qtype (experts stacked, the converter's shapes)."""

    mat: Callable[..., None]
    vec: Callable[..., None]
    raw: Callable[[str, np.ndarray], None]
    rng: np.random.Generator


def adders(w: GGUFWriter, rng: np.random.Generator, qtype: int) -> Adders:
    """``w``'s adders, drawing from ``rng`` and storing matrices as ``qtype``."""
    from tinymodel import _random_tensors

    mat, vec = _random_tensors(w, rng, qtype)

    def raw(name: str, a: np.ndarray) -> None:
        w.add_tensor(name, a.astype(np.float32))

    return Adders(mat, vec, raw, rng)


def add_kda_metadata(
    w: GGUFWriter, n_vocab: int, geometry: tuple = GEOMETRY, moe: tuple = MOE, mla_layers: tuple = MLA_LAYERS, *,
    n_mtp: int = 0, safe_gate: bool = False, lower_bound: float | None = None, q_rank: int = 0, rope_base: float = 0.0,
    sections: list[int] | None = None, latent_value_length: bool = True, n_ff_shexp: int = 0, weights_norm: bool = False,
) -> None:  # fmt: skip
    """The family's keys from the context length to the gating function, in the converters' order (``geometry`` and
    ``moe`` laid out as this module's): ``n_mtp`` multi-token-prediction layers counted in block_count (attending),
    ``kda.safe_gate`` and ``kda.gate_lower_bound`` where stated, a query LoRA of ``q_rank``, the rope base and sections
    where given, the latent's ``value_length`` (Ling states none), the shared expert's own width, weights renormalised."""
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = geometry
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale = moe
    A = w.arch + "."
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer + n_mtp)
    if n_mtp:
        w.add_nextn_predict_layers(n_mtp)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([1 if i in mla_layers or i >= n_layer else 0 for i in range(n_layer + n_mtp)])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_ssm_conv_kernel(d_conv)
    w.add_kda_head_dim(hd)
    if safe_gate:
        w.add_bool(A + "kda.safe_gate", True)
    if lower_bound is not None:
        w.add_float32(A + "kda.gate_lower_bound", lower_bound)
    if q_rank:
        w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    w.add_rope_dimension_count(n_rot)
    if rope_base:
        w.add_rope_freq_base(rope_base)
    if sections:
        w.add_rope_dimension_sections(sections)
    w.add_key_length(rank + n_rot)
    if latent_value_length:
        w.add_value_length(rank)
    w.add_key_length_mla(nope + n_rot)
    w.add_value_length_mla(dv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    if n_ff_shexp:
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.add_expert_shared_count(n_shared)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_weights_scale(scale)
    if weights_norm:
        w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)


def kda_layer(
    t: Adders, b: str, n_embd: int, n_head: int, hd: int, d_conv: int, *, decay_rank: int = 0,
    gate: tuple[str, ...] = ("ssm_g_a", "ssm_g_b"), dt: tuple[float, float] = (-1.0, 1.0),
    a_log: tuple[float, float] = (-1.0, 1.0), a_shape: tuple[int, ...] = (), a_sign: float = -1.0,
) -> None:  # fmt: skip
    """A KDA layer's tensors under ``b``: the decay low rank through ``decay_rank`` (``ssm_f_a`` -> ``ssm_f_b``) or full
    rank (0: ``ssm_f_a`` alone); the output gate low rank through head_dim where ``gate`` names two matrices, full rank
    where one; ``ssm_dt.bias`` ~ U(``dt``); ``ssm_a`` = ``a_sign`` * exp(U(``a_log``)) shaped ``a_shape`` (() for a plain
    [n_head])."""
    mat, vec, raw, rng = t
    d_inner = n_head * hd
    for c in "qkv":
        mat(b + f"attn_{c}.weight", d_inner, n_embd, 0.2)
    for c in "qkv":
        raw(b + f"ssm_conv1d_{c}.weight", rng.standard_normal((1, d_inner, 1, d_conv)) * 0.5)
    if decay_rank:
        mat(b + "ssm_f_a.weight", decay_rank, n_embd, 0.3)
        mat(b + "ssm_f_b.weight", d_inner, decay_rank, 0.3)
    else:
        mat(b + "ssm_f_a.weight", d_inner, n_embd, 0.3)
    raw(b + "ssm_dt.bias", rng.uniform(*dt, d_inner))
    raw(b + "ssm_a", a_sign * np.exp(rng.uniform(*a_log, a_shape or n_head)))
    mat(b + "ssm_beta.weight", n_head, n_embd, 0.3)
    if len(gate) == 2:
        mat(b + gate[0] + ".weight", hd, n_embd, 0.3)
        mat(b + gate[1] + ".weight", d_inner, hd, 0.3)
    else:
        mat(b + gate[0] + ".weight", d_inner, n_embd, 0.3)
    vec(b + "ssm_norm.weight", hd)
    mat(b + "attn_output.weight", n_embd, d_inner)


def mla_layer(
    t: Adders, b: str, n_embd: int, n_head: int, nope: int, n_rot: int, dv: int, rank: int, *, q_rank: int = 0,
    gate_rows: int = 0,
) -> None:  # fmt: skip
    """An MLA layer's tensors under ``b``: ``attn_q``, or a query LoRA of ``q_rank``; an output gate ``attn_gate``
    [n_embd -> ``gate_rows``] where given."""
    mat, vec, raw, rng = t
    if q_rank:
        mat(b + "attn_q_a.weight", q_rank, n_embd, 0.15)
        vec(b + "attn_q_a_norm.weight", q_rank)
        mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, 0.2)
    else:
        mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, 0.15)
    mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
    vec(b + "attn_kv_a_norm.weight", rank)
    raw(b + "attn_k_b.weight", rng.standard_normal((n_head, rank, nope)) * 0.3)  # (k_b transposed, as the converter)
    raw(b + "attn_v_b.weight", rng.standard_normal((n_head, dv, rank)) * 0.2)
    if gate_rows:
        mat(b + "attn_gate.weight", gate_rows, n_embd, 0.4)
    # (a small share of the stream: llama.cpp caches the latent in fp16 and kvrun the heads' K and V, and the two
    # roundings, 5e-4 of the attention's output, would otherwise reach the logits undiminished)
    mat(b + "attn_output.weight", n_embd, n_head * dv, 0.04)


def ffn(
    t: Adders, b: str, n_embd: int, n_ff: int, dense: bool, n_expert: int, n_ff_exp: int, n_ff_shexp: int, *,
    scale: float = 0.3, router: float = 0.8, experts: tuple[float, float] = (0.3, 0.1), latent: int = 0,
) -> None:  # fmt: skip
    """``ffn_norm`` and a dense FFN (``dense``) or the experts: the router ~ N(0, ``router``²) with ``exp_probs_b``,
    the routed gate/up and down ~ N(0, ``experts``²), ``latent`` wide between ``ffn_routed_down`` and
    ``ffn_routed_norm``/``ffn_routed_up`` where given (Kimi K3's), a shared expert ``n_ff_shexp`` wide; the dense and
    shared gate/up ~ N(0, ``scale``²)."""
    mat, vec, raw, rng = t
    vec(b + "ffn_norm.weight", n_embd)
    if dense:
        mat(b + "ffn_gate.weight", n_ff, n_embd, scale)
        mat(b + "ffn_up.weight", n_ff, n_embd, scale)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        return
    width = latent or n_embd
    raw(b + "ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd)) * router)
    raw(b + "exp_probs_b.bias", rng.standard_normal(n_expert) * 0.3)
    if latent:
        mat(b + "ffn_routed_down.weight", latent, n_embd, 0.3)
    raw(b + "ffn_gate_exps.weight", rng.standard_normal((n_expert, n_ff_exp, width)) * experts[0])
    raw(b + "ffn_up_exps.weight", rng.standard_normal((n_expert, n_ff_exp, width)) * experts[0])
    raw(b + "ffn_down_exps.weight", rng.standard_normal((n_expert, width, n_ff_exp)) * experts[1])
    if latent:
        vec(b + "ffn_routed_norm.weight", latent)
        mat(b + "ffn_routed_up.weight", n_embd, latent, 0.1)
    mat(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd, scale)
    mat(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd, scale)
    mat(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp)


def write_tiny_kimi_linear(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale = MOE
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "kimi-linear")
    w.add_name("tiny-kimi-linear")
    add_kda_metadata(w, n_vocab)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    t = adders(w, rng, qtype)
    t.mat("token_embd.weight", n_vocab, n_embd, 0.5)
    t.vec("output_norm.weight", n_embd)
    t.mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        t.vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:
            mla_layer(t, b, n_embd, n_head, nope, n_rot, dv, rank)
        else:
            # (decays from ~0.99 to ~0.1 a token, channel by channel: some remember the prompt, some a few tokens)
            kda_layer(t, b, n_embd, n_head, hd, d_conv, decay_rank=hd, dt=(-4.0, 0.0), a_log=(-2.0, 1.0), a_shape=(1, 1, n_head, 1))
        ffn(t, b, n_embd, n_ff, i < n_dense, n_expert, n_ff_exp, n_shared * n_ff_exp, scale=0.1, router=0.5, experts=(0.1, 0.1))
    return _finish(w, path)
