"""A tiny random Gemma 4 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "gemma4v") and a Gemma 4 text model (tests/tiny_gemma4.py's E2B-like
layout: per-layer inputs, shared K/V) whose width is the projector's output and whose vocabulary knows
``<|image>`` and ``<image|>``.

The projector is laid out as llama.cpp's converter writes Gemma 4's (``v.patch_embd`` without a bias, the two
learned position tables in one ``v.position_embd`` [2, n_pos, n_embd], ``v.blk.N.*`` with RMSNorms ``ln1``/``ln2``,
per-head ``attn_q_norm``/``attn_k_norm``, sandwich ``attn_post_norm``/``ffn_post_norm``, a gated GELU FFN,
``v.std_bias``/``v.std_scale``, ``mm.input_projection``), at toy sizes: 4-pixel patches pooled 3x3 (one row per
12 x 12 pixels), a 32-wide encoder of 2 layers with 2 heads, rows projected to the text model's 64.  Three
Gemma4ClippableLinear bounds (``<weight>.input_min``/``input_max``/``output_max`` scalars) are tight enough to bite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_gemma4 import GEOMETRY, write_tiny_gemma4
from tiny_vision import mmproj_writer, tensor_writer
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, N_POS = 48, 4, 32, 48, 2, 2, 128
MEAN, STD = (0.1, 0.0, -0.1), (1.0, 0.9, 1.1)  # (Gemma 4's are 0 and 1: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|image>", "<image|>")
#: Gemma4ClippableLinear bounds written: weight -> {scalar suffix: value}
CLAMPS = {"v.blk.0.attn_q.weight": {"input_min": -1.5, "input_max": 1.5},
          "v.blk.1.ffn_down.weight": {"output_max": 0.4},
          "mm.input_projection.weight": {"input_max": 1.2}}  # fmt: skip


def write_tiny_gemma4v_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = GEOMETRY[0], clamps: bool = True) -> Path:
    """A random Gemma 4 projector; its matrices (patch kernel and projection included) stored as ``qtype``;
    ``clamps`` off: without the clippable-linear bounds."""
    rng = np.random.default_rng(seed)
    E = V_EMBD
    w = mmproj_writer(path, "tiny-gemma4v-mmproj", "gemma4v", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, (E, V_FF, V_LAYER, V_HEAD),
                      n_text_embd, MEAN, STD)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (E, 3, PATCH, PATCH), 0.2)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((2, N_POS, E)) * 0.5).astype(np.float32))  # x table, y table
    d = E // V_HEAD
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", E)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", E, E, 0.3)
        vec(b + "attn_q_norm.weight", d)
        vec(b + "attn_k_norm.weight", d)
        vec(b + "attn_post_norm.weight", E)
        vec(b + "ln2.weight", E)
        mat(b + "ffn_gate.weight", V_FF, E, 0.3)
        mat(b + "ffn_up.weight", V_FF, E, 0.3)
        mat(b + "ffn_down.weight", E, V_FF, 0.3)
        vec(b + "ffn_post_norm.weight", E)
    vec("v.std_bias", E, 0.0, 0.3)
    vec("v.std_scale", E, 1.0, 0.2)
    mat("mm.input_projection.weight", n_text_embd, E, 0.3)  # [n_text_embd, E]: ggml_mul_mat(w, x)
    if clamps:
        for name, bounds in CLAMPS.items():
            for k, v in bounds.items():
                w.add_tensor(name.replace(".weight", "." + k), np.array([v], np.float32))
    return _finish(w, path)


def write_tiny_gemma4_vl(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """tests/tiny_gemma4.py's Gemma 4 (the E2B-like layout) whose vocabulary knows the image markers."""
    return write_tiny_gemma4(path, qtype, seed, image_tokens=IMAGE_TOKENS, chat_template=chat_template)
