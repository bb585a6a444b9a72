"""Qwen2-VL's and Qwen2.5-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out and feeds them.

At a picture's ``<__media__>`` the prompt holds ``<|vision_start|>``, the picture's rows (models/qwen2vl_image.py:
``ny`` x ``nx`` of them, the picture's own size rounded to 28-pixel blocks) and ``<|vision_end|>``, tokenized with
the text around them as Gemma 3's markers are (runtime/vision.py).  The rows are fed causally, as any token
(``mtmd_decode_use_non_causal`` is false for these projectors), one cache slot each; what differs is their rope
positions: the cache records the picture's grid before its rows go in (models/mrope_images.py), so that the text
model turns row (y, x) by (t, t + y, t + x) and the text after the picture goes on from t + max(nx, ny), as
``mtmd_helper_eval_chunks`` positions them.  A picture takes nx * ny slots of the context (llama.cpp's KV cells).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.mmproj import QWEN2VL_PROJECTORS, open_mmproj
from ..models import qwen2vl_image
from ..models.mrope_images import add_image
from ..models.siglip import SiglipEncoder

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


class GridRows(np.ndarray):
    """A picture's rows [ny * nx, n_embd] that know their grid (``grid``: (nx, ny)), for the cache to record."""

    grid: tuple[int, int] = (0, 0)

    def __array_finalize__(self, obj: Any) -> None:
        self.grid = getattr(obj, "grid", (0, 0))


def load_encoder(mmproj: str | os.PathLike, backend: Any) -> Any:
    """The encoder of a projector file: Qwen2-VL's or Qwen2.5-VL's (:class:`~kvrun.models.qwen2vl_image.Qwen2VLEncoder`),
    else the SigLIP one (Gemma 3's, SmolVLM's); a one-line error for another."""
    g, cfg = open_mmproj(mmproj)
    if cfg.projector_type == "qwen3vl_merger":  # (Qwen3-VL: learned positions, DeepStack; models/qwen3vl_image.py)
        from ..models.qwen3vl_image import Qwen3VLEncoder

        return Qwen3VLEncoder(g, cfg, backend)
    if cfg.projector_type in QWEN2VL_PROJECTORS:
        return qwen2vl_image.Qwen2VLEncoder(g, cfg, backend)
    if cfg.projector_type == "glm4v":  # (GLM-4V: RMSNorm ViT, learned positions, 2x2 conv, SwiGLU merger; models/glm4v_image.py)
        from ..models.glm4v_image import Glm4VEncoder

        return Glm4VEncoder(g, cfg, backend)
    if cfg.projector_type == "lfm2":  # (LFM2-VL: SigLIP2 at the picture's size, models/lfm2vl_image.py)
        from ..models.lfm2vl_image import Lfm2VLEncoder

        return Lfm2VLEncoder(g, cfg, backend)
    if cfg.projector_type == "internvl":  # (InternVL: InternViT on 448-pixel tiles, models/internvl_image.py)
        from ..models.internvl_image import InternVLEncoder

        return InternVLEncoder(g, cfg, backend)
    if cfg.projector_type == "gemma4v":  # (Gemma 4: 2-D rope ViT at the picture's size, 3x3 pooling, models/gemma4v_image.py)
        from ..models.gemma4v_image import Gemma4VEncoder

        return Gemma4VEncoder(g, cfg, backend)
    if cfg.projector_type == "pixtral":  # (Pixtral / Mistral Small 3.1: 2-D rope ViT at the picture's size, models/pixtral_image.py)
        from ..models.pixtral_image import PixtralEncoder

        return PixtralEncoder(g, cfg, backend)
    if cfg.projector_type == "resampler":  # (MiniCPM-V: SigLIP on an overview and slices, a resampler; models/minicpmv_image.py)
        from ..models.minicpmv_image import MiniCPMVEncoder

        return MiniCPMVEncoder(g, cfg, backend)
    if cfg.projector_type == "kimivl":  # (Kimi-VL: MoonViT at the picture's size, 2x2 merge; models/kimivl_image.py)
        from ..models.kimivl_image import KimiVLEncoder

        return KimiVLEncoder(g, cfg, backend)
    if cfg.projector_type == "llama4":  # (Llama 4: a 2-D rope ViT on 336-pixel tiles, pixel shuffle; models/llama4_image.py)
        from ..models.llama4_image import Llama4VisionEncoder

        return Llama4VisionEncoder(g, cfg, backend)
    return SiglipEncoder(g, cfg, backend)


class Qwen2VLLayout:
    """A Qwen2-VL projector beside ``engine``'s ``qwen2vl`` text model: pictures to rows, rows into a cache."""

    def __init__(self, engine: Any, encoder: qwen2vl_image.Qwen2VLEncoder) -> None:
        if engine.cfg.arch != "qwen2vl":
            raise KvrunError(f"{engine.path}: a {encoder.cfg.projector_type} projector goes with a Qwen2-VL / Qwen2.5-VL text "
                             f"model (qwen2vl), not {engine.cfg.arch}")  # fmt: skip
        tok = engine.tokenizer
        for t in (VISION_START, VISION_END):
            if len(tok.encode(t, add_bos=False, parse_special=True)) != 1:
                raise KvrunError(f"{engine.path}: the vocabulary has no {t} token; not a Qwen2-VL model")
        self.engine, self.encoder = engine, encoder

    def grid(self, image: np.ndarray) -> tuple[int, int]:
        """(nx, ny): the rows a side uint8 RGB ``image`` [h, w, 3] becomes."""
        return qwen2vl_image.grid(image.shape[1], image.shape[0], self.encoder.cfg)

    def n_positions(self, image: np.ndarray) -> int:
        """Cache slots the picture takes: its rows, nx * ny."""
        nx, ny = self.grid(image)
        return nx * ny

    def rows(self, image: np.ndarray) -> GridRows:
        """The picture resized, normalised and encoded: rows [ny * nx, n_embd] with their grid."""
        rows = self.encoder.encode(qwen2vl_image.preprocess(image, self.encoder.cfg)).view(GridRows)
        rows.grid = self.grid(image)
        return rows

    def feed(self, cache: Any, rows: np.ndarray) -> None:
        """Feed a picture's rows after what ``cache`` holds, its grid recorded first so that they turn by their
        (t, h, w) positions."""
        nx, ny = getattr(rows, "grid", (0, 0))
        if nx * ny != len(rows):
            raise KvrunError(f"{len(rows)} image rows without their grid; a Qwen2-VL picture's rows come from Vision.image_rows")
        add_image(cache, nx, ny)
        self.engine.eval_embd(cache, np.asarray(rows))
