"""A tiny random Muse Glimmer pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "muse-glimmer") and tiny_muse_glimmer.py's text model whose vocabulary
also knows the picture markers ``<|image_start|>`` and ``<|image_end|>``.

The projector is laid out as llama.cpp's converter writes Muse Glimmer's vision tower (``conversion/muse_glimmer.py``):
``v.patch_embd`` (the two temporal slabs summed into one conv2d kernel) with a bias, ``v.position_embd`` a square grid
whose side is also the attention windows' (in patches), ``v.pre_ln``, ``v.blk.N.*`` with LayerNorms and biases,
``v.post_ln``, then the adapter ``mm.0``, ``mm.1`` and the text model's ``vision_projection`` ``mm.2``, none with a
bias; ``clip.vision.spatial_merge_size`` 2 and ``image_size`` the grid's side times patch times merge, as the
converter's.  At toy sizes: 4-pixel patches (8 pixels a merged row), a 4 x 4 grid (windows of 4 x 4 patches), a
32-wide encoder of 5 layers (layers 0-2 windowed, 3 global as every 4th, 4 global as the last; heads of 16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_muse_glimmer import GEOMETRY as TEXT_GEOMETRY
from tiny_muse_glimmer import write_tiny_muse_glimmer
from tiny_vision import mmproj_writer, write_vit
from tinymodel import _finish

Q = GGMLQuantizationType

GRID, PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 4, 4, 2, 32, 48, 5, 2, 96
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (distinct: a channel mix-up shows)
MARKERS = ("<|image_start|>", "<|image_end|>")


def write_tiny_muse_glimmer_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random Muse Glimmer projector; its matrices (the patch kernel included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-muse-glimmer-mmproj", "muse-glimmer", {}, GRID * PATCH * MERGE, PATCH, geometry, n_text_embd,
                      MEAN, STD, merge=MERGE, eps=1e-5)  # fmt: skip
    # (the position grid GRID x GRID: write_vit's image_size in patches' pixels)
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, GRID * PATCH)
    vec("v.pre_ln.weight", V_EMBD)
    vec("v.pre_ln.bias", V_EMBD, 0.0)
    mat("mm.0.weight", MM_FF, V_EMBD * MERGE * MERGE, 0.2)
    mat("mm.1.weight", MM_FF, MM_FF, 0.2)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.3)
    return _finish(w, path)


def write_tiny_muse_glimmer_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_muse_glimmer.py's text model with the picture markers."""
    return write_tiny_muse_glimmer(path, qtype, seed, extra_tokens=MARKERS)
