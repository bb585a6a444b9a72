"""A tiny random InternVL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "internvl") and a Qwen2 text model whose width is the projector's output and whose vocabulary
knows InternVL's ``<img>`` and ``</img>``.

The projector is laid out as llama.cpp's converter writes InternVL's (``v.patch_embd``, ``v.class_embd``,
``v.position_embd`` with the CLS token's row last, ``v.blk.N.*`` with LayerScale ``ls1``/``ls2``,
``mm.model.mlp.0`` the LayerNorm, ``mm.model.mlp.1``/``.3`` the MLP), at toy sizes: 32-pixel tiles (InternVL's are 448) in 8-pixel patches (4x4
patches and the CLS token, pixel-shuffled 2x2 into 4 rows of 4 x 32), a 32-wide encoder of 2 layers, and the
default 1 to 12 tiles.  The text model is tinymodel's qwen2 geometry (QKV biases) with ``<img>`` and ``</img>``
added as control tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import add_geometry, add_vocab, mmproj_writer, write_vit
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 32, 8, 2, 32, 48, 2, 2, 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # (InternVL's: ImageNet's)
IMAGE_TOKENS = ["<img>", "</img>"]


def write_tiny_internvl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["qwen2"][0]) -> Path:
    """A random InternVL projector; its matrices (patch kernel and MLP included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-internvl-mmproj", "internvl", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd,
                      MEAN, STD, scale=SCALE)  # fmt: skip
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE, internvit=True)
    k = V_EMBD * SCALE * SCALE  # the pixel shuffle's width
    vec("mm.model.mlp.0.weight", k)
    vec("mm.model.mlp.0.bias", k, 0.0)
    mat("mm.model.mlp.1.weight", MM_FF, k, 0.2)
    vec("mm.model.mlp.1.bias", MM_FF, 0.0)
    mat("mm.model.mlp.3.weight", n_text_embd, MM_FF, 0.2)
    vec("mm.model.mlp.3.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_internvl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random Qwen2 text model (tinymodel's geometry, QKV biases) whose vocabulary knows ``<img>`` and ``</img>``."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY["qwen2"]
    toks, merges, types = byte_vocab()
    toks, types = toks + IMAGE_TOKENS, types + [3] * len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-internvl-text")
    add_geometry(w, 4096, n_embd, n_layer, n_ff, n_head, n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    add_vocab(w, toks, merges, types, chat_template)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", len(toks), n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        vec(b + "attn_q.bias", n_head * head_dim, 0.0)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
