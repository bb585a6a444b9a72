"""A tiny random Ling 3 VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "ling3vl") and a ``bailingmoe3`` text model (Ling 3's) with rope
sections (llama.cpp's M-RoPE for it) whose width is the projector's output and whose vocabulary knows
``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter (conversion/bailingmoe3.py, BailingMoeV3VLVisionModel) writes Ling
3 VL's: the conv3d's two temporal kernels as ``v.patch_embd.weight`` and ``.weight.1`` and NO patch bias, learned
positions ``v.position_embd`` on a 6 x 6 grid (resized to the picture), ``v.blk.N.*`` LayerNorms with biases, a fused
``attn_qkv`` with bias, a GELU MLP with biases (``clip.use_gelu``), no ``v.post_ln``, the merger norm
``mm.input_norm`` (weight and bias) and the MLP ``mm.0`` / ``mm.2`` with biases.  ``extras=True`` adds what clip.cpp
also reads where a file has it (``v.patch_embd.bias``, ``v.pre_ln``, ``v.post_ln``), so that each optional step is
held to libmtmd too.  The patch is the real 16 pixels (merged 2x2: 32-pixel rows).

The text model is tiny_bailingmoe3.py's Ling 3 (as llama.cpp 0.3.36 loads it) in its "mrope" variant (the VL files'
rope sections, ``attn_q`` without a query LoRA), its byte vocabulary ending in the vision markers (control tokens) and
``<|image_pad|>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_bailingmoe3 import GEOMETRY, write_tiny_bailingmoe3
from tiny_vision import mmproj_writer, tensor_writer
from tiny_vision_qwen3vl import write_qwen3vl_blocks
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, POS_SIDE = 16, 32, 48, 3, 2, 6
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (distinct per channel)
EPS = 1e-5  # (the converter writes the text model's rms_norm_eps as the encoder's LayerNorm epsilon)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
N_TEXT_EMBD = GEOMETRY[0]  # (the text model's width: the projector's output)


def write_tiny_ling3vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD,
                              extras: bool = False) -> Path:  # fmt: skip
    """A random Ling 3 VL projector; its matrices (patch kernels included) stored as ``qtype``; ``extras``: with the
    patch bias, pre_ln and post_ln clip.cpp reads where they are."""
    rng = np.random.default_rng(seed)
    E, p = V_EMBD, PATCH
    w = mmproj_writer(path, "tiny-ling3vl-mmproj", "ling3vl", {"clip.use_gelu": True}, POS_SIDE * p, p,
                      (E, V_FF, V_LAYER, V_HEAD), n_text_embd, MEAN, STD, merge=2, eps=EPS)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (E, 3, p, p), 0.05)
    tensor("v.patch_embd.weight.1", (E, 3, p, p), 0.05)
    if extras:
        vec("v.patch_embd.bias", E, 0.3)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((POS_SIDE * POS_SIDE, E)) * 0.5).astype(np.float32))
    if extras:
        vec("v.pre_ln.weight", E)
        vec("v.pre_ln.bias", E, 0.2)
    write_qwen3vl_blocks(mat, vec, V_LAYER, E, V_FF)  # (Qwen3-VL's tower, without its DeepStack)
    if extras:
        vec("v.post_ln.weight", E)
        vec("v.post_ln.bias", E, 0.2)
    vec("mm.input_norm.weight", E)
    vec("mm.input_norm.bias", E, 0.2)
    mat("mm.0.weight", 4 * E, 4 * E, 0.2)
    vec("mm.0.bias", 4 * E, 0.0)
    mat("mm.2.weight", n_text_embd, 4 * E, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_ling3vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, sections: bool = True) -> Path:
    """A random ``bailingmoe3`` text model with rope sections: tiny_bailingmoe3.py's "mrope" variant, its vocabulary
    ending in the picture tokens (``sections=False``: its plain variant, as a text-only Ling 3's)."""
    return write_tiny_bailingmoe3(path, qtype, seed, "mrope" if sections else "", extra_tokens=IMAGE_TOKENS)
