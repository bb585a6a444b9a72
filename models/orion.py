"""Orion (OrionStar: Orion-14B-Base, -Chat, -LongChat, -RAG, -PluginAgent), as llama.cpp's ORION graph.

The Llama block with LayerNorms *with biases* for its RMSNorms (before attention, before the FFN, before the output
head): LN -> attention (GQA where the file says, no projection biases, rope over halves: NeoX's layout, the
converter leaving Q's and K's rows as Hugging Face's ``rotate_half`` wants them) -> residual -> LN -> SwiGLU FFN ->
residual, and a separate output head (llama.cpp requires ``output.weight``).  The block is StableLM's (models/stablelm.py:
LayerNormBlockModel), loaded through OLMo's hooks (models/olmo.py) as Nemotron's is.
"""

from __future__ import annotations

from typing import Any

from ..ops.backend import Weight
from .common import WeightLoader
from .olmo import OlmoLayer, OlmoModel


class OrionModel(OlmoModel):
    archs = ("orion",)
    clamps_kqv = False

    def load_output(self, w: WeightLoader) -> Weight:
        return w.matrix("output")

    def load_output_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return w.vector("output_norm"), w.vector("output_norm_b")

    def load_layer(self, w: WeightLoader, i: int) -> OlmoLayer:
        return OlmoLayer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i), wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=None, k_norm=None,
            ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=w.vector("ffn_norm_b", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
