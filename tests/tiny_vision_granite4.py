"""A tiny random Granite 4 Vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "granite4_vision") and a Granite text model whose width is the
projector's output (libmtmd puts no marker tokens before a picture and a text "\\n" after it, so the vocabulary is
tinymodel's own).

The projector is laid out as llama.cpp's converter writes Granite 4.1 Vision's: a SigLIP ViT (``v.patch_embd`` with
its bias, ``v.position_embd``, ``v.blk.N.*``, ``v.post_ln``, which libmtmd does not run), GELU (``clip.use_gelu``),
then one WindowQFormer block per listed feature layer (``clip.vision.feature_layer``, each with its
``clip.vision.projector.spatial_offsets`` entry: -1 averages the layer's patch grid down, 0..3 picks one pixel of
each 2x2): ``v.proj_blk.K.{norm, query, img_pos, post_norm, self_attn_*, cross_attn_*, ffn_*, linear}`` and the
newline ``v.image_newline``.  Toy sizes: 32-pixel tiles in 4-pixel patches (8x8 patches, windows of 4x4 queried by
2x2, so 4x4 rows a tile and block), a 128-wide encoder (libmtmd's QFormer heads are 64 wide: 2 heads) of 2 layers,
four blocks (layer 0 averaged, layer 1 averaged and picked at offsets 1 and 2) of 16 columns each, and the
llava-next grids of up to 2x2 tiles.  The text model is tinymodel's granite (its multipliers), 64 wide, no
DeepStack mapping: the four blocks side by side are its input rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit
from tinymodel import ARCH_GEOMETRY, _finish, write_tiny_model

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, QF_FF = 32, 4, 128, 96, 2, 4, 96
WINDOW, QUERY = 4, 2
#: each block's (feature layer, spatial offset): -1 averages the grid down, 0..3 picks (y % 2, x % 2) = divmod(o, 2)
BLOCKS = [(0, -1), (1, -1), (1, 1), (1, 2)]
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (SigLIP's are 0.5 each: distinct ones catch a channel mix-up)
#: the llava-next grids (width, height) in pixels: up to 2x2 tiles
PINPOINTS = [(64, 32), (32, 64), (64, 64)]
N_TEXT = ARCH_GEOMETRY["granite"][0]


def write_tiny_granite4v_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT,
                                blocks: list[tuple[int, int]] | None = None) -> Path:  # fmt: skip
    """A random Granite 4 Vision projector of ``blocks`` (:data:`BLOCKS`), its matrices stored as ``qtype``; the
    blocks' outputs side by side are ``n_text_embd`` wide."""
    blocks = BLOCKS if blocks is None else blocks
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    P = n_text_embd // len(blocks)  # (each block's projection_dim)
    w = mmproj_writer(path, "tiny-granite4v-mmproj", "granite4_vision", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, P,
                      MEAN, STD)  # fmt: skip
    w.add_array("clip.vision.image_grid_pinpoints", [v for wh in PINPOINTS for v in wh])
    w.add_array("clip.vision.feature_layer", [b[0] for b in blocks])
    w.add_array("clip.vision.projector.spatial_offsets", [b[1] for b in blocks])
    w.add_uint32("clip.vision.projector.query_side", QUERY)
    w.add_uint32("clip.vision.projector.window_side", WINDOW)
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    vec("v.image_newline", P, 0.0, 0.5)
    E = V_EMBD
    for k in range(len(blocks)):
        b = f"v.proj_blk.{k}."
        w.add_tensor(b + "img_pos", (rng.standard_normal((WINDOW * WINDOW, E)) * 0.3).astype(np.float32))
        w.add_tensor(b + "query", (rng.standard_normal((QUERY * QUERY, E)) * 0.3).astype(np.float32))
        for t in ("norm", "post_norm"):
            vec(b + t + ".weight", E)
            vec(b + t + ".bias", E, 0.0)
        for t in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "out"):
                mat(f"{b}{t}_{p}.weight", E, E, 0.15)
                vec(f"{b}{t}_{p}.bias", E, 0.0)
            vec(b + t + "_norm.weight", E)
            vec(b + t + "_norm.bias", E, 0.0)
        mat(b + "ffn_up.weight", QF_FF, E, 0.15)
        vec(b + "ffn_up.bias", QF_FF, 0.0)
        mat(b + "ffn_down.weight", E, QF_FF, 0.15)
        vec(b + "ffn_down.bias", E, 0.0)
        vec(b + "ffn_norm.weight", E)
        vec(b + "ffn_norm.bias", E, 0.0)
        mat(b + "linear.weight", P, E, 0.2)
        vec(b + "linear.bias", P, 0.0)
    return _finish(w, path)


def write_tiny_granite4v_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random Granite text model (tinymodel's: its multipliers), the byte vocabulary, no DeepStack mapping."""
    return write_tiny_model(path, "granite", qtype, seed, chat_template=chat_template)
