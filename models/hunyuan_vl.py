"""Tencent HunyuanOCR / Hunyuan-VL language model (``hunyuan_vl``), text only, as llama.cpp's HUNYUAN_VL graph.

Hunyuan dense's block (``hunyuan_dense.py``: per-head RMSNorm of Q and K *after* the rope, NTK-alpha on the rope
base where the file states ``rope.scaling.alpha``), whose rope is Hunyuan's XD-RoPE: where the file states
``rope.dimension_sections`` llama.cpp turns each head's pairs as its multimodal rope (M-RoPE, neox layout) in four
sections; a text token's positions are ``(p, p, p, 0)``, so the pairs of the fourth section do not turn at all for
text (``mrope_text.mrope_tables``).  Without sections it is plain neox rope, as Hunyuan dense.

Images (the "hunyuanvl" mmproj's rows, models/hunyuanvl_image.py; a sectioned file only) go in with libmtmd's XD-RoPE
positions (``MTMD_POS_TYPE_HUNYUANVL``): a picture of ``ny`` x ``nx`` blocks fed from slot s0 is 1 + ny (nx + 1) + 1
rows, its begin and end rows at (s, s, s, s), row r's block c (c = nx: the row's newline) at (s, c, r, k) where s is
the row's own slot and k the picture's index among the pictures in the cache, from 0 (mtmd's image_idx: section 1
the column, 2 the row, 3 the picture; the row and column not offset by s0).  A picture takes as many positions as
rows, so every text token stays at (p, p, p, 0), p its slot: the cache records its pictures (:func:`add_picture`,
``KVCache.media[XdPictures]``, cache/xdrope.py, cut with the positions it forgets) for their own rows' tables
(:meth:`HunyuanVLModel.forward`), which turn every section, the fourth included, and for the next picture's index.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.batch import BatchedKVCache
from ..cache.xdrope import XdPicture, XdPictures
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .hunyuan_dense import HunyuanDenseModel
from .llama import LlamaLayer
from .mrope_text import mrope_tables, rope_rows, rope_sections


def pictures_of(cache: Any) -> tuple[XdPicture, ...]:
    """The pictures ``cache`` (a KVCache) records, in slot order."""
    rec = cache.media.get(XdPictures)
    return rec.pictures if rec is not None else ()


def add_picture(cache: Any, nx: int, ny: int) -> XdPicture:
    """Record a picture of ``ny`` x ``nx`` blocks about to be fed at ``cache.offset`` (what the cache had recorded
    from there on is forgotten: a feed refused, a truncation); returns it, numbered after those before it."""
    kept = tuple(im for im in pictures_of(cache) if im.end <= cache.offset)
    im = XdPicture(cache.offset, int(nx), int(ny), len(kept))
    cache.media[XdPictures] = XdPictures(kept + (im,))
    return im


def xd_positions(cache: Any, slots: np.ndarray) -> np.ndarray | None:
    """Positions [T, 4] of rows fed at ``slots`` into ``cache``: a recorded picture's rows as the module says, any
    other row (p, p, p, 0); None where no row is a picture's."""
    pics = pictures_of(cache)
    s = np.asarray(slots, np.int64)
    if not pics or len(s) == 0:
        return None
    P = s[:, None] * np.array([1, 1, 1, 0], np.int64)
    hit = False
    for im in pics:
        inside = (s >= im.slot) & (s < im.end)
        if not inside.any():
            continue
        hit = True
        i = s[inside] - im.slot
        last = im.end - im.slot - 1
        row, col = np.divmod(np.maximum(i - 1, 0), im.nx + 1)
        body = np.stack([s[inside], col, row, np.full_like(i, im.index)], axis=1)
        edge = (i == 0) | (i == last)  # (the begin and end rows: their slot in every section)
        body[edge] = s[inside][edge, None]
        P[inside] = body
    return P if hit else None


def xd_rows(P: np.ndarray, sections: list[int], cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row rope tables [T, n_rot/2] for positions ``P`` [T, 4]: pair i (sector ``i % sum(sections)``) turns as
    neox rope (``cos``/``sin``, the plain tables) at its section's position, the fourth section's too (ggml's
    ``rope_multi``, not interleaved: the fourth section turns by the fourth position)."""
    half = cos.shape[1]
    n = sum(sections)
    sector = np.arange(half) % n if n > 0 else np.zeros(half, np.int64)
    sec = np.searchsorted(np.cumsum(sections[:3]), sector, side="right")
    p = P[:, np.minimum(sec, 3)]
    idx = np.arange(half)[None, :]
    return np.ascontiguousarray(cos[p, idx], np.float32), np.ascontiguousarray(sin[p, idx], np.float32)


class HunyuanVLModel(HunyuanDenseModel):
    archs = ("hunyuan_vl",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.sections: list[int] | None = None
        self._row_rope: tuple | None = None  # (pos, cos, sin) of the forward running, where its rows turn by their own
        if g.arch_get("rope.dimension_sections") is not None:  # (optional, as llama.cpp reads it: none, plain neox)
            self.sections, self.neox_cos, self.neox_sin = rope_sections(g), self.rope_cos, self.rope_sin  # (picture rows' tables)
            self.rope_cos, self.rope_sin = mrope_tables(self.rope_cos, self.rope_sin, self.sections)

    @property
    def takes_images(self) -> bool:
        """A picture's rows need their XD-RoPE positions: only a sectioned model takes them."""
        return self.sections is not None

    def forward(self, tokens, pos, cache, out_rows, logits) -> None:
        """LlamaModel's forward; where picture rows are fed into a cache that recorded them (:func:`add_picture`),
        each row turns by its own four positions, through per-row tables."""
        batch = isinstance(cache, BatchedKVCache)  # (a batch's rows: each sequence's by its own pictures)
        seqs = list(zip(cache.caches, cache.bounds, cache.bounds[1:])) if batch else [(cache, 0, len(pos))]
        if self.sections is not None and self.input_embd is None:  # (text over a picture recorded, its rows never fed: it goes)
            for c, lo, hi in seqs:
                if hi > lo and XdPictures in c.media:
                    kept = c.media.pop(XdPictures).kept(int(pos[lo]))
                    if kept is not None:
                        c.media[XdPictures] = kept
        if self.sections is not None and self.input_embd is not None:
            parts = [xd_positions(c, np.asarray(pos[lo:hi])) for c, lo, hi in seqs]
            if any(P is not None for P in parts):
                P = np.concatenate([P if P is not None else np.asarray(pos[lo:hi], np.int64)[:, None] * np.array([1, 1, 1, 0])
                                    for P, (_, lo, hi) in zip(parts, seqs)])  # fmt: skip
                cos, sin = xd_rows(P, self.sections, self.neox_cos, self.neox_sin)
                # (a prefill, never a captured step: per-row tables uploaded on the GPU; the text after a picture
                # keeps its plain positions, so a decode step needs no shift, unlike M-RoPE's ops/gpu/mrope.cu)
                self._row_rope = (np.arange(len(P), dtype=np.int32), self.be.vector(cos), self.be.vector(sin))
        try:
            super().forward(tokens, pos, cache, out_rows, logits)
        finally:
            self._row_rope = None

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        # (no shifted text positions: under XD-RoPE a picture takes as many positions as rows, text keeps its slots)
        super().qk_norm_rope(L, q, k, q3, k3, *rope_rows(self._row_rope, None, pos, cos, sin))
