"""A tiny random MiniMax-M3 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "minimax_m3") and a ``minimax-m3`` text model whose width is the
projector's output and whose vocabulary knows the picture markers ``]<]start of image[>[`` and ``]<]end of image[>[``.

The projector as clip.cpp loads MiniMax-M3's: the conv3d's two temporal kernels as ``v.patch_embd.weight`` and
``v.patch_embd.weight.1`` (no bias), LayerNorm ViT blocks with separate Q/K/V and an up/down MLP (biases all), heads 16
wide (the 2-D rope: dimensions 0-3 unturned, 4-7 by the row, 8-11 by the column, 12-15 unturned), ``v.post_ln``; then
the per-patch MLP ``mm.1`` / ``mm.2`` (to 24) and the 2x2 merger's ``mm.merger.fc1`` / ``fc2`` (96 -> 80 -> 64), biases
all.  The patch is the real 16 pixels (merged 2x2: 32-pixel rows); clip.cpp fixes the pixel limits (8 to 576 rows).

The text model is tiny_minimax_m3.py's, MSA's block_size 16 and top_k 32 (its dense path up to 512 positions), the
markers appended to its byte vocabulary as control tokens.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit
from tinymodel import _finish

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD = 16, 32, 48, 2, 2
N_MM, N_MERGER = 24, 80  # (mm.1 / mm.2's width; the merger's hidden width)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (distinct per channel)
MARKERS = ("]<]start of image[>[", "]<]end of image[>[")
N_TEXT_EMBD = 64  # (tiny_minimax_m3.py's N_EMBD)
TEXT_BLOCK, TEXT_TOP_K = 16, 32  # (MSA's dense path up to 512 positions)


def write_tiny_minimax_m3_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random MiniMax-M3 projector; its matrices (patch kernels included) stored as ``qtype``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-minimax-m3-mmproj", "minimax_m3", {"clip.use_gelu": True}, 560, PATCH, geometry, n_text_embd,
                      MEAN, STD, merge=2)  # fmt: skip
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH)
    for name, rows, cols in (("mm.1", N_MM, V_EMBD), ("mm.2", N_MM, N_MM), ("mm.merger.fc1", N_MERGER, 4 * N_MM),
                             ("mm.merger.fc2", n_text_embd, N_MERGER)):  # fmt: skip
        mat(name + ".weight", rows, cols, 0.3)
        vec(name + ".bias", rows, 0.0)
    return _finish(w, path)


def write_tiny_minimax_m3_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_minimax_m3.py's random text model (MSA dense up to 512 positions), its byte vocabulary ending in the picture
    markers (control tokens)."""
    import tinymodel
    from tiny_minimax_m3 import write_tiny_minimax_m3

    plain_vocab, plain_add = tinymodel.byte_vocab, tinymodel._add_byte_vocab

    def vocab() -> tuple[list[str], list[str], list[int]]:
        toks, merges, types = plain_vocab()
        return toks + list(MARKERS), merges, types + [3] * len(MARKERS)

    def add_vocab(w, extra=()):  # (plain_add on the plain vocabulary with the markers as its extras: EOS stays <|endoftext|>)
        with mock.patch.object(tinymodel, "byte_vocab", plain_vocab):
            plain_add(w, MARKERS)

    with mock.patch.object(tinymodel, "byte_vocab", vocab), mock.patch.object(tinymodel, "_add_byte_vocab", add_vocab):
        return write_tiny_minimax_m3(path, qtype, seed, block=TEXT_BLOCK, top_k=TEXT_TOP_K)
