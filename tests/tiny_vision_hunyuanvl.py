"""A tiny random HunyuanOCR / Hunyuan-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "hunyuanvl") and a ``hunyuan_vl`` text model (Hunyuan dense's block
with XD-RoPE sections, tiny_text_sides.py's geometry) whose vocabulary also knows Hunyuan's image markers
``<｜hy_place▁holder▁no▁100｜>`` and ``<｜hy_place▁holder▁no▁101｜>`` (fullwidth bars and U+2581, as the real vocabulary).

The projector is laid out as llama.cpp's converter writes Hunyuan-VL's (its ViT: ``v.patch_embd`` with a bias,
``v.position_embd`` a square grid without the CLS row, ``v.blk.N.*`` with LayerNorms, biases and a GELU MLP; the
perceiver projector: RMSNorm ``mm.pre_norm``, the 2x2 conv ``mm.0`` of stride 2, GELU, the 1x1 conv ``mm.2``, a
newline column ``v.image_newline``, ``mm.model.fc`` into the text width, the rows ``mm.image_begin``/``mm.image_end``
around them and RMSNorm ``mm.post_norm``; ``clip.use_gelu``, ``clip.vision.spatial_merge_size`` 2 and the
preprocessor's ``image_min_pixels``/``image_max_pixels``), at toy sizes: 8-pixel patches merged 2x2, a position grid
of 6 x 6, a 32-wide encoder of 2 layers (heads of 16), pictures kept within 9 and 64 merged blocks' worth of pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_text_sides import GEOMETRY, write_tiny_text_side
from tiny_vision import mmproj_writer, write_vit
from tinymodel import _finish

Q = GGMLQuantizationType

PATCH, MERGE, POS_SIDE, V_EMBD, V_FF, V_LAYER, V_HEAD = 8, 2, 6, 32, 48, 2, 2
MIN_PIXELS, MAX_PIXELS = 48 * 48, 128 * 128  # (9 and 64 blocks of 16 x 16 pixels)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # (Hunyuan-VL's: CLIP's)
IMAGE_TOKENS = ["<｜hy_place▁holder▁no▁100｜>", "<｜hy_place▁holder▁no▁101｜>"]
N_TEXT_EMBD = GEOMETRY["hunyuan_vl"][0]
OC1, OC2 = 2 * V_EMBD, 4 * V_EMBD  # (the perceiver's convs: 1152 -> 2304 -> 4608 in the published file)


def write_tiny_hunyuanvl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD,
                                limits: bool = True) -> Path:  # fmt: skip
    """A random Hunyuan-VL projector; its matrices (the patch kernel and convs included) stored as ``qtype`` (F32 or
    F16); ``limits`` False: without ``image_min_pixels``/``image_max_pixels`` (clip.cpp's defaults apply)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-hunyuanvl-mmproj", "hunyuanvl", {"clip.use_gelu": True}, math.isqrt(MAX_PIXELS), PATCH, geometry,
                      n_text_embd, MEAN, STD, merge=MERGE, eps=1e-5)  # fmt: skip
    if limits:
        w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
        w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    mat, vec, tensor = write_vit(w, rng, qtype, geometry, PATCH, POS_SIDE * PATCH)
    vec("mm.pre_norm.weight", V_EMBD)
    tensor("mm.0.weight", (OC1, V_EMBD, MERGE, MERGE), 0.1)
    vec("mm.0.bias", OC1, 0.0)
    tensor("mm.2.weight", (OC2, OC1, 1, 1), 0.1)
    vec("mm.2.bias", OC2, 0.0)
    w.add_tensor("v.image_newline", (rng.standard_normal(OC2) * 0.5).astype(np.float32))
    mat("mm.model.fc.weight", n_text_embd, OC2, 0.1)
    vec("mm.model.fc.bias", n_text_embd, 0.0)
    w.add_tensor("mm.image_begin", (rng.standard_normal(n_text_embd) * 0.5).astype(np.float32))
    w.add_tensor("mm.image_end", (rng.standard_normal(n_text_embd) * 0.5).astype(np.float32))
    vec("mm.post_norm.weight", n_text_embd)
    return _finish(w, path)


def write_tiny_hunyuanvl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random hunyuan_vl text model (tiny_text_sides.py's: QK-norm after the rope, NTK alpha, sections [1, 1, 1, 1])
    whose vocabulary knows Hunyuan's image markers (control tokens)."""
    return write_tiny_text_side(path, "hunyuan_vl", qtype, seed, extra=tuple(IMAGE_TOKENS), name="tiny-hunyuan-vl",
                                chat_template=chat_template)  # fmt: skip
