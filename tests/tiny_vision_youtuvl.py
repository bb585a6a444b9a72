"""A tiny random Youtu-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "youtuvl") and tinymodel's deepseek2 text model (Youtu-VL's Youtu-LLM is deepseek2: MLA) whose
vocabulary also knows ``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter writes Youtu-VL's SigLIP2 (``v.patch_embd`` a matrix over a
patch's pixels (row, column, channel) with a bias, no learned positions, ``v.blk.N.*`` with LayerNorms, biases and a
GELU MLP, ``v.post_ln``; the merger's RMSNorm ``mm.input_norm`` and the MLP ``mm.0``/``mm.2`` with biases;
``clip.vision.window_size`` and ``clip.vision.wa_layer_indexes``, the layers that see the whole picture), at toy sizes:
8-pixel patches merged 2x2 (16 pixels a row's block), windows of 32 pixels (2 x 2 blocks; Youtu-VL's are 256 of
16-pixel patches), a 32-wide encoder of 2 layers, the first windowed and the second whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit_blocks
from tinymodel import DEEPSEEK2_GEOMETRY, _finish, _random_tensors, _write_tiny_deepseek2

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF, WINDOW = 64, 8, 2, 32, 48, 2, 2, 96, 32
WA_LAYERS = [1]  # (the layers that attend over the whole picture; the others within their windows)
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Youtu-VL's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>")


def write_tiny_youtuvl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = DEEPSEEK2_GEOMETRY[0]) -> Path:
    """A random Youtu-VL projector; its matrices (the patch embedding included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-youtuvl-mmproj", "youtuvl", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd,
                      MEAN, STD, merge=MERGE)  # fmt: skip
    w.add_uint32("clip.vision.window_size", WINDOW)
    w.add_array("clip.vision.wa_layer_indexes", WA_LAYERS)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("v.patch_embd.weight", V_EMBD, PATCH * PATCH * 3, 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    vec("mm.input_norm.weight", V_EMBD)
    mat("mm.0.weight", MM_FF, V_EMBD * MERGE * MERGE, 0.2)
    vec("mm.0.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.3)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_youtuvl_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tinymodel's deepseek2 (V2-Lite's layout) with Youtu-VL's vision markers."""
    return _write_tiny_deepseek2(path, qtype, seed, "lite", extra_tokens=IMAGE_TOKENS)
