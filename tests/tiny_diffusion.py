"""Tiny random diffusion language models, laid out as llama.cpp's converters write each, for tests/test_diffusion.py
and tools/make_diffusion_fixtures.py:

* ``dream`` (Dream-v0 7B): Qwen2's block (biases on Q, K and V), ``diffusion.shift_logits`` true (its converter's).
* ``llada`` (LLaDA-8B): Llama's block (no biases), ``diffusion.shift_logits`` false (its converter's).
* ``llada-moe`` (LLaDA-MoE-7B-A1B): per-head Q/K norms, every FFN 8 softmax-routed experts (2 a token) of
  expert_feed_forward_length, ``diffusion.shift_logits`` false.

Each vocabulary is tinymodel's byte-level one and a ``<|mask|>`` control token, named by tokenizer.ggml.mask_token_id
(llama.cpp's llama_vocab_mask, which llama-diffusion-cli requires).  ``shift_logits``: None leaves the key out (the
loop's default then: shifted, as llama-diffusion-cli's); ``mask``: False leaves mask_token_id out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

ARCHS = ("dream", "llada", "llada-moe")
#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = (64, 4, 2, 16, 96, 2)
#: (count, used a token, their FFN width): llada-moe's
EXPERTS = (8, 2, 32)
#: each converter's diffusion.shift_logits
SHIFT = {"dream": True, "llada": False, "llada-moe": False}


def write_tiny_diffusion(path: Path, arch: str, seed: int = 0, shift_logits: bool | None | str = "default", mask: bool = True,
                         drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The tiny ``arch`` model (float32) at ``path``; ``drop``: tensor names left out (their values drawn all the same)."""
    from tinymodel import _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp = EXPERTS
    moe = arch == "llada-moe"
    toks, merges, types = byte_vocab()
    toks, types = toks + ["<|mask|>"], types + [3]
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6 if arch == "dream" else 1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    if moe:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
    if shift_logits == "default":
        shift_logits = SHIFT[arch]
    if shift_logits is not None:
        w.add_diffusion_shift_logits(bool(shift_logits))
    w.add_file_type(_file_type(Q.F32))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(toks) - 2)  # (<|endoftext|>)
    w.add_bos_token_id(len(toks) - 2)
    w.add_add_bos_token(False)
    if mask:
        w.add_mask_token_id(len(toks) - 1)
    n_vocab = len(toks)

    mat_, vec_ = _random_tensors(w, rng, Q.F32)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        if name in drop:
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale, f32)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    def experts(name: str, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        for r, rows in (("q", n_head * head_dim), ("k", n_head_kv * head_dim), ("v", n_head_kv * head_dim)):
            mat(b + f"attn_{r}.weight", rows, n_embd)
            if arch == "dream":
                vec(b + f"attn_{r}.bias", rows, 0.0, 0.2)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if moe:
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        if moe:
            mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5, f32=True)
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
