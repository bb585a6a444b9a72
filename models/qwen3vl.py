"""Qwen3-VL language models, text only, as llama.cpp's QWEN3VL and QWEN3VLMOE graphs: ``qwen3vl`` (Qwen3-VL
2B/4B/8B/32B: Qwen3's block, ``qwen3.py``) and ``qwen3vlmoe`` (Qwen3-VL 30B-A3B/235B-A22B: Qwen3-MoE's, ``qwen3moe.py``).

What sets them apart from Qwen3 is the rope: llama.cpp's *interleaved* multimodal rope (IMROPE,
``rope.dimension_sections``), which Qwen3.5 shares (``qwen35.imrope_tables``).  Pair ``i``'s sector is
``i % sum(sections)``; sectors ``3j``, ``3j+1``, ``3j+2`` turn with the time, height and width positions while below
3 x their section, the others with the extra position.  A text token's positions are ``(p, p, p, 0)``, so text is
neox rope at p except the pairs no section claims, which do not turn: with the published files' sections
[24, 20, 20, 0] over heads of 128, pairs 61 and 62 (past 3 x 20 in the height and width slots) stay unturned in
llama.cpp, where Hugging Face's model turns them with the time position.  kvrun follows llama.cpp.

DeepStack (``n_deepstack_layers``): the vision encoder hands the first layers extra image features, added to their
outputs.  Text has none, and llama.cpp adds nothing then; the file's ``embedding_length`` is the text width
(llama.cpp widens its own count to ``n_embd * (1 + n_deepstack_layers)`` only for the image rows it takes in).
Q and K's per-head norms are required, as llama.cpp's loader requires them.

Images (Qwen3-VL's mmproj, models/qwen3vl_image.py; runtime/vision_qwen3vl.py) come as rows ``n_embd * (1 +
n_deepstack_layers)`` wide: the main part is the row's embedding, level j (the next n_embd) is added to the output
of layer j (j < n_deepstack_layers), as llama.cpp's graph views ``inp_embd`` (text rows are zero-padded there, so
add nothing).  Their positions are Qwen2-VL's (models/mrope_images.py: (t, t + y, t + x) for row (y, x), the text
after going on from t + max(nx, ny)), turned by the interleaved sections (:func:`imrope_rows`).
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..cache.batch import BatchedKVCache
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .mrope_images import forward_positions
from .mrope_text import decode_shift, rope_rows, text_rope_positions
from .qwen2vl import rope_sections
from .qwen3 import Qwen3Model
from .qwen35 import imrope_tables
from .qwen3moe import Qwen3MoeModel


def imrope_rows(P: np.ndarray, sections: list[int], cos: np.ndarray, sin: np.ndarray, text_cos: np.ndarray,
                text_sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-row rope tables [T, n_rot/2] for positions ``P`` [T, 4] (time, height, width, extra) under the interleaved
    sections (ggml's ``rope_multi``, ``is_imrope``): pair i's sector s = ``i % sum(sections)`` turns with the time
    position where s % 3 == 0 and s < 3 x sections[0], the height where s % 3 == 1 and s < 3 x sections[1], the
    width where s % 3 == 2 and s < 3 x sections[2]; the rest as the text tables have them (unturned).  ``cos``/``sin``:
    the plain neox tables; models/mrope_images.mrope_rows is Qwen2-VL's consecutive-sections counterpart."""
    half = cos.shape[1]
    s = np.arange(half) % max(sum(sections), 1)
    sec = np.full(half, 3)
    for j in range(3):
        sec[(s % 3 == j) & (s < 3 * sections[j])] = j
    idx, ext = np.arange(half), sec >= 3
    p = P[:, sec]  # [T, half]
    c, sn = cos[p, idx[None, :]].astype(np.float32), sin[p, idx[None, :]].astype(np.float32)
    c[:, ext], sn[:, ext] = text_cos[0, ext], text_sin[0, ext]
    return np.ascontiguousarray(c), np.ascontiguousarray(sn)


