"""Tiny random llamas whose byte-level vocabulary (tinymodel.byte_vocab) has fill-in-the-middle tokens, for
/infill (runtime/llamaserver.py) and its fixture (tools/make_llamaserver_fixtures.py).

The variants cover how llama.cpp finds a vocabulary's FIM tokens (src/llama-vocab.cpp):

* ``qwen``: Qwen2.5-Coder's texts (``<|fim_prefix|>`` ... ``<|repo_name|>``, ``<|file_sep|>``) and no id keys:
  found by their text, repo-level pattern (FIM_REP and FIM_SEP);
* ``keys``: texts llama.cpp would not recognise, named by ``tokenizer.ggml.fim_*_token_id``;
* ``codellama``: CodeLlama's ``<PRE>`` ``<SUF>`` ``<MID>`` ``<EOT>``, no FIM_REP / FIM_SEP (extra files joined by
  a snippet separator), and BOS added (``add_bos_token``), as SentencePiece vocabularies do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from tinymodel import ARCH_GEOMETRY, Q, _finish, _random_tensors, byte_vocab

#: variant -> the FIM tokens appended to the byte vocabulary (all control tokens), and whether their ids are stated
FIM_VOCABS: dict[str, tuple[tuple[str, ...], bool]] = {
    "qwen": (("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"), False),
    "keys": (("<fim:pre>", "<fim:suf>", "<fim:mid>", "<fim:pad>", "<fim:rep>", "<fim:sep>"), True),
    "codellama": (("<PRE>", "<SUF>", "<MID>", "<EOT>"), False),
}
KEYS = ("fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")  # (the keys variant's order)


def write_tiny_fim(path: Path, variant: str = "qwen", seed: int = 0, n_ctx_train: int = 4096) -> Path:
    """A random 2-layer llama (F32) with the ``variant``'s FIM tokens after ``<|endoftext|>`` (BOS and EOS)."""
    extra, keyed = FIM_VOCABS[variant]
    toks, merges, types = byte_vocab()
    base = len(toks)
    toks, types = toks + list(extra), types + [3] * len(extra)
    n_vocab = len(toks)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY["llama"]
    w = GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-fim-{variant}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(base - 1)
    w.add_bos_token_id(base - 1)
    w.add_add_bos_token(variant == "codellama")
    if keyed:
        for i, k in enumerate(KEYS):
            w.add_uint32(f"tokenizer.ggml.{k}_token_id", base + i)
    mat, vec = _random_tensors(w, np.random.default_rng(seed), Q.F32)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
