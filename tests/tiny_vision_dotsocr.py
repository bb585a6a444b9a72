"""A tiny random dots.ocr pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "dots_ocr") and a ``qwen2`` text model (llama.cpp's converter writes dots.ocr's language side as
Qwen2) whose vocabulary also knows ``<|img|>`` and ``<|endofimg|>``.

The projector is laid out as llama.cpp's converter writes dots.ocr's (its NaViT: ``v.patch_embd`` with a bias and no
position table, the patchifier's RMSNorm as ``v.pre_ln``; ``v.blk.N.*`` with RMSNorms, a fused ``attn_qkv`` and a SwiGLU
MLP (``ffn_gate``/``ffn_up``/``ffn_down``), no biases (``use_bias`` is off in the published config); the
``post_trunk_norm`` RMSNorm as ``mm.post_norm``; the merger's LayerNorm ``mm.input_norm`` and ``mm.0``/``mm.2`` with
biases; ``clip.use_silu``, ``clip.vision.projector.scale_factor`` the spatial merge, ``image_min_pixels`` /
``image_max_pixels`` from the preprocessor's config, ``image_size`` 0), at toy sizes: 8-pixel patches merged 2x2 (16
pixels a row's block), a 32-wide encoder of 2 layers (heads of 16), pictures kept within 9 and 64 rows' worth of pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_vl_text
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD = 8, 2, 32, 48, 2, 2
MIN_PIXELS, MAX_PIXELS = 48 * 48, 128 * 128  # (9 and 64 blocks of 16 x 16 pixels)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (distinct per channel: they catch a channel mix-up)
IMAGE_TOKENS = ["<|img|>", "<|endofimg|>"]
TEXT_GEOMETRY = (64, 4, 2, 16, 96, 2)  # (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
EPS = 1e-5  # (dots.ocr's vision rms_norm_eps)


def write_tiny_dotsocr_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0],
                              scale: int | None = MERGE) -> Path:  # fmt: skip
    """A random dots.ocr projector; its matrices (the patch kernel included) stored as ``qtype`` (F32 or F16);
    ``scale`` the stated ``clip.vision.projector.scale_factor`` (None: none stated; the tensors stay 2x2's)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-dotsocr-mmproj", "dots_ocr", {"clip.use_silu": True}, 0, PATCH, geometry, n_text_embd, MEAN, STD,
                      scale=scale, eps=EPS)  # fmt: skip
    w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
    w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    vec("v.pre_ln.weight", V_EMBD)
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        mat(b + "attn_qkv.weight", 3 * V_EMBD, V_EMBD, 0.3)
        mat(b + "attn_out.weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "ln2.weight", V_EMBD)
        mat(b + "ffn_gate.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
    vec("mm.post_norm.weight", V_EMBD)
    k = MERGE * MERGE  # (the merger's input: a 2x2 block of patches side by side)
    vec("mm.input_norm.weight", V_EMBD)
    vec("mm.input_norm.bias", V_EMBD, 0.0)
    mat("mm.0.weight", V_EMBD * k, V_EMBD * k, 0.2)
    vec("mm.0.bias", V_EMBD * k, 0.0)
    mat("mm.2.weight", n_text_embd, V_EMBD * k, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_dotsocr_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random qwen2 text model whose vocabulary knows ``<|img|>`` and ``<|endofimg|>``."""
    return write_vl_text(path, "qwen2", "tiny-dotsocr-text", TEXT_GEOMETRY, IMAGE_TOKENS, [3, 3], 1e-6, 1000000.0, qtype, seed,
                         chat_template)  # fmt: skip

