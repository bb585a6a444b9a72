"""A tiny random DeepSeek-OCR 2 pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "deepseekocr2") and a DeepSeek-OCR text model (``deepseek2-ocr``, the
converter's arch for DeepSeek-OCR 2's language model too: tiny_text_sides.py's) whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes DeepSeek-OCR 2's (``DeepseekOCR2VisionModel``): the SAM
ViT-B image encoder under ``v.sam.*`` exactly as DeepSeek-OCR's (tests/tiny_vision_deepseekocr.py), its ``net_3``
making the Qwen2 encoder's width; the Qwen2 encoder under ``v.*`` (``v.blk.N.`` RMSNorms ``ln1`` / ``ln2`` without
biases, ``attn_q`` / ``attn_k`` / ``attn_v`` with biases, grouped: fewer K/V heads, ``clip.vision.attention.
head_count_kv``; ``attn_out`` without; a SwiGLU MLP ``ffn_gate`` / ``ffn_up`` / ``ffn_down``; ``v.post_ln``), its
learned queries ``v.resample_query_768`` (144 rows, a 768-pixel tile) and ``v.resample_query_1024`` (256, the global
view); the projector ``mm.model.fc`` and the row ``v.view_seperator``.  clip.cpp fixes the geometry (1024-pixel global
views, 768-pixel tiles, 16-pixel patches; the queries' counts), so only the widths are toy: SAM as DeepSeek-OCR's tiny
one (16 wide, 3 layers, layer 2 global), the Qwen2 encoder 32 wide, 4 heads over 2 K/V heads, 2 layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_text_sides import GEOMETRY, write_tiny_text_side
from tiny_vision import mmproj_writer, tensor_writer
from tiny_vision_deepseekocr import SAM_EMBD, SAM_HEAD, SAM_LAYER, WINDOW, write_sam  # (SAM: DeepSeek-OCR's)
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, TILE = 1024, 16, 768
V_EMBD, V_FF, V_LAYER, V_HEAD, V_HEAD_KV = 32, 48, 2, 4, 2  # the Qwen2 encoder
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (DeepSeek-OCR 2's are 0.5 each: distinct ones catch a channel mix-up)
N_TEXT_EMBD = GEOMETRY["deepseek2-ocr"][0]


def write_tiny_deepseekocr2_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random DeepSeek-OCR 2 projector; its matrices and convolution kernels stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-deepseekocr2-mmproj", "deepseekocr2", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry,
                      n_text_embd, MEAN, STD, eps=1e-6)  # fmt: skip
    w.add_uint32("clip.vision.window_size", WINDOW)
    w.add_uint32("clip.vision.preproc_min_tiles", 2)
    w.add_uint32("clip.vision.preproc_max_tiles", 6)
    w.add_uint32("clip.vision.sam.block_count", SAM_LAYER)
    w.add_uint32("clip.vision.sam.embedding_length", SAM_EMBD)
    w.add_uint32("clip.vision.sam.head_count", SAM_HEAD)
    w.add_uint32("clip.vision.attention.head_count_kv", V_HEAD_KV)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    write_sam(w, mat, vec, tensor, rng, V_EMBD)  # (SAM: DeepSeek-OCR's, net_3 making the Qwen2 encoder's width)
    # the Qwen2 encoder: SAM's features then the learned queries
    kv = V_EMBD // V_HEAD * V_HEAD_KV
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        for t, rows in (("attn_q", V_EMBD), ("attn_k", kv), ("attn_v", kv)):
            mat(b + t + ".weight", rows, V_EMBD, 0.3)
            vec(b + t + ".bias", rows, 0.0)
        mat(b + "attn_out.weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "ln2.weight", V_EMBD)
        mat(b + "ffn_gate.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
    vec("v.post_ln.weight", V_EMBD)
    tensor("v.resample_query_768.weight", (144, V_EMBD), 0.5)
    tensor("v.resample_query_1024.weight", (256, V_EMBD), 0.5)
    # the projector and the separator row
    mat("mm.model.fc.weight", n_text_embd, V_EMBD, 0.15)
    vec("mm.model.fc.bias", n_text_embd, 0.0)
    vec("v.view_seperator", n_text_embd, 0.0, 1.0)
    return _finish(w, path)


def write_tiny_deepseekocr2_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random DeepSeek-OCR text model (tiny_text_sides.py's deepseek2-ocr: plain attention, a dense layer, experts)."""
    return write_tiny_text_side(path, "deepseek2-ocr", qtype, seed, name="tiny-deepseekocr2-text", chat_template=chat_template)
