"""A tiny random Llama 4 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "llama4") and tiny_llama4.py's llama4 text model whose vocabulary also
knows Llama 4's image tokens.

The projector is laid out as llama.cpp's converter writes Llama 4's (``v.patch_embd`` the unfold's matrix [E, 3 p p]
without a bias, ``v.class_embd``, ``v.position_embd`` for the patches and the CLS token, ``v.pre_ln``, ``v.blk.N.*``
with LayerNorms, biases and a GELU MLP, ``v.post_ln``, the adapter ``mm.model.mlp.1``/``.2`` and the projector
``mm.model.fc``, none with biases; ``clip.vision.projector.scale_factor`` 2, ``clip.use_gelu``), at toy sizes: 32-pixel
tiles of 8-pixel patches (4 x 4 patches, shuffled 2x2 into 4 rows a tile), a 32-wide encoder of 2 layers (heads of
16: each half of a head turned by 2 pairs, by the column and by the row).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_llama4 import GEOMETRY, write_tiny_llama4
from tiny_vision import mmproj_writer, write_vit_blocks
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF, MM_OUT = 32, 8, 2, 32, 48, 2, 2, 48, 40
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Llama 4's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|image_start|>", "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>", "<|image|>", "<|patch|>")


def write_tiny_llama4_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = GEOMETRY[0]) -> Path:
    """A random Llama 4 projector; its matrices (the patch matrix included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-llama4-mmproj", "llama4", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd,
                      MEAN, STD, scale=MERGE)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    mat("v.patch_embd.weight", V_EMBD, 3 * PATCH * PATCH, 0.05)
    w.add_tensor("v.class_embd", (rng.standard_normal(V_EMBD) * 0.5).astype(np.float32))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal(((IMAGE_SIZE // PATCH) ** 2 + 1, V_EMBD)) * 0.5).astype(np.float32))
    vec("v.pre_ln.weight", V_EMBD)
    vec("v.pre_ln.bias", V_EMBD, 0.0)
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    mat("mm.model.mlp.1.weight", MM_FF, V_EMBD * MERGE * MERGE, 0.2)
    mat("mm.model.mlp.2.weight", MM_OUT, MM_FF, 0.3)
    mat("mm.model.fc.weight", n_text_embd, MM_OUT, 0.5)
    return _finish(w, path)


def write_tiny_llama4_vl_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_llama4.py's Scout-like text model (16 experts, chunked and NoPE layers) with Llama 4's image tokens."""
    return write_tiny_llama4(path, qtype, seed, extra_tokens=IMAGE_TOKENS)
