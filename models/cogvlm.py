"""CogVLM (THUDM's CogVLM, CogVLM2, CogAgent) language model (``cogvlm``), as llama.cpp's COGVLM graph.

The Llama block (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU FFN -> residual), multi-head, with Q, K and V
fused in one ``attn_qkv`` (``3 * n_embd`` rows, Q's then K's then V's, no biases) and neox rope over whole heads.

What sets the architecture apart is its *visual expert*: every layer holds a second set of attention and FFN weights
(``vis_attn_qkv``, ``vis_attn_output``, ``vis_gate``, ``vis_up``, ``vis_down``) that image positions run through
instead of the language ones.  llama.cpp picks the set per batch: a batch of tokens (text) takes the language
weights, a batch of embeddings (the image rows of CogVLM's mmproj) the visual ones.  kvrun does the same: a forward
over ``Model.input_embd`` (``Engine.eval_embd``: a picture's rows, runtime/vision_cogvlm.py) runs every layer with
its visual expert's weights, any other with the language ones.  A file without the visual expert runs text alone and
takes no images (``takes_images``).  On the GPU the expert's weights are uploaded as the language ones: the picture's
encoder runs on the GPU too (models/cogvlm_image.py), its rows run through the expert's weights in the same GPU
forward; decode steps (text) keep the language ones.
"""

from __future__ import annotations

from typing import Any

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel

TENSOR_NAMES.update({  # the visual expert's (llama.cpp's LLM_TENSOR_VISEXP_*)
    "vis_wqkv": "blk.{i}.vis_attn_qkv.weight", "vis_wo": "blk.{i}.vis_attn_output.weight",
    "vis_gate": "blk.{i}.vis_gate.weight", "vis_up": "blk.{i}.vis_up.weight", "vis_down": "blk.{i}.vis_down.weight",
})  # fmt: skip
_TEXT_ROLES = ("wqkv", "wo", "w_gate", "w_up", "w_down")


class CogVLMModel(LlamaModel):
    archs = ("cogvlm",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.text_layers = self.layers
        w = WeightLoader(g, backend)
        self.has_expert = w.has("vis_wqkv", 0)
        #: the visual expert's layers (the norms shared with the language ones), or None: a file without it
        self.vis_layers = None
        if self.has_expert:
            self.vis_layers = [self.load_layer(w, i, "vis_") for i in range(cfg.n_layer)]

    @property
    def takes_images(self) -> bool:
        """Image rows run through the visual expert: a file with it takes them."""
        return self.has_expert

    def load_layer(self, w: WeightLoader, i: int, expert: str = "") -> LlamaLayer:
        """Layer i's language weights, or (``expert`` "vis_") its visual expert's, both with the layer's norms."""
        c = self.cfg
        d = c.n_head * c.head_dim
        qkv, wo, gate, up, down = (expert + r for r in ("wqkv", "wo", "gate", "up", "down")) if expert else _TEXT_ROLES
        wq, wk, wv = w.matrix_rows(qkv, i, (d, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix(wo, i), bq=None, bk=None, bv=None,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix(gate, i), w_up=w.matrix(up, i), w_down=w.matrix(down, i),
        )  # fmt: skip

    def forward(self, tokens: Any, pos: Any, cache: KVCache, out_rows: Any, logits: Any) -> None:
        """Llama's forward with the language weights, or over image rows (``input_embd``) the visual expert's, as
        llama.cpp's graph picks them per batch."""
        if self.input_embd is not None:
            if self.vis_layers is None:
                raise UnsupportedModelError("CogVLM's image rows run through its visual expert, which this file does not hold")
            self.layers = self.vis_layers
        try:
            super().forward(tokens, pos, cache, out_rows, logits)
        finally:
            self.layers = self.text_layers
