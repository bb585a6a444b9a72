"""Qwen2-VL and Qwen2.5-VL (2B/3B/7B/72B) language models (``qwen2vl``), text only, as llama.cpp's QWEN2VL graph.

The block is Qwen2's (``qwen2.py``: the Llama block with biases on Q, K and V, which llama.cpp requires here); what
sets the architecture apart is its rope, llama.cpp's multimodal rope (M-RoPE, ``rope.dimension_sections``): the
pairs of each head, taken in neox layout, fall in four consecutive sections (sector ``i % sum(sections)``), which
turn with a token's time, height, width and extra positions.  A text token's positions are ``(p, p, p, 0)``: the
first three sections turn as neox rope at position p, the extra one not at all (:func:`mrope_tables`).  The
published files' sections ([16, 24, 24, 0] for heads of 128) cover every pair in the first three, so their text is
plain neox rope; a file with an extra section keeps those pairs unturned, as llama.cpp does.

Images (Qwen2-VL's and Qwen2.5-VL's mmproj, models/qwen2vl_image.py) go in as rows whose positions are per section:
(t, t + y, t + x, 0) for an image's row (y, x), and the text after an image goes on from t + max(nx, ny), as
llama.cpp's libmtmd feeds them (models/mrope_images.py): a forward over a cache that holds images turns each row by
per-row tables (:meth:`Qwen2VLModel.forward`); one without turns as above.
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer
from .mrope_images import forward_positions, mrope_rows
from .qwen2 import Qwen2Model


def rope_sections(g: GGUFFile) -> list[int]:
    """The file's ``rope.dimension_sections`` padded to four (time, height, width, extra), required as llama.cpp
    requires it for the multimodal-rope architectures."""
    sections = g.arch_get("rope.dimension_sections")
    if sections is None:
        raise GGUFError(f"{g.path}: metadata {g.architecture}.rope.dimension_sections is missing; the file is not a complete model")
    s = [int(x) for x in sections][:4]
    return s + [0] * (4 - len(s))


def mrope_tables(cos: np.ndarray, sin: np.ndarray, sections: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Neox rope tables ``[n_pos, n_rot/2]`` made llama.cpp's multimodal rope's for text: pair ``i``'s sector is
    ``i % sum(sections)``; the sectors of the first three sections turn with the text position, the extra
    section's with position 0, i.e. not at all (ggml's ``ggml_mrope_cache_init``, not interleaved)."""
    n, turned = sum(sections), sum(sections[:3])
    cos, sin = cos.copy(), sin.copy()
    for i in range(cos.shape[1]):
        if n > 0 and i % n >= turned:
            cos[:, i], sin[:, i] = 1.0, 0.0
    return cos, sin


class Qwen2VLModel(Qwen2Model):
    archs = ("qwen2vl",)
    takes_images = True  # its forward reads Model.input_embd (Qwen2-VL's image rows: Engine.eval_embd)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        sections = rope_sections(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.sections, self.neox_cos, self.neox_sin = sections, self.rope_cos, self.rope_sin  # (image rows' tables)
        self.rope_cos, self.rope_sin = mrope_tables(self.rope_cos, self.rope_sin, sections)
        self._row_rope: tuple | None = None  # (pos, cos, sin) of the forward running, where its rows turn by their own

    def forward(self, tokens, pos, cache, out_rows, logits) -> None:
        """LlamaModel's forward; where the cache holds images (models/mrope_images.py) each row turns by its own
        sections' positions, through per-row tables."""
        P = forward_positions(cache, pos, self.input_embd is not None)
        if P is not None:
            cos, sin = mrope_rows(P, self.sections, self.neox_cos, self.neox_sin, self.rope_cos, self.rope_sin)
            self._row_rope = (np.arange(len(P), dtype=np.int32), cos, sin)
        try:
            super().forward(tokens, pos, cache, out_rows, logits)
        finally:
            self._row_rope = None

    def qk_norm_rope(self, L: LlamaLayer, q, k, q3, k3, pos, cos, sin) -> None:
        if self._row_rope is not None:
            pos, cos, sin = self._row_rope
        super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.bq is None or L.bk is None or L.bv is None:  # (required by llama.cpp's loader: the error names the first missing)
            for role in ("bq", "bk", "bv"):
                w.vector(role, i)
        return L
