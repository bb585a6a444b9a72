"""A tiny random EAGLE-3 draft (llama.cpp's ``eagle3``) and the tiny Llama it drafts for.

The target: a 4-layer Llama (tinymodel's llama geometry, 64 wide, deeper so that three of its layers' outputs can be
read: llama.cpp's ``extract_layers`` are layer inputs, 1..3 here, the outputs of layers 0..2).

The draft, as llama.cpp's converter writes one (conversion/llama.py, ``is_eagle3``): Llama's keys with one block,
``target_layers`` (3 ids) and ``target_hidden_size``, the optional ``norm_before_residual`` and ``norm_before_fc``
flags; ``fc`` [n_embd, 3 * target width], one block whose Q/K/V read [the normed token embedding, the normed fused
features] side by side (2 * n_embd wide) with ``attn_norm_2`` (the checkpoint's ``hidden_norm``) on the features;
the target's tokenizer.  Two variants:

- ``""``: 48 wide (not the target's 64), its own ``token_embd`` and ``output`` over a draft vocabulary of 96 tokens,
  ``d2t`` (int64, each draft token's target id, as the converter writes it: absolute), ``norm_before_fc`` with
  ``enc.output_norm`` [192], ``rope_freqs`` (Llama 3's per-frequency factors), target layers (1, 2, 3);
- ``"shared"``: 64 wide, no ``token_embd``, ``output`` nor ``d2t`` (the target's embedding and head are used, as
  llama.cpp's ``ctx_other``), ``norm_before_residual`` (the residual is the normed features), target layers (3, 1, 2)
  in that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: the target: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
TARGET = (64, 4, 2, 16, 96, 4)
#: the draft's variants: n_embd, n_head, n_head_kv, head_dim, n_ff, target layers, own embedding/head/d2t,
#: norm_before_fc, norm_before_residual
VARIANTS = {
    "": (48, 4, 2, 12, 80, (1, 2, 3), True, True, False),
    "shared": (64, 4, 2, 16, 96, (3, 1, 2), False, False, True),
}
N_DRAFT_VOCAB = 96  #: the draft vocabulary of the variant with its own head (d2t: one target id each)


def write_tiny_eagle3_target(path: Path, seed: int = 0) -> Path:
    """The 4-layer Llama the drafts are made for (float32, the byte vocabulary)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = TARGET
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-eagle3-target")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(_file_type(Q.F32))
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, Q.F32)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd, 0.3)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.3)
    return _finish(w, path)


def write_tiny_eagle3(path: Path, variant: str = "", seed: int = 1, drop: tuple[str, ...] = (), drop_keys: tuple[str, ...] = (),
                      target_layers: tuple[int, ...] | None = None, n_layer: int = 1) -> Path:  # fmt: skip
    """The draft at ``path`` (float32), one of :data:`VARIANTS`; ``drop`` leaves those tensors out and ``drop_keys``
    those metadata keys (``eagle3.`` less), the rest unmoved; ``target_layers`` and ``n_layer`` other than the
    variant's (the one-line errors' tests)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, layers, own, norm_fc, norm_res = VARIANTS[variant]
    layers = layers if target_layers is None else target_layers
    n_tgt = TARGET[0]
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "eagle3")
    keys = {
        "context_length": lambda k: w.add_uint32(k, 1024),
        "embedding_length": lambda k: w.add_uint32(k, n_embd),
        "block_count": lambda k: w.add_uint32(k, n_layer),
        "feed_forward_length": lambda k: w.add_uint32(k, n_ff),
        "attention.head_count": lambda k: w.add_uint32(k, n_head),
        "attention.head_count_kv": lambda k: w.add_uint32(k, n_head_kv),
        "attention.layer_norm_rms_epsilon": lambda k: w.add_float32(k, 1e-5),
        "rope.freq_base": lambda k: w.add_float32(k, 500000.0 if own else 10000.0),
        "rope.dimension_count": lambda k: w.add_uint32(k, hd),
        "vocab_size": lambda k: w.add_uint32(k, n_vocab),
        "target_layers": lambda k: w.add_array(k, list(layers)),
        "target_hidden_size": lambda k: w.add_uint32(k, n_tgt),
        "norm_before_residual": lambda k: w.add_bool(k, norm_res),
        "norm_before_fc": lambda k: w.add_bool(k, norm_fc),
    }
    w.add_name("tiny-eagle3" + (f"-{variant}" if variant else ""))
    for key, add in keys.items():
        if key not in drop_keys:
            add(f"eagle3.{key}")
    w.add_file_type(_file_type(Q.F32))
    _add_byte_vocab(w)

    mat, vec, _ = _random_tensors_dropping(w, rng, Q.F32, drop)
    if own:
        mat("token_embd.weight", n_vocab, n_embd, 0.5)
    mat("fc.weight", n_embd, 3 * n_tgt, 0.15)
    if norm_fc:
        vec("enc.output_norm.weight", 3 * n_tgt, 1.0, 0.3)
    vec("output_norm.weight", n_embd)
    if own:
        mat("output.weight", N_DRAFT_VOCAB, n_embd, 0.5)
        d2t = np.sort(rng.choice(n_vocab, N_DRAFT_VOCAB, replace=False)).astype(np.int64)
        if "d2t" not in drop:
            w.add_tensor("d2t", d2t, raw_dtype=Q.I64)
        n_rot = hd // 2
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, n_rot).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd, 1.0, 0.3)
        vec(b + "attn_norm_2.weight", n_embd, 1.0, 0.3)
        mat(b + "attn_q.weight", n_head * hd, 2 * n_embd, 0.2)
        mat(b + "attn_k.weight", n_head_kv * hd, 2 * n_embd, 0.2)
        mat(b + "attn_v.weight", n_head_kv * hd, 2 * n_embd, 0.2)
        mat(b + "attn_output.weight", n_embd, n_head * hd, 0.3)
        vec(b + "ffn_norm.weight", n_embd, 1.0, 0.3)
        mat(b + "ffn_gate.weight", n_ff, n_embd, 0.3)
        mat(b + "ffn_up.weight", n_ff, n_embd, 0.3)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.3)
    return _finish(w, path)