class _Qwen3VLText(LlamaModel):
    """What both Qwen3-VL text models add to their Qwen3 base: the interleaved multimodal rope, the QK norms required,
    and image rows (their M-RoPE positions, their DeepStack levels)."""

    takes_images = True  # its forward reads Model.input_embd (Qwen3-VL's image rows: Engine.eval_embd)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        sections = rope_sections(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.n_deepstack_layers = int(g.arch_get("n_deepstack_layers", 0) or 0)  # (image rows only: text adds nothing)
        self.sections, self.neox_cos, self.neox_sin = sections, self.rope_cos, self.rope_sin  # (image rows' tables)
        self.rope_cos, self.rope_sin = imrope_tables(self.rope_cos, self.rope_sin, sections)
        self._row_rope: tuple | None = None  # (pos, cos, sin) of the forward running, where its rows turn by their own
        self._text_pos = None  # its text rows' rope positions where pictures shifted them (mrope_text.text_rope_positions)
        self._deepstack: np.ndarray | None = None  # the forward's image rows' DeepStack levels [T, n_deepstack * n_embd]
        #: rows fed while set turn every rope pair by the row's plain position (an audio clip's, as libmtmd's
        #: set_position_mrope_1d gives them: models/qwen3a_audio.py ``audio_rope``), unless the cache holds pictures
        self.plain_rows = False
        self._layer_index = {id(L): i for i, L in enumerate(self.layers)}

    @property
    def n_embd_inp(self) -> int:
        """An image row's width: the embedding and its DeepStack levels (llama.cpp's ``n_embd_inp``)."""
        return self.cfg.n_embd * (1 + self.n_deepstack_layers)

    def forward(self, tokens, pos, cache, out_rows, logits) -> None:
        """LlamaModel's forward; image rows split into their embedding and DeepStack levels (added in
        :meth:`layer_input`), and where the cache holds images each row turns by its own sections' positions
        (Qwen2VLModel.forward's way, the interleaved tables)."""
        rows, n = self.input_embd, self.cfg.n_embd
        if rows is not None and rows.shape[1] != n:
            if rows.shape[1] != self.n_embd_inp:
                raise KvrunError(f"image rows {rows.shape[1]} wide; this model takes {n} or, with its DeepStack levels, {self.n_embd_inp}")
            self.input_embd, self._deepstack = np.ascontiguousarray(rows[:, :n]), rows[:, n:]
        if rows is None and not isinstance(cache, BatchedKVCache):  # text: its own tables, shifted positions (graph-safe)
            self._text_pos = text_rope_positions(self, cache, pos)
        else:
            P = forward_positions(cache, pos, rows is not None)
            if P is not None:
                cos, sin = imrope_rows(P, self.sections, self.neox_cos, self.neox_sin, self.rope_cos, self.rope_sin)
                self._row_rope = (np.arange(len(P), dtype=np.int32), self.be.vector(cos), self.be.vector(sin))
            elif rows is not None and self.plain_rows:  # (the plain neox table's row p: all four positions p)
                p = np.asarray(pos, np.int64).reshape(-1)
                self._row_rope = (np.arange(p.size, dtype=np.int32), self.be.vector(np.ascontiguousarray(self.neox_cos[p])),
                                  self.be.vector(np.ascontiguousarray(self.neox_sin[p])))  # fmt: skip
        try:
            super().forward(tokens, pos, cache, out_rows, logits)
        finally:
            self.input_embd, self._deepstack, self._row_rope, self._text_pos = rows, None, None, None

    def decode_graph_key(self, cache, pos: int) -> int:
        """runtime/graphs.py's key part: the shift a text step after pictures turns by (models/mrope_text.py)."""
        return decode_shift(cache, pos)

    def qk_norm_rope(self, L: LlamaLayer, q, k, q3, k3, pos, cos, sin) -> None:
        super().qk_norm_rope(L, q, k, q3, k3, *rope_rows(self._row_rope, self._text_pos, pos, cos, sin))

    def _add_level(self, j: int, x) -> None:
        """DeepStack level j of the rows fed, where they carry one, into the residual stream ``x``."""
        if self._deepstack is not None and 0 <= j < self.n_deepstack_layers:
            n = self.cfg.n_embd
            self.be.add(x, self.be.vector(self._deepstack[:, j * n : (j + 1) * n]))  # (host levels: uploaded on the GPU)

    def layer_input(self, L: LlamaLayer, x) -> None:
        """Layer j's output gets DeepStack level j (llama.cpp adds it after the layer): added here, at layer j + 1's
        input, or before the output norm for the last layer (:meth:`output_head`); levels past the layers, none."""
        super().layer_input(L, x)
        self._add_level(self._layer_index[id(L)] - 1, x)

    def output_head(self, x, out_rows, logits) -> None:
        self._add_level(self.cfg.n_layer - 1, x)
        super().output_head(x, out_rows, logits)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.q_norm is None:  # (llama.cpp requires both, one head wide: the error names the missing tensor)
            w.vector("q_norm", i)
        if L.qk_norm_full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; {self.cfg.arch}'s are one head "
                            f"({self.cfg.head_dim}) wide")  # fmt: skip
        return L


class Qwen3VLModel(_Qwen3VLText, Qwen3Model):
    archs = ("qwen3vl",)


class Qwen3VLMoeModel(_Qwen3VLText, Qwen3MoeModel):
    archs = ("qwen3vlmoe",)
