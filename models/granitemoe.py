"""IBM Granite 3.x MoE (granite-3.1-1b-a400m, 3b-a800m): Granite's block (``granite.py``: its four
multipliers from the file) with a mixture-of-experts FFN (``moe.py``: softmax router, the top
``expert_used_count`` experts, their weights renormalised), as llama.cpp builds both with one
graph.  The Llama loader makes an MoE FFN wherever a layer has a router and the Llama forward
scales its output by ``residual_scale`` as a dense FFN's, so the class exists so the registry
names it, and to refuse the shared-expert variant (GraniteMoeShared) kvrun does not run yet.
"""

from __future__ import annotations

from ..loaders.errors import UnsupportedModelError
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class GraniteMoeModel(LlamaModel):
    archs = ("granitemoe",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        if w.has("ffn_gate_shexp", i):  # llama.cpp adds a dense SwiGLU FFN on every token to the experts' sum
            raise UnsupportedModelError(f"{w.g.path}: Granite MoE with shared experts (blk.{i}.ffn_gate_shexp) is not supported yet")
        return super().load_layer(w, i)
