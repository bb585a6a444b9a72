"""A tiny random MiMo-V2.5 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "mimovl") and a ``mimo2`` text model (MiMo-V2.5's, llama.cpp's
converter conversion/mimo.py writes both from one checkpoint) whose width is the projector's output and whose
vocabulary knows ``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as conversion/mimo.py writes MiMo-V2.5's: the conv3d's two temporal kernels as
``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` (no bias), ``v.blk.N.*`` with a fused ``attn_qkv`` of grouped
heads (4 query heads, 2 K/V heads, of 16: 64 wide where the encoder is 32, as the real 32 x 64 heads are wider than
its 1280), ``attn_sinks`` a head, RMSNorms (weights only), a gated SiLU MLP with biases, ``v.post_ln`` (a LayerNorm)
and the merger's MLP ``mm.0``, ``mm.2`` (no biases); ``clip.vision.wa_pattern_mode`` [0, 1, -1, 1] (a row-window
layer, a column-window one, a full one, a column-window one last: every transition clip_graph_mimovl makes, the
final one back to rows included), ``clip.vision.window_size`` 6 (patches either side in the sequence), pixel limits
of 8 to 64 merged rows' worth.  The patch is the real 16 pixels (merged 2x2: 32-pixel rows).

The text model is tiny_moe3.py's mimo2 (4 layers, window layers with attention sinks, a dense layer then experts)
with the vision markers appended to its byte vocabulary as control tokens.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_HEAD, V_HEAD_KV, HEAD_DIM = 16, 32, 48, 4, 2, 16
MODES = [0, 1, -1, 1]  # (per layer: -1 full, 0 row windows, 1 column windows)
WINDOW = 6  # (clip.vision.window_size: patches either side of a patch, in the layer's order)
MIN_PIXELS, MAX_PIXELS = 8 * 32 * 32, 64 * 32 * 32
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (distinct per channel)
MARKERS = ("<|vision_start|>", "<|vision_end|>")
N_TEXT_EMBD = 64  # (tiny_moe3.py's N_EMBD)


def write_tiny_mimovl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random MiMo-V2.5 projector; its matrices (patch kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    n_layer = len(MODES)
    w = mmproj_writer(path, "tiny-mimovl-mmproj", "mimovl", {"clip.use_silu": True}, 560, PATCH,
                      (V_EMBD, V_FF, n_layer, V_HEAD), n_text_embd, MEAN, STD, merge=2)  # fmt: skip
    w.add_uint32("clip.vision.attention.head_count_kv", V_HEAD_KV)
    w.add_uint32("clip.vision.window_size", WINDOW)
    w.add_array("clip.vision.wa_pattern_mode", MODES)
    w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
    w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    tensor("v.patch_embd.weight.1", (V_EMBD, 3, PATCH, PATCH), 0.05)
    qkv = (V_HEAD + 2 * V_HEAD_KV) * HEAD_DIM
    for i in range(n_layer):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        mat(b + "attn_qkv.weight", qkv, V_EMBD, 0.3)
        vec(b + "attn_qkv.bias", qkv, 0.0)
        w.add_tensor(b + "attn_sinks", (rng.standard_normal(V_HEAD) * 1.5).astype(np.float32))
        mat(b + "attn_out.weight", V_EMBD, V_HEAD * HEAD_DIM, 0.3)
        vec(b + "attn_out.bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        for t, rows, cols in (("ffn_gate", V_FF, V_EMBD), ("ffn_up", V_FF, V_EMBD), ("ffn_down", V_EMBD, V_FF)):
            mat(b + t + ".weight", rows, cols, 0.3)
            vec(b + t + ".bias", rows, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    mat("mm.0.weight", 4 * V_EMBD, 4 * V_EMBD, 0.2)
    mat("mm.2.weight", n_text_embd, 4 * V_EMBD, 0.2)
    return _finish(w, path)


def write_tiny_mimovl_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_moe3.py's random ``mimo2`` text model, its byte vocabulary ending in the vision markers (control tokens)."""
    import tinymodel
    from tiny_moe3 import write_tiny_moe3

    plain_vocab, plain_add = tinymodel.byte_vocab, tinymodel._add_byte_vocab

    def vocab() -> tuple[list[str], list[str], list[int]]:
        toks, merges, types = plain_vocab()
        return toks + list(MARKERS), merges, types + [3] * len(MARKERS)

    def add_vocab(w, extra=()):  # (plain_add on the plain vocabulary with the markers as its extras: EOS stays <|endoftext|>)
        with mock.patch.object(tinymodel, "byte_vocab", plain_vocab):
            plain_add(w, MARKERS)

    with mock.patch.object(tinymodel, "byte_vocab", vocab), mock.patch.object(tinymodel, "_add_byte_vocab", add_vocab):
        return write_tiny_moe3(path, "mimo2", qtype, seed)
