"""A tiny random PaddleOCR-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "paddleocr") and a ``paddleocr`` text model (ERNIE 4.5's block with
M-RoPE sections, tiny_text_sides.py's geometry) whose vocabulary also knows ``<|IMAGE_START|>`` and ``<|IMAGE_END|>``.

The projector is laid out as llama.cpp's converter writes PaddleOCR-VL's (its SigLIP/NaViT: ``v.patch_embd`` with a
bias, ``v.position_embd`` a square grid interpolated to each picture, ``v.blk.N.*`` with LayerNorms, biases and a
GELU MLP, ``v.post_ln``; the projector ``mm.input_norm``, ``mm.1``/``mm.2`` with biases; ``clip.use_gelu``,
``clip.vision.image_min_pixels``/``image_max_pixels`` from the preprocessor's config, ``image_size`` their square
root), at toy sizes: 8-pixel patches merged 2x2 (16 pixels a row's block), a position grid of 6 x 6, a 32-wide
encoder of 2 layers (heads of 16), pictures kept within 9 and 64 rows' worth of pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_text_sides import GEOMETRY, SECTIONS
from tiny_vision import mmproj_writer, write_vit, write_vl_text
from tinymodel import _finish

Q = GGMLQuantizationType

PATCH, MERGE, POS_SIDE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 8, 2, 6, 32, 48, 2, 2, 96
MIN_PIXELS, MAX_PIXELS = 48 * 48, 128 * 128  # (9 and 64 blocks of 16 x 16 pixels)
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (PaddleOCR-VL's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ["<|IMAGE_START|>", "<|IMAGE_END|>"]
N_TEXT_EMBD = GEOMETRY["paddleocr"][0]


def write_tiny_paddleocr_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random PaddleOCR-VL projector; its matrices (the patch kernel included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-paddleocr-mmproj", "paddleocr", {"clip.use_gelu": True}, math.isqrt(MAX_PIXELS), PATCH, geometry,
                      n_text_embd, MEAN, STD)  # fmt: skip
    w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
    w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    mat, vec, tensor = write_vit(w, rng, qtype, geometry, PATCH, POS_SIDE * PATCH)
    k = MERGE * MERGE  # (the projector's input: a 2x2 block of patches side by side)
    vec("mm.input_norm.weight", V_EMBD)
    vec("mm.input_norm.bias", V_EMBD, 0.0)
    mat("mm.1.weight", V_EMBD * k, V_EMBD * k, 0.2)
    vec("mm.1.bias", V_EMBD * k, 0.0)
    mat("mm.2.weight", n_text_embd, V_EMBD * k, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_paddleocr_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random paddleocr text model (ERNIE 4.5's block, sections [2, 3, 3, 0]) whose vocabulary knows the image markers."""
    return write_vl_text(path, "paddleocr", "tiny-paddleocr-vl", GEOMETRY["paddleocr"], IMAGE_TOKENS, [3, 3], 1e-5, 10000.0, qtype, seed,
                         chat_template, sections=SECTIONS["paddleocr"])  # fmt: skip
