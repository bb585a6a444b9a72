"""A tiny random DeepSeek-OCR pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "deepseekocr") and a DeepSeek-OCR text model (``deepseek2-ocr``:
tiny_text_sides.py's) whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes DeepSeek-OCR's: the SAM ViT-B image encoder under
``v.sam.*`` (a 16-pixel patch convolution, learned 2-D positions ``pos_embd`` [64, 64, E], blocks with a fused
``attn.qkv``, decomposed relative position tables ``attn.pos_h`` / ``attn.pos_w`` and ``mlp.lin1`` / ``lin2``; the neck
``neck.0`` (1x1 conv) ``neck.1`` (LayerNorm) ``neck.2`` (3x3 conv) ``neck.3`` (LayerNorm), then ``net_2`` / ``net_3``,
two stride-2 3x3 convs), the CLIP-L ViT under ``v.*`` (``v.class_embd``, ``v.position_embd`` of 16x16 + 1 rows,
``v.pre_ln``, ``v.blk.N.*``; no patch embedding: SAM's features are its patches), and the projector ``mm.model.fc``
with the rows ``v.image_newline`` and ``v.view_seperator``.  clip.cpp fixes the picture geometry (1024-pixel views
in 16-pixel patches, 640-pixel tiles), so only the widths are toy: SAM 16 wide (2 heads, 3 layers: two windowed by
``clip.vision.window_size`` 14, layer 2 global, as clip.cpp's fixed indices 2, 5, 8, 11 say), a neck of 8 channels,
``net_2`` 16, ``net_3`` 32 = the CLIP width (2 layers, 2 heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType

from tiny_text_sides import GEOMETRY, write_tiny_text_side
from tiny_vision import mmproj_writer, tensor_writer, write_vit_blocks
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, TILE = 1024, 16, 640
V_EMBD, V_FF, V_LAYER, V_HEAD = 32, 48, 2, 2  # the CLIP ViT
SAM_EMBD, SAM_FF, SAM_LAYER, SAM_HEAD, WINDOW, NECK = 16, 32, 3, 2, 14, 8
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (DeepSeek-OCR's are 0.5 each: distinct ones catch a channel mix-up)
N_TEXT_EMBD = GEOMETRY["deepseek2-ocr"][0]


def write_tiny_deepseekocr_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random DeepSeek-OCR projector; its matrices and convolution kernels stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-deepseekocr-mmproj", "deepseekocr", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry,
                      n_text_embd, MEAN, STD, eps=1e-5)  # fmt: skip
    w.add_uint32("clip.vision.sam.block_count", SAM_LAYER)
    w.add_uint32("clip.vision.sam.head_count", SAM_HEAD)
    w.add_uint32("clip.vision.sam.embedding_length", SAM_EMBD)
    w.add_uint32("clip.vision.window_size", WINDOW)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    n_side = write_sam(w, mat, vec, tensor, rng, V_EMBD)
    # CLIP-L: its patches are SAM's features, a CLS token first
    w.add_tensor("v.class_embd", (rng.standard_normal(V_EMBD) * 0.5).astype(np.float32))
    n_pos = (n_side // 4) ** 2 + 1
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    vec("v.pre_ln.weight", V_EMBD)
    vec("v.pre_ln.bias", V_EMBD, 0.0)
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF)
    # the projector and its two rows
    mat("mm.model.fc.weight", n_text_embd, 2 * V_EMBD, 0.08)  # (rows ~10, as the other tiny projectors')
    vec("mm.model.fc.bias", n_text_embd, 0.0)
    vec("v.image_newline", n_text_embd, 0.0, 1.0)
    vec("v.view_seperator", n_text_embd, 0.0, 1.0)
    return _finish(w, path)


def write_sam(w: Any, mat: Callable, vec: Callable, tensor: Callable, rng: np.random.Generator, out: int) -> int:
    """SAM ViT-B under ``v.sam.*`` as both DeepSeek-OCR converters write it, ``net_3`` making ``out`` channels (the
    next encoder's width): the patch convolution, learned positions, the blocks (layer 2 global, the others windowed),
    the neck and ``net_2`` / ``net_3``.  Returns the positions' side (the 1024-pixel view's patches a side)."""
    n_side, d = IMAGE_SIZE // PATCH, SAM_EMBD // SAM_HEAD
    tensor("v.sam.patch_embd.weight", (SAM_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.sam.patch_embd.bias", SAM_EMBD, 0.0)
    w.add_tensor("v.sam.pos_embd.weight", (rng.standard_normal((1, n_side, n_side, SAM_EMBD)) * 0.5).astype(np.float32))
    for i in range(SAM_LAYER):
        b = f"v.sam.blk.{i}."
        side = n_side if i == 2 else WINDOW
        vec(b + "pre_ln.weight", SAM_EMBD)
        vec(b + "pre_ln.bias", SAM_EMBD, 0.0)
        mat(b + "attn.qkv.weight", 3 * SAM_EMBD, SAM_EMBD, 0.3)
        vec(b + "attn.qkv.bias", 3 * SAM_EMBD, 0.0)
        w.add_tensor(b + "attn.pos_h.weight", (rng.standard_normal((2 * side - 1, d)) * 0.3).astype(np.float32))
        w.add_tensor(b + "attn.pos_w.weight", (rng.standard_normal((2 * side - 1, d)) * 0.3).astype(np.float32))
        mat(b + "attn.out.weight", SAM_EMBD, SAM_EMBD, 0.3)
        vec(b + "attn.out.bias", SAM_EMBD, 0.0)
        vec(b + "post_ln.weight", SAM_EMBD)
        vec(b + "post_ln.bias", SAM_EMBD, 0.0)
        mat(b + "mlp.lin1.weight", SAM_FF, SAM_EMBD, 0.3)
        vec(b + "mlp.lin1.bias", SAM_FF, 0.0)
        mat(b + "mlp.lin2.weight", SAM_EMBD, SAM_FF, 0.3)
        vec(b + "mlp.lin2.bias", SAM_EMBD, 0.0)
    tensor("v.sam.neck.0.weight", (NECK, SAM_EMBD, 1, 1), 0.3)
    vec("v.sam.neck.1.weight", NECK)
    vec("v.sam.neck.1.bias", NECK, 0.0)
    tensor("v.sam.neck.2.weight", (NECK, NECK, 3, 3), 0.15)
    vec("v.sam.neck.3.weight", NECK)
    vec("v.sam.neck.3.bias", NECK, 0.0)
    tensor("v.sam.net_2.weight", (2 * NECK, NECK, 3, 3), 0.15)
    tensor("v.sam.net_3.weight", (out, 2 * NECK, 3, 3), 0.1)
    return n_side


def write_tiny_deepseekocr_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random DeepSeek-OCR text model (tiny_text_sides.py's deepseek2-ocr: plain attention, a dense layer, experts)."""
    return write_tiny_text_side(path, "deepseek2-ocr", qtype, seed, name="tiny-deepseekocr-text", chat_template=chat_template)
