"""A tiny random Granite SWA GGUF (``tinymodel.write_tiny_model(arch="granite_swa")`` writes it through here).

As llama.cpp's converter lays out GraniteSWAForCausalLM (``conversion/granite.py``): Granite's multipliers (far enough
from 1 to matter, as tinymodel's granite), ``attn_sinks`` one a head in every layer, a window of 8 with the
``sliding_window_pattern`` array the converter writes from ``layer_types`` (here [window, global, window, window], no
fixed period's), the ``rope_pattern`` array it writes from ``no_rope_layers`` (here layer 2, a window layer, without
rope), q/k/v apart and a dense SwiGLU FFN, an output head of its own.

``variant="moe"``: GraniteMoeSWAForCausalLM's layout: Q, K, V fused in ``attn_qkv`` with a bias, an ``attn_output``
bias, 4 experts (2 a token) in every layer with gate and up fused in ``ffn_gate_up_exps`` (as wide as
``feed_forward_length``), a shared expert ``expert_shared_feed_forward_length`` wide with its gate and up fused in
``ffn_up_shexp``; ``expert_weights_norm`` stated false, which llama.cpp's graph does not read (it renormalises).
The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (64, 4, 2, 16, 96, 4)
WINDOW = 8
PATTERN = (True, False, True, True)
ROPE_PATTERN = (True, True, False, True)
#: embedding, residual, attention, logit (tinymodel's granite's)
SCALES = (3.0, 0.5, 0.2, 4.0)
#: the MoE variant's experts, used a token, shared expert's width
MOE = (4, 2, 32)


def write_tiny_granite_swa(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``variant`` "" (dense) or "moe"."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _write_swiglu, byte_vocab

    assert variant in ("", "moe"), variant
    moe = variant == "moe"
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_sh = MOE
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "granite_swa")
    w.add_name("tiny-granite-swa")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(PATTERN))
    w.add_array("granite_swa.attention.rope_pattern", list(ROPE_PATTERN))  # (gguf-py's add_rope_pattern)
    emb, res, att, logit = SCALES
    w.add_embedding_scale(emb)
    w.add_residual_scale(res)
    w.add_attention_scale(att)
    w.add_logit_scale(logit)
    if moe:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_shared_feed_forward_length(n_ff_sh)
        w.add_expert_weights_norm(False)  # (unread: llama.cpp's graph renormalises)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if moe:
            mat(b + "attn_qkv.weight", (n_head + 2 * n_head_kv) * hd, n_embd)
            vec(b + "attn_qkv.bias", (n_head + 2 * n_head_kv) * hd, 0.0, 0.1)
        else:
            mat(b + "attn_q.weight", n_head * hd, n_embd)
            mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
            mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        if moe:
            vec(b + "attn_output.bias", n_embd, 0.0, 0.2)
        # (logits about as large as the heads' scores: a head's sink takes a share of its softmax worth seeing)
        vec(b + "attn_sinks.weight", n_head, 0.5, 1.0)
        vec(b + "ffn_norm.weight", n_embd)
        if moe:
            mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5, f32=True)
            tensor3(b + "ffn_gate_up_exps.weight", (n_expert, 2 * n_ff, n_embd))
            tensor3(b + "ffn_down_exps.weight", (n_expert, n_embd, n_ff))
            mat(b + "ffn_up_shexp.weight", 2 * n_ff_sh, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_sh)
        else:
            _write_swiglu(mat, b, n_embd, n_ff)
    return _finish(w, path)
