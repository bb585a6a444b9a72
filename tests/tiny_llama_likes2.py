"""Tiny random Qwen (1), Baichuan, Orion, XVERSE, PLaMo 3, Maincoder and Jais-2 GGUFs (``tinymodel.write_tiny_model(arch=...)``
writes them through here): seven of the Llama block's kin, each as llama.cpp's converter lays it out, with what sets it apart.

* ``qwen``: one fused ``attn_qkv`` with its bias (Q's rows, then K's, then V's), multi-head, ``feed_forward_length`` twice
  the FFN's real width (Qwen's config states it so; llama.cpp halves it), a separate output head;
* ``baichuan``: the Llama layout, Q/K/V apart (the converter cuts Baichuan's ``W_pack``), a separate output head; llama.cpp
  tells 7B (rope) from 13B (ALiBi) by the depth alone, so ``variant`` "" writes 32 layers (7B's) and "13b" 40 (13B's),
  5 heads (ALiBi's slopes for a head count not a power of two);
* ``orion``: LayerNorms with biases (before attention, the FFN, the output head), SwiGLU, GQA, a separate output head;
* ``xverse``: the Llama layout, GQA, a separate output head;
* ``plamo3``: one fused ``attn_qkv``, per-head Q/K RMSNorms, norms before *and* after attention and the FFN, the FFN's gate
  and up fused in ``ffn_up`` (gate rows first), GQA; 8 layers with a window of 8 (7 window layers, then a global one: the
  default pattern) and a local rope base of its own, a separate output head; ``variant`` "full": no window, 2 layers, tied.
  Its post-norms are named ``post_attention_norm`` and ``post_ffw_norm``, without ``.weight``: llama.cpp 0.3.36 looks
  them up by those names alone (the converter's have the suffix; kvrun reads either);
* ``maincoder``: the Llama layout with per-head Q/K RMSNorms (applied after the rope), GQA, a separate output head;
* ``jais2``: LayerNorms with biases, biases on Q, K, V and the attention output, an ungated FFN (squared ReLU) with
  biases, multi-head, the output head tied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "qwen": (64, 4, 4, 16, 96, 2),  # (n_ff the real width: the file states twice it)
    "baichuan": (64, 4, 4, 16, 96, 32),
    "baichuan-13b": (80, 5, 5, 16, 96, 40),
    "orion": (64, 4, 2, 16, 96, 2),
    "xverse": (64, 4, 2, 16, 96, 2),
    "plamo3": (64, 4, 2, 16, 96, 8),
    "plamo3-full": (64, 4, 2, 16, 96, 2),
    "maincoder": (64, 4, 2, 16, 96, 2),
    "jais2": (64, 4, 4, 16, 96, 2),
}
#: the tiny PLaMo 3's window and its local layers' rope base (the global layers' is 10000)
PLAMO3_WINDOW, PLAMO3_ROPE_BASE_SWA = 8, 1000.0

_LAYERNORM = ("orion", "jais2")  # (attention.layer_norm_epsilon, norms with biases)


def write_tiny_llama_like2(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``: see the module's docstring."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    key = f"{arch}-{variant}" if variant else arch
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[key]
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{key}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(2 * n_ff if arch == "qwen" else n_ff)
    w.add_head_count(n_head)
    if arch not in ("qwen", "baichuan", "jais2"):  # (multi-head: their converters state no KV head count)
        w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    if arch in _LAYERNORM:
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    if arch in ("plamo3", "maincoder"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if key == "plamo3":
        w.add_sliding_window(PLAMO3_WINDOW)
        w.add_float32(f"{arch}.rope.freq_base_swa", PLAMO3_ROPE_BASE_SWA)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch in _LAYERNORM:
        vec("output_norm.bias", n_embd, 0.0)
    if key not in ("plamo3-full", "jais2"):
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if arch in _LAYERNORM:
            vec(b + "attn_norm.bias", n_embd, 0.0)
        if arch in ("qwen", "plamo3"):
            mat(b + "attn_qkv.weight", q_rows + 2 * kv_rows, n_embd)
            if arch == "qwen":  # (large enough to move the scores)
                vec(b + "attn_qkv.bias", q_rows + 2 * kv_rows, 0.0, 0.5)
        else:
            mat(b + "attn_q.weight", q_rows, n_embd)
            mat(b + "attn_k.weight", kv_rows, n_embd)
            mat(b + "attn_v.weight", kv_rows, n_embd)
        if arch == "jais2":
            vec(b + "attn_q.bias", q_rows, 0.0, 0.5)
            vec(b + "attn_k.bias", kv_rows, 0.0, 0.5)
            vec(b + "attn_v.bias", kv_rows, 0.0, 0.5)
        if arch in ("plamo3", "maincoder"):  # (heads normed with weights far from one another; PLaMo 3's 8 layers of
            # sharper scores than 1 +- 0.25 would carry llama.cpp's fp16 K/V rounding past 1e-3 of the logits)
            qk_scale = 0.25 if arch == "plamo3" else 0.5
            vec(b + "attn_q_norm.weight", head_dim, 1.0, qk_scale)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, qk_scale)
        mat(b + "attn_output.weight", n_embd, q_rows)
        if arch == "jais2":
            vec(b + "attn_output.bias", n_embd, 0.0, 0.5)
        if arch == "plamo3":
            vec(b + "post_attention_norm", n_embd)  # (no ".weight": the only names llama.cpp 0.3.36 takes)
        vec(b + "ffn_norm.weight", n_embd)
        if arch in _LAYERNORM:
            vec(b + "ffn_norm.bias", n_embd, 0.0)
        if arch == "plamo3":
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)  # (gate rows, then up rows)
        elif arch == "jais2":
            mat(b + "ffn_up.weight", n_ff, n_embd)
            vec(b + "ffn_up.bias", n_ff, 0.0, 0.5)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        if arch == "jais2":
            vec(b + "ffn_down.bias", n_embd, 0.0, 0.5)
        if arch == "plamo3":
            vec(b + "post_ffw_norm", n_embd)
    return _finish(w, path)
