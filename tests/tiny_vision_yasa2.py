"""A tiny random Reka Edge pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "yasa2") and a ``llama`` text model (llama.cpp's converter writes Reka Edge's decoder as Llama)
whose vocabulary also knows ``<image>`` and ``</image>``.

The projector is laid out as llama.cpp's converter writes Reka's Yasa2 (a ConvNeXtV2 backbone): the 4x4 patchifying
convolution ``v.patch_embd`` (with a bias) and its channel LayerNorm ``v.patch_ln``; stages ``v.stage.S.*``, each
but the first opened by a downsampler (``down.ln``, a 2x2 stride-2 ``down.conv``), each of ConvNeXtV2 blocks
``blk.B.{dw,ln,pw1,grn,pw2}``; ``v.backbone_ln`` (written by the converter, read by no graph); the 2-D sin-cos table
``v.vision_pos_embed`` (one row a cell of the last stage's grid); and the two-layer projection ``mm.0`` / ``mm.2``.
At toy sizes: 128-pixel squares, 4-pixel patches (a 32 x 32 grid of 8 channels), a second stage of 16 channels on
16 x 16, pooled 2 x 2 into libmtmd's 8 x 8 = 64 rows.  The depthwise kernels are F16 in both files: the oracle's
ggml CPU backend has no product of an F32 kernel by conv_2d_dw's F16 im2col (its scheduler aborts on one), so a
Reka Edge file llama.cpp runs stores them so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_vl_text
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH = 128, 4
STAGES = ((8, 1), (16, 1))  # (channels, blocks) a stage; the second opened by a 2x2 downsampler
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (distinct per channel: they catch a channel mix-up)
IMAGE_TOKENS = ["<image>", "</image>"]
TEXT_GEOMETRY = (64, 4, 2, 16, 96, 2)  # (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
EPS = 1e-6  # (ConvNeXtV2's LayerNorm epsilon)


def write_tiny_yasa2_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0],
                            pos_embed: bool = True) -> Path:  # fmt: skip
    """A random Yasa2 projector; its kernels and matrices stored as ``qtype`` (F32 or F16); ``pos_embed``: with the
    ``v.vision_pos_embed`` table."""
    rng = np.random.default_rng(seed)
    C = STAGES[-1][0]
    w = mmproj_writer(path, "tiny-yasa2-mmproj", "yasa2", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, (C, 4 * C, 0, 1), n_text_embd,
                      MEAN, STD, eps=EPS)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    dw = tensor_writer(w, rng, Q.F16)  # (F16 always: the module's docstring says why)
    c0 = STAGES[0][0]
    tensor("v.patch_embd.weight", (c0, 3, PATCH, PATCH), 0.2)
    vec("v.patch_embd.bias", c0, 0.0)
    vec("v.patch_ln.weight", c0)
    vec("v.patch_ln.bias", c0, 0.0)
    prev = c0
    for s, (c, n_blocks) in enumerate(STAGES):
        if s:
            vec(f"v.stage.{s}.down.ln.weight", prev)
            vec(f"v.stage.{s}.down.ln.bias", prev, 0.0)
            tensor(f"v.stage.{s}.down.conv.weight", (c, prev, 2, 2), 0.3)
            vec(f"v.stage.{s}.down.conv.bias", c, 0.0)
        for i in range(n_blocks):
            b = f"v.stage.{s}.blk.{i}."
            dw(b + "dw.weight", (c, 1, 7, 7), 0.15)
            vec(b + "dw.bias", c, 0.0)
            vec(b + "ln.weight", c)
            vec(b + "ln.bias", c, 0.0)
            mat(b + "pw1.weight", 4 * c, c, 0.3)
            vec(b + "pw1.bias", 4 * c, 0.0)
            vec(b + "grn.weight", 4 * c, 0.0, 0.5)
            vec(b + "grn.bias", 4 * c, 0.0)
            mat(b + "pw2.weight", c, 4 * c, 0.3)
            vec(b + "pw2.bias", c, 0.0)
        prev = c
    vec("v.backbone_ln.weight", C)
    vec("v.backbone_ln.bias", C, 0.0)
    if pos_embed:
        n = IMAGE_SIZE // PATCH // 2 ** (len(STAGES) - 1)
        w.add_tensor("v.vision_pos_embed", (rng.standard_normal((n * n, C)) * 0.5).astype(np.float32))  # (a row a cell)
    mat("mm.0.weight", n_text_embd, C, 0.3)
    vec("mm.0.bias", n_text_embd, 0.0)
    mat("mm.2.weight", n_text_embd, n_text_embd, 0.05)  # (rows of a few units, as a text model's inputs)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_yasa2_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model whose vocabulary knows ``<image>`` and ``</image>``."""
    return write_vl_text(path, "llama", "tiny-yasa2-text", TEXT_GEOMETRY, IMAGE_TOKENS, [3, 3], 1e-5, 10000.0, qtype, seed,
                         chat_template)  # fmt: skip
