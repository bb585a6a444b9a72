"""Janus-Pro's image side, as llama.cpp's clip.cpp builds it (``clip_graph_siglip`` for projector type "janus_pro") from
an mmproj file (loaders/mmproj.py): the SigLIP ViT of models/siglip.py and a two-layer MLP.

    pixels [3, S, S] (the picture resized to image_size as libmtmd's fixed-size preprocessor does: scaled to fit,
       sides rounded up, clip.cpp's port of Pillow's bicubic filter, centred on grey 127, Janus-Pro's pad colour
       (measured: the oracle's rows, 1e-3 off; on black, 4 off); normalised)
    -> SigLIP: patch embedding + bias, learned positions, pre-norm LayerNorm blocks with a GELU MLP, post LayerNorm
       (:class:`~kvrun.models.siglip.SiglipEncoder`)
    -> ``mm.0`` (+ bias), the ViT's activation (``clip.use_gelu``: GELU), ``mm.1`` (+ bias) -> [n_patches, n_text_embd]

so a picture is always (image_size / patch_size)^2 rows (576 for Janus-Pro's 384-pixel pictures in 16-pixel
patches), no pooling, no markers around them (runtime/vision_janus.py); the llama text model reads them causally.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .pillow_resize import BICUBIC, resize_padded
from .siglip import SiglipEncoder

F32 = np.float32
PAD = (127, 127, 127)  #: Janus-Pro's pad colour around a picture not square (clip.cpp's image_pad_color for janus_pro)

TENSOR_NAMES.update({"jp_mm0": "mm.0.weight", "jp_mm0_b": "mm.0.bias", "jp_mm1": "mm.1.weight", "jp_mm1_b": "mm.1.bias"})


def preprocess(img: np.ndarray, cfg: MmprojConfig, pad: tuple[int, int, int] = PAD) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, S, S] float32: libmtmd's fixed-size preprocessor with
    clip.cpp's default resize (Pillow's bicubic, PAD_CEIL) on a ``pad``-coloured square (Janus-Pro's :data:`PAD`;
    CogVLM's its own, models/cogvlm_image.py)."""
    S = cfg.image_size
    a = resize_padded(img, S, S, BICUBIC)
    if pad != (0, 0, 0) and a is not img:  # (the padding: where the scaled picture does not reach; clip.cpp fills it first)
        h, w = img.shape[:2]
        scale = min(F32(S) / F32(w), F32(S) / F32(h))
        nw, nh = min(int(np.ceil(F32(w) * scale)), S), min(int(np.ceil(F32(h) * scale)), S)
        ox, oy = (S - nw) // 2, (S - nh) // 2
        mask = np.ones((S, S), bool)
        mask[oy : oy + nh, ox : ox + nw] = False
        a = a.copy()
        a[mask] = np.asarray(pad, np.uint8)
    x = a.astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), F32)


class JanusProEncoder(SiglipEncoder):
    """Janus-Pro's SigLIP encoder and MLP projector from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        if cfg.ffn_op != "gelu":  # (SigLIP's MLP runs GELU here; the file states its activation, clip.use_gelu)
            raise UnsupportedModelError(f"{g.path}: kvrun runs Janus-Pro's SigLIP with GELU (clip.use_gelu); this file states {cfg.ffn_op}")
        super().__init__(g, cfg, backend)
        ld = WeightLoader(g, backend)
        self.mm0, self.mm0_b = ld.matrix("jp_mm0"), ld.host_vector("jp_mm0_b")
        self.mm1, self.mm1_b = ld.matrix("jp_mm1"), ld.host_vector("jp_mm1_b")

    def _project(self, ops: Any, x: Any) -> Any:
        """The MLP (clip.cpp's ``build_ffn`` with the ViT's activation) on either device's ``ops`` (models/siglip.py's
        forward calls it): the encoder's rows [n_patches, E] -> [n_patches, n_text_embd]."""
        return ops.linear(self.mm1, ops.act(ops.linear(self.mm0, x, self.mm0_b), "gelu"), self.mm1_b)
