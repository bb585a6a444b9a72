"""A tiny random Granite Switch GGUF (``tinymodel.write_tiny_model(arch="graniteswitch")`` writes it through here).

As llama.cpp's converter lays out GraniteSwitchForCausalLM (``conversion/granite.py``): Granite's multipliers (far
enough from 1 to matter, as tinymodel's granite), Q, K and V fused in ``attn_qkv``, a dense SwiGLU FFN, the output head
tied to the embeddings, and 3 adapters of rank 4: ``<proj>.lora_a`` ``[4 slots, 4, in]`` and ``.lora_b``
``[4 slots, out, 4]`` for attn_q/k/v, attn_output, ffn_gate/up/down.  Slot 0 is random here where the converter writes
zeros, so that a runtime which skips it is seen.

The control tokens are chosen from tools/make_arch_fixtures.py's prompt: adapter 1 is switched on by token 14 (at
position 8), adapter 3 by token 116 (position 27), adapter 2 by token 0, which the prompt never has, so its 40 tokens
route to slots 0 (positions 0-7), 1 (8-26) and then 2, the mean of the two control tokens seen, which no token of it
names.  Each control token is embedded as another (200, 201, 202); ``router_gain`` the converter's default, 15, stated.
The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (64, 4, 2, 16, 96, 3)
#: embedding, residual, attention, logit (tinymodel's granite's)
SCALES = (3.0, 0.5, 0.2, 4.0)
ACTIVATE = (14, 0, 116)
SUBSTITUTE = (200, 201, 202)
RANK = 4
GAIN = 15.0


def write_tiny_graniteswitch(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype`` (the adapters' tensors float32, as the converter leaves them)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_slots = len(ACTIVATE) + 1
    n_vocab = len(byte_vocab()[0])
    arch = "graniteswitch"
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-graniteswitch")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_expert_used_count(0)  # (the converter pins it: a dense model)
    emb, res, att, logit = SCALES
    w.add_embedding_scale(emb)
    w.add_residual_scale(res)
    w.add_attention_scale(att)
    w.add_logit_scale(logit)
    # (gguf-py's add_adapter_*: llama.cpp's LLM_KV_ADAPTER_*)
    w.add_uint32(f"{arch}.adapters.count", len(ACTIVATE))
    w.add_uint32(f"{arch}.adapters.lora_rank", RANK)
    w.add_array(f"{arch}.adapters.token_ids_activate", list(ACTIVATE))
    w.add_array(f"{arch}.adapters.token_ids_substitute", list(SUBSTITUTE))
    w.add_float32(f"{arch}.adapters.router_gain", GAIN)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    def lora(name: str, n_in: int, n_out: int, scale: float = 0.1) -> None:
        w.add_tensor(name + ".lora_a", (rng.standard_normal((n_slots, RANK, n_in)) * 0.1).astype(np.float32))
        w.add_tensor(name + ".lora_b", (rng.standard_normal((n_slots, n_out, RANK)) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    n_q, n_kv = n_head * hd, n_head_kv * hd
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_qkv.weight", n_q + 2 * n_kv, n_embd, 0.2)  # (scores large enough that their scale shows)
        mat(b + "attn_output.weight", n_embd, n_q)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        for proj, n_in, n_out in (("attn_q", n_embd, n_q), ("attn_k", n_embd, n_kv), ("attn_v", n_embd, n_kv),
                                  ("attn_output", n_q, n_embd), ("ffn_gate", n_embd, n_ff), ("ffn_up", n_embd, n_ff),
                                  ("ffn_down", n_ff, n_embd)):  # fmt: skip
            lora(b + proj, n_in, n_out, 0.3 if proj in ("attn_q", "attn_k") else 0.1)  # (Q's and K's seen through the scores)
    return _finish(w, path)
