"""A tiny random Janus-Pro pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "janus_pro") and a llama text model whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes Janus-Pro's (the SigLIP ViT: ``v.patch_embd`` with its bias,
``v.position_embd``, ``v.blk.N.*`` with LayerNorms and biases, ``v.post_ln``; the MLP ``mm.0``/``mm.1`` with biases;
``clip.use_gelu``), at toy sizes: 48-pixel pictures in 8-pixel patches (36 rows; Janus-Pro's are 384 in 16, 576 rows),
a 32-wide encoder of 2 layers.  The text model is tinymodel's llama geometry; Janus-Pro puts no markers around a
picture, so its vocabulary is the byte vocabulary alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit, write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 48, 8, 32, 48, 2, 2, 96
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Janus-Pro's are 0.5 each: distinct ones catch a channel mix-up)


def write_tiny_janus_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["llama"][0]) -> Path:
    """A random Janus-Pro projector; its matrices (patch kernel included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-janus-pro-mmproj", "janus_pro", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD)
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    mat("mm.0.weight", MM_FF, V_EMBD, 0.2)
    vec("mm.0.bias", MM_FF, 0.0)
    mat("mm.1.weight", n_text_embd, MM_FF, 0.2)
    vec("mm.1.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_janus_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry), the byte vocabulary."""
    return write_vl_text(path, "llama", "tiny-janus-pro-text", ARCH_GEOMETRY["llama"], [], [], 1e-5, 10000.0, qtype, seed, chat_template)
