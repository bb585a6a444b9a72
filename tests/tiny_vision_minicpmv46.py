"""A tiny random MiniCPM-V 4.6 projector (mmproj, ``general.architecture`` "clip", projector type "minicpmv4_6"), for
tests held to llama.cpp's libmtmd beside tiny_vision_minicpmv.py's Qwen3 text model (128 wide, ``<image>``,
``<slice>`` and their ends in its vocabulary).

Laid out as llama.cpp's converter writes MiniCPM-V 4.6's: the SigLIP ViT (``v.patch_embd`` with its bias, 70 x 70
learned positions ``v.position_embd`` that clip.cpp buckets a part's patches into, ``v.blk.N.*`` with biases,
``v.post_ln``), the ViT merger inserted after layer ``clip.vision.wa_layer_indexes[0]`` (``v.vit_merger.ln1``, its
window attention ``attn_{q,k,v,out}``, the 2x2 downsample's LayerNorm ``ds_ln`` over 4 patches side by side and its
MLP ``ds_ffn_up``/``ds_ffn_down``) and the final merger (``mm.input_norm`` over 4 rows side by side, ``mm.up``,
``mm.down`` into the text width), ``clip.vision.projector.scale_factor`` 4 (both mergers: 16 patches a row) unless
``scale`` says 2 (libmtmd's "4x" variant: no ViT merger).  Toy sizes: 112-pixel slices (MiniCPM-V 4.6's 448) in
14-pixel patches, a 32-wide encoder of 3 layers (2 heads), the merger inserted after layer 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit
from tiny_vision_minicpmv import MEAN, POS_SIDE, STD, TEXT_GEOMETRY
from tinymodel import _finish

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, INSERT = 112, 14, 32, 48, 3, 2, 1
DS_FF, MERGER_FF = 64, 96  # the ViT merger's downsample MLP and the final merger's widths


def write_tiny_minicpmv46_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, scale: int = 4, insert: int | None = INSERT,
                                 n_text_embd: int = TEXT_GEOMETRY[0], drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """A random MiniCPM-V 4.6 projector, its matrices stored as ``qtype``; ``scale`` its scale_factor (4, or 2: no ViT
    merger), ``insert`` the layer the ViT merger follows (None: the key left out); ``drop``: tensors left out."""
    rng = np.random.default_rng(seed)
    E, geometry = V_EMBD, (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-minicpmv46-mmproj", "minicpmv4_6", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry,
                      n_text_embd, MEAN, STD, scale=scale)  # fmt: skip
    if insert is not None:
        w.add_array("clip.vision.wa_layer_indexes", [insert])
    mat_, vec_, _ = write_vit(w, rng, qtype, geometry, PATCH, PATCH * POS_SIDE)

    def mat(name: str, rows: int, cols: int, scale: float = 0.3) -> None:
        if name in drop:
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    if scale == 4:
        m = "v.vit_merger."
        vec(m + "ln1.weight", E)
        vec(m + "ln1.bias", E, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(m + t + ".weight", E, E)
            vec(m + t + ".bias", E, 0.0)
        vec(m + "ds_ln.weight", 4 * E)
        vec(m + "ds_ln.bias", 4 * E, 0.0)
        mat(m + "ds_ffn_up.weight", DS_FF, 4 * E)
        vec(m + "ds_ffn_up.bias", DS_FF, 0.0)
        mat(m + "ds_ffn_down.weight", E, DS_FF)
        vec(m + "ds_ffn_down.bias", E, 0.0)
    vec("mm.input_norm.weight", 4 * E)
    vec("mm.input_norm.bias", 4 * E, 0.0)
    mat("mm.up.weight", MERGER_FF, 4 * E)
    vec("mm.up.bias", MERGER_FF, 0.0)
    mat("mm.down.weight", n_text_embd, MERGER_FF)
    vec("mm.down.bias", n_text_embd, 0.0)
    return _finish(w, path)
