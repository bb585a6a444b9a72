"""Qwen2-VL and Qwen2.5-VL (2B/3B/7B/72B) language models (``qwen2vl``), text only, as llama.cpp's QWEN2VL graph.

The block is Qwen2's (``qwen2.py``: the Llama block with biases on Q, K and V, which llama.cpp requires here); what
sets the architecture apart is its rope, llama.cpp's multimodal rope (M-RoPE, ``rope.dimension_sections``): the
pairs of each head, taken in neox layout, fall in four consecutive sections (sector ``i % sum(sections)``), which
turn with a token's time, height, width and extra positions.  A text token's positions are ``(p, p, p, 0)``: the
first three sections turn as neox rope at position p, the extra one not at all (models/mrope_text.py's
:func:`~kvrun.models.mrope_text.mrope_tables`).  The published files' sections ([16, 24, 24, 0] for heads of 128)
cover every pair in the first three, so their text is plain neox rope; a file with an extra section keeps those pairs
unturned, as llama.cpp does.

Images (Qwen2-VL's and Qwen2.5-VL's mmproj, models/qwen2vl_image.py) go in as rows whose positions are per section:
(t, t + y, t + x, 0) for an image's row (y, x), and the text after an image goes on from t + max(nx, ny), as
llama.cpp's libmtmd feeds them (models/mrope_images.py): a forward over a cache that holds images turns each row by
per-row tables (:class:`~kvrun.models.mrope_text.MropeText`'s forward); one without turns as above.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer
from .mrope_text import MropeText, mrope_tables, rope_sections
from .qwen2 import Qwen2Model

__all__ = ["Qwen2VLModel", "mrope_tables", "rope_sections"]  # (the tables: models/mrope_text.py's, still named here)


class Qwen2VLModel(MropeText, Qwen2Model):
    archs = ("qwen2vl",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        rope_sections(g)  # (required: a one-line error before any weight is read)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.init_mrope(g)  # (text turns by the multimodal tables; image rows by their own sections' positions)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.bq is None or L.bk is None or L.bv is None:  # (required by llama.cpp's loader: the error names the first missing)
            for role in ("bq", "bk", "bv"):
                w.vector(role, i)
        return L
