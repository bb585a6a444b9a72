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

from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 32, 8, 2, 32, 48, 2, 2, 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # (InternVL's: ImageNet's)
IMAGE_TOKENS = ["<img>", "</img>"]


def write_tiny_internvl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["qwen2"][0]) -> Path:
    """A random InternVL projector; its matrices (patch kernel and MLP included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-internvl-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "internvl")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", SCALE)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    mat, vec = _random_tensors(w, rng, qtype)

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> None:  # (a 4-D kernel)
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    n_pos = (IMAGE_SIZE // PATCH) ** 2 + 1
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    w.add_tensor("v.class_embd", (rng.standard_normal(V_EMBD) * 0.5).astype(np.float32))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        vec(b + "ln1.bias", V_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", V_EMBD, V_EMBD, 0.3)
            vec(b + t + ".bias", V_EMBD, 0.0)
        vec(b + "ls1.weight", V_EMBD, 0.5, 0.3)
        vec(b + "ln2.weight", V_EMBD)
        vec(b + "ln2.bias", V_EMBD, 0.0)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
        vec(b + "ffn_down.bias", V_EMBD, 0.0)
        vec(b + "ls2.weight", V_EMBD, 0.5, 0.3)
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
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = toks.index("<|endoftext|>")
    w.add_eos_token_id(eot)
    w.add_bos_token_id(eot)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
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
