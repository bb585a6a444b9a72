"""Tiny random Jais, CodeShell, Refact, PLM, PLaMo (v1) and Chameleon GGUFs (``tinymodel.write_tiny_model(arch=...)``
writes them through here), each as llama.cpp's converter lays it out, with what sets it apart.

* ``jais``: ALiBi (``attention.max_alibi_bias`` 8) over 5 heads (not a power of two, as Jais-13B's 40), fused
  ``attn_qkv`` with its bias, LayerNorms and every projection biased, a biased SwiGLU FFN, its own output head;
* ``codeshell``: GPT-2's biased LayerNorm block with rope over halves of the whole head, grouped-query attention (2 K/V
  heads for 4), fused ``attn_qkv`` with its bias, an ungated GELU FFN, its own output head;
* ``refact``: the Llama layout without rope, ALiBi (llama.cpp's fixed maximum bias 8), multi-query (one K/V head, as
  Refact-1.6B's), its own output head;
* ``plm``: DeepSeek-V2-Lite's latent attention (no query LoRA: ``attn_q``; ``attn_kv_a_mqa`` -> latent of 32 and a
  shared rope key of 8, ``attn_kv_b``), key heads 16 + 8 wide, value heads 16, an ungated squared-ReLU FFN, the output
  head tied (llama.cpp reads no ``output.weight``);
* ``plamo``: the Llama layout (RMSNorm, SwiGLU, rope over halves), attention and FFN side by side from one norm, GQA,
  its own output head;
* ``chameleon``: the Llama layout with per-head Q/K LayerNorms (weights and biases of their own for every head), rope over
  consecutive pairs, GQA, its own output head; Chameleon's vocabulary layout: 4 special tokens, the 8192 image tokens
  llama.cpp suppresses (ids 4 to 8195), then the text tokens (here the byte-level ones), so one logits row holds the image
  range and the fixture's other rows are not overwritten.  The output head's image rows are zero (their logits 0: the
  fixture compresses to the text columns); ``variant`` "swin": ``swin_norm`` (the norms after attention and the FFN,
  not before: Chameleon-30B's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "jais": (80, 5, 5, 16, 96, 2),
    "codeshell": (64, 4, 2, 16, 256, 2),
    "refact": (64, 4, 1, 16, 96, 2),
    "plm": (64, 4, 4, 24, 96, 2),  # (head_dim: the keys' qk_nope 16 + qk_rope 8)
    "plamo": (64, 4, 2, 16, 96, 2),
    "chameleon": (64, 4, 2, 16, 96, 2),
}
#: PLM's latent: kv_lora_rank, the rope part of each key, V's head width
PLM_KV_RANK, PLM_ROPE, PLM_HEAD_V = 32, 8, 16
#: Chameleon's vocabulary: 4 special tokens, then the 8192 image tokens, then the text ones
CHAMELEON_SPECIAL, CHAMELEON_IMAGE = 4, 8192

_LAYERNORM = ("jais", "codeshell")  # (attention.layer_norm_epsilon, norms with biases)


def _add_chameleon_vocab(w: GGUFWriter) -> int:
    """Chameleon's vocabulary layout over the byte-level one (tinymodel.byte_vocab): 4 special tokens, the image tokens,
    then the byte-level tokens, ``<|endoftext|>`` (the last) as BOS and EOS; the vocabulary's size."""
    from tinymodel import byte_vocab

    toks, merges, types = byte_vocab()
    head = ["<s>", "<pad>", "</s>", "<reserved>"] + [f"<img{i}>" for i in range(CHAMELEON_IMAGE)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(head + toks)
    w.add_token_types([5] * len(head) + types)  # (5: unused)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(head) + len(toks) - 1)
    w.add_bos_token_id(len(head) + len(toks) - 1)
    w.add_add_bos_token(False)
    return len(head) + len(toks)


def write_tiny_classic2(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``: see the module's docstring."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[arch]
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if arch in _LAYERNORM:
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    if arch == "jais":
        w.add_max_alibi_bias(8.0)
    if arch in ("codeshell", "plamo", "chameleon", "plm"):
        w.add_rope_freq_base(10000.0)
        w.add_rope_dimension_count(PLM_ROPE if arch == "plm" else head_dim)
    if arch == "plm":
        w.add_key_length(head_dim)
        w.add_value_length(PLM_HEAD_V)
        w.add_kv_lora_rank(PLM_KV_RANK)
    if arch == "chameleon" and variant == "swin":
        w.add_bool(f"{arch}.swin_norm", True)
    w.add_file_type(_file_type(qtype))
    if arch == "chameleon":
        n_vocab = _add_chameleon_vocab(w)
    else:
        _add_byte_vocab(w)

    mat, vec0 = _random_tensors(w, rng, qtype)
    biased = arch in _LAYERNORM

    def vec(name: str, n: int, base: float = 1.0) -> None:  # (biases only where the architecture has them)
        if biased or not name.endswith(".bias"):
            vec0(name, n, base)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    vec("output_norm.bias", n_embd, 0.0)
    if arch == "chameleon":  # (the image tokens' rows zero; float32 whatever qtype)
        out = (rng.standard_normal((n_vocab, n_embd)) * 0.5).astype(np.float32)
        out[CHAMELEON_SPECIAL : CHAMELEON_SPECIAL + CHAMELEON_IMAGE] = 0.0
        w.add_tensor("output.weight", out)
    elif arch != "plm":  # (PLM's head is its token embeddings; llama.cpp would find an output.weight one tensor too many)
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_norm.bias", n_embd, 0.0)
        if arch == "plm":
            nope = head_dim - PLM_ROPE
            mat(b + "attn_q.weight", q_dim, n_embd)
            mat(b + "attn_kv_a_mqa.weight", PLM_KV_RANK + PLM_ROPE, n_embd)
            vec(b + "attn_kv_a_norm.weight", PLM_KV_RANK)
            mat(b + "attn_kv_b.weight", n_head * (nope + PLM_HEAD_V), PLM_KV_RANK)
            mat(b + "attn_output.weight", n_embd, n_head * PLM_HEAD_V)
        elif arch in ("jais", "codeshell"):
            mat(b + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
            vec(b + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.0)
        else:
            mat(b + "attn_q.weight", q_dim, n_embd)
            mat(b + "attn_k.weight", kv_dim, n_embd)
            mat(b + "attn_v.weight", kv_dim, n_embd)
        if arch == "chameleon":  # (per head: [n_head, head_dim], a weight and a bias each)
            w.add_tensor(b + "attn_q_norm.weight", (1.0 + rng.standard_normal((n_head, head_dim)) * 0.1).astype(np.float32))
            w.add_tensor(b + "attn_q_norm.bias", (rng.standard_normal((n_head, head_dim)) * 0.1).astype(np.float32))
            w.add_tensor(b + "attn_k_norm.weight", (1.0 + rng.standard_normal((n_head_kv, head_dim)) * 0.1).astype(np.float32))
            w.add_tensor(b + "attn_k_norm.bias", (rng.standard_normal((n_head_kv, head_dim)) * 0.1).astype(np.float32))
        if arch != "plm":
            mat(b + "attn_output.weight", n_embd, q_dim)
            vec(b + "attn_output.bias", n_embd, 0.0)
        if arch != "plamo":  # (PLaMo's FFN reads the attention's norm)
            vec(b + "ffn_norm.weight", n_embd)
            vec(b + "ffn_norm.bias", n_embd, 0.0)
        if arch not in ("codeshell", "plm"):  # (gated FFNs)
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            vec(b + "ffn_gate.bias", n_ff, 0.0)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        vec(b + "ffn_up.bias", n_ff, 0.0)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "ffn_down.bias", n_embd, 0.0)
    return _finish(w, path)
