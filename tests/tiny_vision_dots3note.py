"""A tiny random dots.note picture projector ("dots3note_v"), for tests held to llama.cpp's libmtmd: a projector file
(mmproj, ``general.architecture`` "clip", projector type "dots3note_v") beside dots.note's own text model
(``dots3note``, tests/tiny_dots3note.py, 64 wide; its byte vocabulary spells ``<|img|>`` / ``<|endofimg|>`` out).

The projector is laid out as llama.cpp's converter writes dots.note's picture side (conversion/dots3.py
``Dots3NoteMmprojModel``): dots.ocr's NaViT and merger (tests/tiny_vision_dotsocr.py: ``v.patch_embd`` with a bias,
``v.pre_ln``, ``v.blk.N.*`` RMSNorms and a fused ``attn_qkv``, ``mm.post_norm``, ``mm.input_norm``, ``mm.0`` / ``mm.2``;
no biases in the blocks, as ``use_bias`` is refused), and what dots.note adds: ``attn_q_norm`` / ``attn_k_norm`` a head
wide (``use_qk_norm``, required), the "pyramid" of routed experts (``clip.vision.expert_count_per_layer``, 0 a dense
block) whose blocks carry ``ffn_gate_inp`` (the router, float32 as the converter forces it), ``exp_probs_b`` (the
selection bias) and the stacked ``ffn_gate_exps`` / ``ffn_up_exps`` / ``ffn_down_exps`` in place of the dense MLP,
``clip.vision.expert_used_count`` experts a patch; the merge as ``clip.vision.spatial_merge_size`` (dots.ocr states a
projector scale_factor).  Toy sizes: dots.ocr's pair's (8-pixel patches merged 2x2, a 32-wide encoder, heads of 16,
pixels within 9 and 64 blocks), 3 blocks: dense, then 4 experts of 24 (2 a patch), then 3 experts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer
from tiny_vision_dotsocr import EPS, MAX_PIXELS, MEAN, MERGE, MIN_PIXELS, PATCH, STD, V_EMBD, V_FF, V_HEAD
from tinymodel import _finish, _random_tensors, write_tiny_model

Q = GGMLQuantizationType

#: routed experts a block (0: a dense SwiGLU block), experts used a patch, an expert's FFN width
PYRAMID, N_USED, EXP_FF = (0, 4, 3), 2, 24
V_LAYER = len(PYRAMID)
N_TEXT = 64  # (tiny_dots3note.N_EMBD)
IMAGE_TOKENS = ["<|img|>", "<|endofimg|>"]


def write_tiny_dots3note_v_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT,
                                  pyramid: tuple[int, ...] = PYRAMID, used: int | None = N_USED,
                                  merge: int | None = MERGE) -> Path:  # fmt: skip
    """A random dots.note picture projector; its matrices (the patch kernel and the experts included) stored as
    ``qtype`` (F32 or F16), the routers float32; ``used``, ``merge``: the stated ``expert_used_count`` and ``spatial_merge_size``
    (None: none stated; the tensors stay 2x2's)."""
    rng = np.random.default_rng(seed)
    D = V_EMBD // V_HEAD
    w = mmproj_writer(path, "tiny-dots3note-v-mmproj", "dots3note_v", {"clip.use_silu": True}, 0, PATCH, (V_EMBD, V_FF, V_LAYER, V_HEAD),
                      n_text_embd, MEAN, STD, merge=merge, eps=EPS)  # fmt: skip
    w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
    w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    w.add_array("clip.vision.expert_count_per_layer", list(pyramid))
    if used is not None:
        w.add_uint32("clip.vision.expert_used_count", used)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    vec("v.pre_ln.weight", V_EMBD)
    for i, n_exp in enumerate(pyramid):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        mat(b + "attn_qkv.weight", 3 * V_EMBD, V_EMBD, 0.3)
        vec(b + "attn_q_norm.weight", D)
        vec(b + "attn_k_norm.weight", D)
        mat(b + "attn_out.weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "ln2.weight", V_EMBD)
        if n_exp == 0:
            mat(b + "ffn_gate.weight", V_FF, V_EMBD, 0.3)
            mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
            mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
            continue
        mat(b + "ffn_gate_inp.weight", n_exp, V_EMBD, 0.5, f32=True)
        vec(b + "exp_probs_b.weight", n_exp, 0.0, 0.2)
        tensor(b + "ffn_gate_exps.weight", (n_exp, EXP_FF, V_EMBD), 0.3)
        tensor(b + "ffn_up_exps.weight", (n_exp, EXP_FF, V_EMBD), 0.3)
        tensor(b + "ffn_down_exps.weight", (n_exp, V_EMBD, EXP_FF), 0.3)
    vec("mm.post_norm.weight", V_EMBD)
    k = MERGE * MERGE  # (the merger's input: a 2x2 block of patches side by side)
    vec("mm.input_norm.weight", V_EMBD)
    vec("mm.input_norm.bias", V_EMBD, 0.0)
    mat("mm.0.weight", V_EMBD * k, V_EMBD * k, 0.2)
    vec("mm.0.bias", V_EMBD * k, 0.0)
    mat("mm.2.weight", n_text_embd, V_EMBD * k, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_dots3note_v_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``dots3note`` text model 64 wide (tests/tiny_dots3note.py)."""
    return write_tiny_model(path, "dots3note", qtype, seed)
