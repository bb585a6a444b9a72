"""Tiny random Jamba, PLaMo 2 and Deci GGUFs (``tinymodel.write_tiny_model(arch=...)`` writes them through here).

* ``jamba`` (as llama.cpp's converter lays out ``JambaForCausalLM``): head_count_kv per layer (0: a Mamba 1 layer), the
  ``ssm.*`` sizes (d_inner twice n_embd, the only expansion llama.cpp takes), per Mamba layer Mamba 1's tensors and the
  weighted norms ``ssm_dt_norm``, ``ssm_b_norm``, ``ssm_c_norm``; attention layers' q/k/v/output; every layer's
  ``ffn_norm`` then a SwiGLU FFN or, on the odd layers (``expert_layer_period`` 2, offset 1), 4 experts of which 2 a token.
  Layers: Mamba, Mamba+experts, attention, Mamba+experts (attention 1 in 4 from layer 2, as the real 1 in 8 from 4).
  ``variant`` "dense": no experts anywhere (the converter's Mini-Jamba), an output head of its own.
* ``plamo2`` (as ``Plamo2ForCausalLM``): head_count and head_count_kv per layer (0 for the Mamba layers: every other one, from
  the second here: see _plamo2), key_length, ``ssm.*`` with group_count 0, time_step_rank the Mamba heads; per Mamba layer ``ssm_in``
  (rows per head: z then x), ``ssm_conv1d`` without bias, ``ssm_x`` (B, C, then dt of max(64, n_embd / 16)), the dt/B/C
  norms, ``ssm_dt`` [n_heads, dt_dim] and its bias, ``ssm_a``, ``ssm_d`` per head; per attention layer a fused ``attn_qkv``
  and per-head ``attn_q_norm``/``attn_k_norm`` (a weight per head and channel); every layer's ``post_attention_norm``,
  ``ffn_norm``, a fused gate+up ``ffn_up``, ``ffn_down`` and ``post_ffw_norm``.
* ``deci`` (as ``DeciLMForCausalLM``, Llama-3.1-Nemotron-51B/49B): head_count, head_count_kv and feed_forward_length per
  layer: a full layer, a layer with no attention (head_count 0: the FFN alone, llama.cpp's "no_op" attention), a
  "linear attention replacement" (head_count_kv 0, head_count > 0: a matrix ``attn_output`` on the normed input), a
  layer of other widths, and a layer whose FFN is gone (feed_forward_length 0).

The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: Jamba: n_embd, n_head, n_head_kv, n_ff, n_layer, d_conv, d_state, dt_rank (d_inner 2 n_embd), experts, used
JAMBA = (64, 4, 2, 96, 4, 4, 16, 4, 4, 2)
JAMBA_KV = (0, 0, 2, 0)  # head_count_kv per layer: layer 2 attends

#: PLaMo 2: n_embd, head_dim, n_head, n_head_kv, n_ff, n_layer, d_conv, d_state, mamba heads (d_inner heads * head_dim)
PLAMO2 = (64, 16, 4, 2, 96, 4, 4, 16, 4)

#: Deci: (head_count, head_count_kv, feed_forward_length) per layer: attention, no attention, the linear replacement,
#: attention of other widths, a layer without FFN (llama.cpp drops it whole), attention again
DECI_HEADS = ((4, 2, 96), (0, 0, 128), (4, 0, 64), (4, 1, 160), (4, 2, 0), (4, 4, 96))


def write_tiny_hybrid2(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    return {"jamba": _jamba, "plamo2": _plamo2, "deci": _deci}[arch](path, qtype, seed, variant)


def _start(path: Path, arch: str, name: str, qtype: int, n_embd: int, n_layer: int, eps: float = 1e-6) -> GGUFWriter:
    from tinymodel import _add_byte_vocab, _file_type

    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_layer_norm_rms_eps(eps)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)
    return w


def _jamba(path: Path, qtype: int, seed: int, variant: str) -> Path:
    from tinymodel import _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, n_ff, n_layer, d_conv, d_state, dt_rank, n_expert, n_used = JAMBA
    d_inner, n_vocab, hd = 2 * n_embd, len(byte_vocab()[0]), n_embd // n_head
    moe = variant != "dense"
    w = _start(path, "jamba", "tiny-jamba" + ("-dense" if not moe else ""), qtype, n_embd, n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(list(JAMBA_KV))
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_expert_count(n_expert)  # (the converter writes the counts even for Mini-Jamba: 1 expert, 1 used)
    w.add_expert_used_count(n_used)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if not moe:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if JAMBA_KV[i] == 0:
            mat(b + "ssm_in.weight", 2 * d_inner, n_embd, 0.2)
            w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((d_inner, d_conv)) * 0.5).astype(np.float32))
            vec(b + "ssm_conv1d.bias", d_inner, 0.0)
            mat(b + "ssm_x.weight", dt_rank + 2 * d_state, d_inner, 0.2)
            vec(b + "ssm_dt_norm.weight", dt_rank, 1.0, 0.3)
            mat(b + "ssm_dt.weight", d_inner, dt_rank, 0.5)
            w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, d_inner).astype(np.float32))
            vec(b + "ssm_b_norm.weight", d_state, 1.0, 0.3)
            vec(b + "ssm_c_norm.weight", d_state, 1.0, 0.3)
            w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (d_inner, d_state))).astype(np.float32))
            vec(b + "ssm_d", d_inner, 1.0, 0.3)
            mat(b + "ssm_out.weight", n_embd, d_inner)
        else:
            mat(b + "attn_q.weight", n_head * hd, n_embd)
            mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
            mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * hd)
        vec(b + "ffn_norm.weight", n_embd)
        if moe and i % 2 == 1:
            mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5)
            for role, (r, c) in (("gate", (n_ff, n_embd)), ("up", (n_ff, n_embd)), ("down", (n_embd, n_ff))):
                w.add_tensor(b + f"ffn_{role}_exps.weight", (rng.standard_normal((n_expert, r, c)) * 0.1).astype(np.float32))
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


def _plamo2(path: Path, qtype: int, seed: int, variant: str) -> Path:
    from tinymodel import _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, hd, n_head, n_head_kv, n_ff, n_layer, d_conv, d_state, n_ssm_head = PLAMO2
    d_inner, dt_dim, n_vocab = n_ssm_head * hd, max(64, n_embd // 16), len(byte_vocab()[0])
    # (the converter's mamba_step 2 makes layer 0 a Mamba layer; llama.cpp then takes n_rot from layer 0's heads, 0, and its
    # rope of 0 dimensions never returns: the attention layers come first here, 0 and 2, for the oracle to run)
    is_mamba = [i % 2 == 1 for i in range(n_layer)]
    w = _start(path, "plamo2", "tiny-plamo2", qtype, n_embd, n_layer)
    w.add_vocab_size(n_vocab)
    w.add_head_count([0 if m else n_head for m in is_mamba])
    w.add_head_count_kv([0 if m else n_head_kv for m in is_mamba])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(10_000.0)
    w.add_ssm_state_size(d_state)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_time_step_rank(n_ssm_head)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_group_count(0)
    w.add_feed_forward_length(n_ff)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if is_mamba[i]:
            mat(b + "ssm_in.weight", 2 * d_inner, n_embd, 0.2)
            w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((d_inner, d_conv)) * 0.5).astype(np.float32))
            mat(b + "ssm_x.weight", 2 * d_state + dt_dim, d_inner, 0.2)
            vec(b + "ssm_dt_norm", dt_dim, 1.0, 0.3)  # (no ".weight": the names llama.cpp loads for PLaMo 2)
            vec(b + "ssm_b_norm", d_state, 1.0, 0.3)
            vec(b + "ssm_c_norm", d_state, 1.0, 0.3)
            mat(b + "ssm_dt.weight", n_ssm_head, dt_dim, 0.3)
            w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, n_ssm_head).astype(np.float32))
            w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, n_ssm_head)).astype(np.float32))
            vec(b + "ssm_d", n_ssm_head, 1.0, 0.3)
            mat(b + "ssm_out.weight", n_embd, d_inner)
        else:
            mat(b + "attn_qkv.weight", (n_head + 2 * n_head_kv) * hd, n_embd)
            w.add_tensor(b + "attn_q_norm.weight", (1.0 + rng.standard_normal((n_head, hd)) * 0.3).astype(np.float32))
            w.add_tensor(b + "attn_k_norm.weight", (1.0 + rng.standard_normal((n_head_kv, hd)) * 0.3).astype(np.float32))
            mat(b + "attn_output.weight", n_embd, n_head * hd)
        vec(b + "post_attention_norm", n_embd, 0.5, 0.2)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "post_ffw_norm", n_embd, 0.5, 0.2)
    return _finish(w, path)


def _deci(path: Path, qtype: int, seed: int, variant: str) -> Path:
    from tinymodel import _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, hd, n_layer, n_vocab = 64, 16, len(DECI_HEADS), len(byte_vocab()[0])
    w = _start(path, "deci", "tiny-deci", qtype, n_embd, n_layer, eps=1e-5)
    w.add_vocab_size(n_vocab)
    w.add_rope_freq_base(10_000.0)
    w.add_head_count([h for h, _, _ in DECI_HEADS])
    w.add_head_count_kv([kv for _, kv, _ in DECI_HEADS])
    w.add_feed_forward_length([f for _, _, f in DECI_HEADS])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i, (nh, nkv, nff) in enumerate(DECI_HEADS):
        b = f"blk.{i}."
        if nh > 0:
            vec(b + "attn_norm.weight", n_embd)
        if nkv > 0:
            mat(b + "attn_q.weight", nh * hd, n_embd)
            mat(b + "attn_k.weight", nkv * hd, n_embd)
            mat(b + "attn_v.weight", nkv * hd, n_embd)
            mat(b + "attn_output.weight", n_embd, nh * hd)
        elif nh > 0:
            mat(b + "attn_output.weight", n_embd, n_embd, 0.2)
        if nff > 0:
            vec(b + "ffn_norm.weight", n_embd)
            mat(b + "ffn_gate.weight", nff, n_embd)
            mat(b + "ffn_up.weight", nff, n_embd)
            mat(b + "ffn_down.weight", n_embd, nff)
    return _finish(w, path)
