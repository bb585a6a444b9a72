"""A tiny random Cohere2 MoE GGUF (``tinymodel.write_tiny_model(arch="cohere2moe")`` writes it through here).

As llama.cpp's converter lays out Cohere's MoE Command (``Cohere2MoeModel``): q/k/v apart without biases, one norm a
layer (no bias), layer 0 a dense SwiGLU FFN (``leading_dense_block_count`` 1), layers 1-3 a mixture of 8 experts (2 a
token) with ``expert_feed_forward_length``, a window of 8 and the per-layer ``sliding_window_pattern`` array the converter
writes, ``logit_scale``.  Two variants, between them every choice the graph makes:

* ``""``: LayerNorms (``attention.layer_norm_epsilon`` alone); the pattern [global, window, window, global], unlike the
  first of 4 alone an unstated one makes global (layer 0 global yet rotating: a leading dense layer; layer 3 NoPE);
  the router's sigmoid unstated (llama.cpp's default), its weights renormalised and times ``expert_weights_scale``; one
  shared expert (averaged with the routed ones); an output head of its own; a ``rope.freq_base_swa`` that llama.cpp's
  graph does not use; and an MTP block after the trunk (``nextn_predict_layers`` 1, ``blk.4``), which it does not run;
* ``"rms"``: RMSNorms (``attention.layer_norm_rms_epsilon``); no pattern stated (every 4th layer global, the first);
  softmax routing, the weights as the router gave them; no shared expert (no average); the head tied to the embeddings.

The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer (the trunk's), n_expert, n_expert_used, n_ff_exp
GEOMETRY = (64, 4, 2, 16, 96, 4, 8, 2, 32)
WINDOW = 8
PATTERN = (False, True, True, False)
LOGIT_SCALE = 0.25


def write_tiny_cohere2moe(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``variant`` "" or "rms" (above)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    if variant not in ("", "rms"):
        raise ValueError(f"cohere2moe variant {variant!r}: '' or 'rms'")
    main = variant == ""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp = GEOMETRY
    n_mtp = 1 if main else 0
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "cohere2moe")
    w.add_name("tiny-cohere2moe")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer + n_mtp)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    if main:
        w.add_layer_norm_eps(1e-5)
        w.add_rope_freq_base_swa(100.0)
        w.add_sliding_window_pattern(list(PATTERN))
        w.add_expert_weights_norm(True)
        w.add_expert_weights_scale(2.5)
        w.add_expert_shared_count(1)
        w.add_expert_shared_feed_forward_length(n_ff_exp)
        w.add_nextn_predict_layers(n_mtp)
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
    w.add_sliding_window(WINDOW)
    w.add_logit_scale(LOGIT_SCALE)
    w.add_leading_dense_block_count(1)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    def experts(b: str) -> None:
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
        for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
            a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
        if main:
            mat(b + "ffn_gate_shexp.weight", n_ff_exp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_ff_exp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_exp)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)  # (LayerNormed at once: its scale is the head's, tied in "rms")
    vec("output_norm.weight", n_embd)
    if main:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer + n_mtp):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        if i < 1:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        else:
            experts(b)
        if i >= n_layer:  # (the MTP block: the embedding and the trunk's state joined, normed apart)
            mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
            vec(b + "nextn.enorm.weight", n_embd)
            vec(b + "nextn.hnorm.weight", n_embd)
    return _finish(w, path)
