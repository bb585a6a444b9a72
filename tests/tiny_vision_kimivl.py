"""A tiny random Kimi-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "kimivl") and tinymodel's deepseek2 text model (DeepSeek-V2-Lite's layout: Kimi-VL-A3B's text
is deepseek2) whose vocabulary also knows Kimi's media markers.

The projector is laid out as llama.cpp's converter writes Kimi-VL's MoonViT (``v.patch_embd`` with a bias,
``v.position_embd`` a square grid interpolated to each picture, ``v.blk.N.*`` with LayerNorms, biases and a GELU MLP,
``v.post_ln``, ``mm.input_norm`` and the MLP ``mm.1``/``mm.2`` with biases; ``clip.vision.projector.scale_factor`` 2,
``clip.use_gelu``), at toy sizes: 8-pixel patches merged 2x2 (16 pixels a row's block), a position grid of 8 x 8
(``image_size`` 64), a 32-wide encoder of 2 layers (heads of 16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit
from tinymodel import DEEPSEEK2_GEOMETRY, _finish, _write_tiny_deepseek2

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 64, 8, 2, 32, 48, 2, 2, 96
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Kimi-VL's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|media_start|>", "<|media_content|>", "<|media_end|>")


def write_tiny_kimivl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = DEEPSEEK2_GEOMETRY[0]) -> Path:
    """A random Kimi-VL projector; its matrices (the patch kernel included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-kimivl-mmproj", "kimivl", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd,
                      MEAN, STD, scale=MERGE)  # fmt: skip
    mat, vec, tensor = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    vec("mm.input_norm.weight", V_EMBD)
    vec("mm.input_norm.bias", V_EMBD, 0.0)
    mat("mm.1.weight", MM_FF, V_EMBD * MERGE * MERGE, 0.2)
    vec("mm.1.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.3)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_kimivl_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tinymodel's deepseek2 (V2-Lite's layout) with Kimi's media markers."""
    return _write_tiny_deepseek2(path, qtype, seed, "lite", extra_tokens=IMAGE_TOKENS)
