"""Tiny random Gemma 4 GGUFs (``tinymodel.write_tiny_model(arch="gemma4")`` writes them through here).

As llama.cpp's converter (``Gemma4Model``) lays Gemma 4 out: ``sliding_window_pattern`` one flag a layer; the global
layers' heads wider than the window layers' (key_length / key_length_swa) with their own KV head count (a per-layer
head_count_kv); the global layers' "proportional" rope as a ``rope_freqs`` of 1 on the turned quarter of the pairs
and 1e30 on the rest (rope.dimension_count the whole head); window layers' rope base rope.freq_base_swa; per-head
Q/K norms; ``layer_output_scale`` a layer; logits soft-capped.

``variant`` "" (the E2B/E4B layout): 6 layers, 2 window then 1 global, twice; the last 3 share K/V
(attention.shared_kv_layers: layers 3, 4 read layer 1's, layer 5 layer 2's) and have FFNs twice as wide
(``use_double_wide_mlp``: a per-layer feed_forward_length); per-layer inputs 32 wide (E2B's 256).  "moe" (the 26B-A4B layout):
4 layers, 3 window then 1 global whose V is its K (no ``attn_v``: ``attention_k_eq_v``), no K/V sharing, no
per-layer inputs; every FFN a dense GELU MLP beside 4 GELU experts (2 a token, gate and up fused in
``ffn_gate_up_exps``), the router reading the unweighted-normed stream times ``ffn_gate_inp.scale``, each expert's
output times its ``ffn_down_exps.scale``, the two halves normed apart (post_ffw_norm_1, pre_ffw_norm_2, post_ffw_norm_2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, head_dim_swa, head_dim (global), n_head_kv_swa, n_head_kv (global), n_ff
GEOMETRY = (64, 2, 16, 32, 1, 2, 96)
WINDOW = 8
#: variant -> (swa flags, shared_kv_layers, per-layer input width, double-wide FFNs in the sharing layers)
LAYOUT = {
    "": ((True, True, False, True, True, False), 3, 32, True),
    "moe": ((True, True, True, False), 0, 0, False),
}
#: the mixture of experts: n_expert, n_expert_used, n_ff_exp
EXPERTS = (4, 2, 32)
SOFTCAP = 30.0
PARTIAL_ROTARY = 0.25  # of the global layers' pairs (Gemma 4's "proportional" rope)


def write_tiny_gemma4(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "", drop: tuple[str, ...] = (),
                      image_tokens: tuple[str, ...] = (), chat_template: str | None = None) -> Path:  # fmt: skip
    """The ``variant`` model at ``path``, its matrices as ``qtype``; the tensors named in ``drop`` left out (the
    others as they would be); ``image_tokens`` added after the byte vocabulary as control tokens (Gemma 4's
    ``<|image>`` and ``<image|>``: tests/tiny_vision_gemma4.py), ``chat_template`` stored where given."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd_swa, hd, kv_swa, kv_full, n_ff = GEOMETRY
    swa, n_shared, n_pl, double_wide = LAYOUT[variant]
    n_layer = len(swa)
    kv_from = n_layer - n_shared
    moe = variant == "moe"
    n_expert, n_used, n_ff_exp = EXPERTS
    ffs = [n_ff * 2 if double_wide and il >= kv_from else n_ff for il in range(n_layer)]
    n_vocab = len(byte_vocab()[0]) + len(image_tokens)
    w = GGUFWriter(str(path), "gemma4")
    w.add_name(f"tiny-gemma4{'-' + variant if variant else ''}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffs if double_wide else n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([kv_swa if s else kv_full for s in swa])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_key_length_swa(hd_swa)
    w.add_value_length_swa(hd_swa)
    w.add_rope_dimension_count(hd)
    w.add_rope_dimension_count_swa(hd_swa)
    w.add_rope_freq_base(1_000_000.0)
    w.add_rope_freq_base_swa(10_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(swa))
    w.add_shared_kv_layers(n_shared)
    w.add_embedding_length_per_layer_input(n_pl)
    w.add_final_logit_softcapping(SOFTCAP)
    if moe:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
    w.add_vocab_size(n_vocab)
    w.add_file_type(_file_type(qtype))
    if image_tokens:  # (the byte vocabulary's, its BOS/EOS <|endoftext|> where it was, the image tokens after)
        toks, merges, types = byte_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(toks + list(image_tokens))
        w.add_token_types(types + [3] * len(image_tokens))
        w.add_token_merges(merges)
        w.add_eos_token_id(len(toks) - 1)
        w.add_bos_token_id(len(toks) - 1)
        w.add_add_bos_token(False)
    else:
        _add_byte_vocab(w)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    if drop:
        add = w.add_tensor
        w.add_tensor = lambda name, *a, **k: None if name in drop else add(name, *a, **k)  # type: ignore[method-assign]
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    n_rot = int(hd * PARTIAL_ROTARY / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), np.float32))
    if n_pl:
        mat("per_layer_token_embd.weight", n_vocab, n_pl * n_layer, 0.3)
        mat("per_layer_model_proj.weight", n_pl * n_layer, n_embd, 0.3)
        vec("per_layer_proj_norm.weight", n_pl)
    for il in range(n_layer):
        b = f"blk.{il}."
        d, kv = (hd_swa, kv_swa) if swa[il] else (hd, kv_full)
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * d, n_embd)
        if il < kv_from:
            mat(b + "attn_k.weight", kv * d, n_embd)
            if swa[il] or not moe:  # (the MoE layout's global layer: V is K, as the 26B's attention_k_eq_v)
                mat(b + "attn_v.weight", kv * d, n_embd)
            # (Q and K normed and attention unscaled: norms near 0.3 keep the scores small, where llama.cpp's fp16
            # K/V cache rounds them far under 1e-3 of the logits)
            vec(b + "attn_k_norm.weight", d, 0.3, 0.05)
        vec(b + "attn_q_norm.weight", d, 0.3, 0.05)
        mat(b + "attn_output.weight", n_embd, n_head * d)
        vec(b + "post_attention_norm.weight", n_embd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", ffs[il], n_embd, 0.3)
        mat(b + "ffn_up.weight", ffs[il], n_embd)
        mat(b + "ffn_down.weight", n_embd, ffs[il])
        vec(b + "post_ffw_norm.weight", n_embd)
        if moe:
            mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5)
            vec(b + "ffn_gate_inp.scale", n_embd, 1.0, 0.3)
            vec(b + "pre_ffw_norm_2.weight", n_embd)
            vec(b + "post_ffw_norm_1.weight", n_embd)
            vec(b + "post_ffw_norm_2.weight", n_embd)
            for name, rows, cols in (("ffn_gate_up_exps", 2 * n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
                a = (rng.standard_normal((n_expert, rows, cols)) * 0.2).astype(np.float32)
                w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
            vec(b + "ffn_down_exps.scale", n_expert, 1.0, 0.4)
        if n_pl:
            mat(b + "inp_gate.weight", n_pl, n_embd, 0.3)
            mat(b + "proj.weight", n_embd, n_pl, 0.3)
            vec(b + "post_norm.weight", n_embd)
        vec(b + "layer_output_scale.weight", 1, 0.8, 0.2)
    return _finish(w, path)
