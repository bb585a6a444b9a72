"""A tiny random Ling 3 VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "ling3vl") and a ``bailingmoe3`` text model (Ling 3's) with rope
sections (llama.cpp's M-RoPE for it) whose width is the projector's output and whose vocabulary knows
``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter (conversion/bailingmoe3.py, BailingMoeV3VLVisionModel) writes Ling
3 VL's: the conv3d's two temporal kernels as ``v.patch_embd.weight`` and ``.weight.1`` and NO patch bias, learned
positions ``v.position_embd`` on a 6 x 6 grid (resized to the picture), ``v.blk.N.*`` LayerNorms with biases, a fused
``attn_qkv`` with bias, a GELU MLP with biases (``clip.use_gelu``), no ``v.post_ln``, the merger norm
``mm.input_norm`` (weight and bias) and the MLP ``mm.0`` / ``mm.2`` with biases.  ``extras=True`` adds what clip.cpp
also reads where a file has it (``v.patch_embd.bias``, ``v.pre_ln``, ``v.post_ln``), so that each optional step is
held to libmtmd too.  The patch is the real 16 pixels (merged 2x2: 32-pixel rows).

The text model is a 3-layer bailingmoe3 as llama.cpp 0.3.36 loads it (Kimi-Linear-like: KDA layers with short
convolutions and one MLA layer with a gate; a dense first layer then sigmoid-routed experts with a shared one), its
byte vocabulary ending in the vision markers (control tokens) and ``<|image_pad|>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

from tiny_vision import add_vocab, mmproj_writer, tensor_writer
from tinymodel import _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, POS_SIDE = 16, 32, 48, 3, 2, 6
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (distinct per channel)
EPS = 1e-5  # (the converter writes the text model's rms_norm_eps as the encoder's LayerNorm epsilon)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
#: the text model: n_embd, n_head, KDA head dim, conv kernel, MLA's nope / rope dims, MLA's v dim, kv rank, n_ff, n_layer
TEXT_GEOMETRY = (64, 4, 16, 4, 16, 8, 16, 32, 96, 3)
MLA_LAYERS = (1,)  # (the full-attention layer; the others KDA)
#: experts, used, expert FFN width, shared experts, leading dense layers, routed weights' scale
MOE = (8, 2, 32, 1, 1, 2.5)
SECTIONS = [2, 1, 1, 0]  # (rope pairs for t, h, w: their sum is MLA's rope dim / 2)
N_TEXT_EMBD = TEXT_GEOMETRY[0]


def write_tiny_ling3vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD,
                              extras: bool = False) -> Path:  # fmt: skip
    """A random Ling 3 VL projector; its matrices (patch kernels included) stored as ``qtype``; ``extras``: with the
    patch bias, pre_ln and post_ln clip.cpp reads where they are."""
    rng = np.random.default_rng(seed)
    E, p = V_EMBD, PATCH
    w = mmproj_writer(path, "tiny-ling3vl-mmproj", "ling3vl", {"clip.use_gelu": True}, POS_SIDE * p, p,
                      (E, V_FF, V_LAYER, V_HEAD), n_text_embd, MEAN, STD, merge=2, eps=EPS)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (E, 3, p, p), 0.05)
    tensor("v.patch_embd.weight.1", (E, 3, p, p), 0.05)
    if extras:
        vec("v.patch_embd.bias", E, 0.3)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((POS_SIDE * POS_SIDE, E)) * 0.5).astype(np.float32))
    if extras:
        vec("v.pre_ln.weight", E)
        vec("v.pre_ln.bias", E, 0.2)
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", E)
        vec(b + "ln1.bias", E, 0.0)
        mat(b + "attn_qkv.weight", 3 * E, E, 0.3)
        vec(b + "attn_qkv.bias", 3 * E, 0.0)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "attn_out.bias", E, 0.0)
        vec(b + "ln2.weight", E)
        vec(b + "ln2.bias", E, 0.0)
        mat(b + "ffn_up.weight", V_FF, E, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", E, V_FF, 0.3)
        vec(b + "ffn_down.bias", E, 0.0)
    if extras:
        vec("v.post_ln.weight", E)
        vec("v.post_ln.bias", E, 0.2)
    vec("mm.input_norm.weight", E)
    vec("mm.input_norm.bias", E, 0.2)
    mat("mm.0.weight", 4 * E, 4 * E, 0.2)
    vec("mm.0.bias", 4 * E, 0.0)
    mat("mm.2.weight", n_text_embd, 4 * E, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_ling3vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, sections: bool = True) -> Path:
    """A random ``bailingmoe3`` text model with rope sections (``sections=False``: without, as a text-only Ling 3's),
    its byte vocabulary ending in the vision tokens."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = TEXT_GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale = MOE
    d_inner = n_head * hd
    toks, merges, types = byte_vocab()
    toks, types = toks + list(IMAGE_TOKENS), types + [3] * len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "bailingmoe3")
    w.add_name("tiny-bailingmoe3-vl")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([1 if i in MLA_LAYERS else 0 for i in range(n_layer)])  # (0: a KDA layer)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(toks))
    w.add_ssm_conv_kernel(d_conv)
    w.add_kda_head_dim(hd)
    w.add_float32("bailingmoe3.kda.gate_lower_bound", -5.0)
    w.add_kv_lora_rank(rank)
    w.add_rope_dimension_count(n_rot)
    w.add_rope_freq_base(100.0)
    if sections:
        w.add_rope_dimension_sections(SECTIONS)
    w.add_key_length(rank + n_rot)
    w.add_value_length(rank)
    w.add_key_length_mla(nope + n_rot)
    w.add_value_length_mla(dv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_weights_scale(scale)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    add_vocab(w, toks, merges, types, None)  # (with the file type: F32)
    mat, vec = _random_tensors(w, rng, qtype)

    def raw(name: str, a: np.ndarray) -> None:
        w.add_tensor(name, a.astype(np.float32))

    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", len(toks), n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:
            mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            raw(b + "attn_k_b.weight", rng.standard_normal((n_head, rank, nope)) * 0.3)
            raw(b + "attn_v_b.weight", rng.standard_normal((n_head, dv, rank)) * 0.2)
            mat(b + "attn_gate.weight", n_head, n_embd, 0.3)
            mat(b + "attn_output.weight", n_embd, n_head * dv, 0.04)
        else:
            for c in "qkv":
                mat(b + f"attn_{c}.weight", d_inner, n_embd, 0.2)
                raw(b + f"ssm_conv1d_{c}.weight", rng.standard_normal((1, d_inner, 1, d_conv)) * 0.5)
            mat(b + "ssm_f_a.weight", d_inner, n_embd, 0.3)
            raw(b + "ssm_dt.bias", rng.uniform(-1.0, 1.0, d_inner))
            raw(b + "ssm_a", rng.uniform(0.5, 2.0, (n_head, 1)))
            mat(b + "ssm_beta.weight", n_head, n_embd, 0.3)
            mat(b + "ssm_g_a.weight", d_inner, n_embd, 0.3)
            vec(b + "ssm_norm.weight", hd)
            mat(b + "attn_output.weight", n_embd, d_inner)
        vec(b + "ffn_norm.weight", n_embd)
        if i < n_dense:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        raw(b + "ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd)) * 0.5)
        raw(b + "exp_probs_b.bias", rng.standard_normal(n_expert) * 0.3)
        for t, shape in (("gate", (n_expert, n_ff_exp, n_embd)), ("up", (n_expert, n_ff_exp, n_embd)), ("down", (n_expert, n_embd, n_ff_exp))):
            raw(b + f"ffn_{t}_exps.weight", rng.standard_normal(shape) * 0.1)
        mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
    return _finish(w, path)
