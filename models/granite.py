"""IBM Granite 3.x (dense): the Llama block with four multipliers from the file (``ModelConfig``):
embeddings times ``embedding_scale``, each attention and FFN output times ``residual_scale``
before its residual add, attention scores times ``attention.scale`` (in place of
``1/sqrt(head_dim)``), logits divided by ``logit_scale``.  The Llama forward applies them where
they are not 1, so the class exists so the registry names it.

Granite 4.1 Vision's text model is this one with ``granite.deepstack_mapping`` (one entry a layer: -1, or the block of
an image row added to that layer's input), as llama.cpp 0.3.36's granite graph reads it.  Its image rows
(models/granite4v_image.py) are K projector blocks side by side, ``n_embd * (1 + n_deepstack_layers)`` wide
(``n_deepstack_layers``: the mapping's distinct blocks, llama.cpp's ``n_embd_inp``): block 0 is the row's embedding,
and layer il > 0 whose entry is b >= 0 gets block b added to its input before its attention norm (layer 0's entry
is not read: its input is block 0).  Text rows add nothing (llama.cpp pads them with zeros), and the image rows are
not multiplied by ``embedding_scale`` (llama.cpp scales only token inputs of a model with DeepStack levels).  The
same mechanism as Qwen3-VL's (models/qwen3vl.py): ``n_embd_inp`` for Engine.eval_embd, the rows split in
:meth:`GraniteModel.forward`, the blocks added in :meth:`GraniteModel.layer_input`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .llama import LlamaLayer, LlamaModel


def deepstack_mapping(g: GGUFFile, n_layer: int) -> tuple[list[int], int]:
    """``{arch}.deepstack_mapping`` as llama.cpp's granite loader reads it: each layer's block (-1 where none or where
    the array stops) and the number of distinct blocks (``n_deepstack_layers``); an entry past that number is refused in
    one line, as llama.cpp refuses it."""
    m = g.arch_get("deepstack_mapping")
    raw = [] if m is None else [int(v) for v in np.asarray(m).reshape(-1)]
    n = len({v for v in raw if v >= 0})
    bad = [v for v in raw if v > n]
    if bad:
        raise GGUFError(f"{g.path}: {g.architecture}.deepstack_mapping names block {bad[0]} of {n} DeepStack levels")
    return (raw + [-1] * n_layer)[:n_layer], n


class GraniteModel(LlamaModel):
    archs = ("granite",)
    takes_images = True  # (its forward is Llama's, Granite 4.1 Vision's image rows split first)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.deepstack, self.n_deepstack_layers = deepstack_mapping(g, cfg.n_layer)
        self._rows: np.ndarray | None = None  # the forward's image rows, every block, while it runs (DeepStack only)
        self._layer_index = {id(L): i for i, L in enumerate(self.layers)}

    @property
    def n_embd_inp(self) -> int:
        """An image row's width: the embedding and its DeepStack blocks (llama.cpp's ``n_embd_inp``)."""
        return self.cfg.n_embd * (1 + self.n_deepstack_layers)

    def embedding_scale(self) -> float:
        """Granite's, but 1 for the image rows of a model with DeepStack levels (llama.cpp's build_inp_embd)."""
        return 1.0 if self._rows is not None else self.cfg.embedding_scale

    def forward(self, tokens, pos, cache, out_rows, logits) -> None:
        """LlamaModel's forward; a DeepStack model's image rows are split into their embedding (block 0) and the blocks
        :meth:`layer_input` adds."""
        rows, n = self.input_embd, self.cfg.n_embd
        if rows is not None and self.n_deepstack_layers:
            if rows.shape[1] != self.n_embd_inp:
                raise KvrunError(f"image rows {rows.shape[1]} wide; this model takes {self.n_embd_inp} (its embedding and "
                                 f"{self.n_deepstack_layers} DeepStack levels)")  # fmt: skip
            self.input_embd, self._rows = np.ascontiguousarray(rows[:, :n]), rows
        try:
            super().forward(tokens, pos, cache, out_rows, logits)
        finally:
            self.input_embd, self._rows = rows, None

    def layer_input(self, L: LlamaLayer, x: Any) -> None:
        """Layer il's input gets the block its mapping names (il > 0: llama.cpp skips layer 0, whose input is block 0)."""
        super().layer_input(L, x)
        if self._rows is not None:
            il = self._layer_index[id(L)]
            b, n = self.deepstack[il], self.cfg.n_embd
            if il > 0 and b >= 0:
                self.be.add(x, self.be.vector(np.ascontiguousarray(self._rows[:, b * n : (b + 1) * n])))  # (uploaded on the GPU)
