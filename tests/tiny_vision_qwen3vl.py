"""A tiny random Qwen3-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "qwen3vl_merger") and a ``qwen3vl`` text model whose width is the projector's main output and
whose vocabulary knows ``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter writes Qwen3-VL's: the conv3d's two temporal kernels as
``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` with a bias ``v.patch_embd.bias``, learned positions
``v.position_embd.weight`` for a square grid (interpolated to a picture's own grid), ``v.blk.N.*`` with a fused
``attn_qkv``, LayerNorms and a GELU MLP (``clip.use_gelu``), the DeepStack mergers ``v.deepstack.N.{norm,fc1,fc2}``
of the layers ``clip.vision.is_deepstack_layers`` flags, ``v.post_ln`` and the merger's MLP ``mm.0``, ``mm.2``.
Sizes are toys but the patch is the real 16 pixels (2x2 blocks of 32): a 32-wide encoder of 3 layers, 2 heads of 16,
positions learned for 6 x 6 patches, DeepStack taken after layers 0 and 2, merged 2x2 into rows of the text model's 64
(64 x 3 wide with the two DeepStack levels).

The text model is ``qwen3vl`` (Qwen3's block: per-head Q/K norms, no biases) of 3 layers, heads of 16 with interleaved
M-RoPE sections [4, 2, 1, 1] (pairs 5 and 7 past their section's reach, unturned), a rope base of 100 so that a
wrong (t, h, w) shows in the logits, and ``n_deepstack_layers`` 2: layers 0 and 1 add the image rows' DeepStack levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_vl_text
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, POS_SIDE = 16, 32, 48, 3, 2, 6
DEEPSTACK = (0, 2)  # the encoder layers whose output a DeepStack merger takes
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Qwen3-VL's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
#: the text model: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer) and its interleaved M-RoPE sections
TEXT_GEOMETRY, SECTIONS = (64, 4, 2, 16, 96, 3), [4, 2, 1, 1]


def write_qwen3vl_blocks(mat: Callable[..., None], vec: Callable[..., None], n_layer: int = V_LAYER, n_embd: int = V_EMBD,
                        n_ff: int = V_FF) -> None:  # fmt: skip
    """The encoder's ``v.blk.*`` tensors through ``mat`` / ``vec`` (tinymodel's ``_random_tensors``), layer by layer in
    order: LayerNorms with biases, the fused ``attn_qkv`` and ``attn_out``, the GELU MLP's ``ffn_up`` and ``ffn_down``,
    each with its bias (Ling 3 VL's tower too: tiny_vision_ling3vl.py)."""
    E = n_embd
    for i in range(n_layer):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", E)
        vec(b + "ln1.bias", E, 0.0)
        mat(b + "attn_qkv.weight", 3 * E, E, 0.3)
        vec(b + "attn_qkv.bias", 3 * E, 0.0)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "attn_out.bias", E, 0.0)
        vec(b + "ln2.weight", E)
        vec(b + "ln2.bias", E, 0.0)
        mat(b + "ffn_up.weight", n_ff, E, 0.3)
        vec(b + "ffn_up.bias", n_ff, 0.0)
        mat(b + "ffn_down.weight", E, n_ff, 0.3)
        vec(b + "ffn_down.bias", E, 0.0)


def write_tiny_qwen3vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random Qwen3-VL projector; its matrices (patch kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    E, p = V_EMBD, PATCH
    flags = {"clip.use_gelu": True, "clip.vision.spatial_merge_size": 2}
    w = mmproj_writer(path, "tiny-qwen3vl-mmproj", "qwen3vl_merger", flags, POS_SIDE * p, p, (E, V_FF, V_LAYER, V_HEAD),
                      n_text_embd, MEAN, STD)  # fmt: skip
    w.add_array("clip.vision.is_deepstack_layers", [i in DEEPSTACK for i in range(V_LAYER)])
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (E, 3, p, p), 0.05)
    tensor("v.patch_embd.weight.1", (E, 3, p, p), 0.05)
    vec("v.patch_embd.bias", E, 0.0)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((POS_SIDE * POS_SIDE, E)) * 0.5).astype(np.float32))
    write_qwen3vl_blocks(mat, vec)
    for i in DEEPSTACK:
        b = f"v.deepstack.{i}."
        vec(b + "norm.weight", 4 * E)
        vec(b + "norm.bias", 4 * E, 0.0)
        mat(b + "fc1.weight", 4 * E, 4 * E, 0.2)
        vec(b + "fc1.bias", 4 * E, 0.0)
        mat(b + "fc2.weight", n_text_embd, 4 * E, 0.2)
        vec(b + "fc2.bias", n_text_embd, 0.0)
    vec("v.post_ln.weight", E)
    vec("v.post_ln.bias", E, 0.0)
    mat("mm.0.weight", 4 * E, 4 * E, 0.2)
    vec("mm.0.bias", 4 * E, 0.0)
    mat("mm.2.weight", n_text_embd, 4 * E, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_qwen3vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random ``qwen3vl`` text model whose vocabulary knows Qwen3-VL's vision tokens (control tokens), taking
    ``len(DEEPSTACK)`` DeepStack levels."""
    return write_vl_text(path, "qwen3vl", "tiny-qwen3vl", TEXT_GEOMETRY, list(IMAGE_TOKENS), [3] * len(IMAGE_TOKENS), 1e-6, 100.0,
                         qtype, seed, chat_template, sections=SECTIONS, deepstack=len(DEEPSTACK))  # fmt: skip
