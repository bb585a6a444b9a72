"""A tiny random CogVLM pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "cogvlm") and a cogvlm text model (its visual expert's weights beside the language ones) whose
width is the projector's output.

The projector is laid out as llama.cpp's converter writes CogVLM's (EVA2-CLIP: ``v.patch_embd`` with its bias,
``v.class_embd``, ``v.position_embd`` with the CLS token's row last, ``v.blk.N.attn_qkv`` fused with its bias,
``attn_out``, the post-norms ``ln1``/``ln2`` with biases, ``ffn_up``/``ffn_down`` with biases; the projector
``mm.model.fc``, ``mm.post_fc_norm``, ``mm.up``/``mm.gate``/``mm.down``; the rows ``v.boi`` and ``v.eoi``;
``clip.use_gelu``), at toy sizes: 40-pixel pictures in 8-pixel patches (25 rows and the two), a 32-wide encoder of 2
layers.  The text model is tiny_text_sides.py's cogvlm (fused QKV, the visual expert drawn beside), byte vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_text_sides import GEOMETRY, write_tiny_text_side
from tiny_vision import mmproj_writer, tensor_writer
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 40, 8, 32, 48, 2, 2, 96
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # (EVA-CLIP's: CLIP's)


def write_tiny_cogvlm_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = GEOMETRY["cogvlm"][0]) -> Path:
    """A random CogVLM projector; its matrices (patch kernel included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    E, n_pos = V_EMBD, (IMAGE_SIZE // PATCH) ** 2 + 1
    w = mmproj_writer(path, "tiny-cogvlm-mmproj", "cogvlm", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, (E, V_FF, V_LAYER, V_HEAD),
                      n_text_embd, MEAN, STD)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor_writer(w, rng, qtype)("v.patch_embd.weight", (E, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", E, 0.0)
    w.add_tensor("v.class_embd", (rng.standard_normal(E) * 0.5).astype(np.float32))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, E)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        mat(b + "attn_qkv.weight", 3 * E, E, 0.3)
        vec(b + "attn_qkv.bias", 3 * E, 0.0)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "attn_out.bias", E, 0.0)
        vec(b + "ln1.weight", E)
        vec(b + "ln1.bias", E, 0.0)
        mat(b + "ffn_up.weight", V_FF, E, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", E, V_FF, 0.3)
        vec(b + "ffn_down.bias", E, 0.0)
        vec(b + "ln2.weight", E)
        vec(b + "ln2.bias", E, 0.0)
    mat("mm.model.fc.weight", n_text_embd, E, 0.2)
    vec("mm.post_fc_norm.weight", n_text_embd)
    vec("mm.post_fc_norm.bias", n_text_embd, 0.0)
    mat("mm.up.weight", MM_FF, n_text_embd, 0.2)
    mat("mm.gate.weight", MM_FF, n_text_embd, 0.2)
    mat("mm.down.weight", n_text_embd, MM_FF, 0.2)
    vec("v.boi", n_text_embd, 0.0, 0.5)
    vec("v.eoi", n_text_embd, 0.0, 0.5)
    return _finish(w, path)


def write_tiny_cogvlm_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_text_sides.py's random cogvlm text model, the visual expert's weights drawn beside the language ones."""
    return write_tiny_text_side(path, "cogvlm", qtype, seed)
