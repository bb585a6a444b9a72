"""DeepSeek-MoE (deepseek-moe-16b-base/chat, v1), as llama.cpp's ``deepseek`` graph: the Llama block
(normal rope, a separate output head) whose first ``leading_dense_block_count`` FFNs are dense
SwiGLU and whose others are a mixture of experts (``moe.py``): a softmax router, the top
``expert_used_count`` of ``expert_count`` fine-grained experts, their weights as the router gave
them (not renormalised) times ``expert_weights_scale``, plus ``expert_shared_count`` shared experts
every token runs, which the file holds as one dense SwiGLU FFN ``expert_shared_count`` experts wide
(``ffn_*_shexp``), neither gated nor scaled.  The Llama loader makes an MoE FFN wherever a layer has
a router (the leading dense layers have none); the class requires the shared expert in every MoE
layer, as llama.cpp does, and sets the weights' scale.
"""

from __future__ import annotations

from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class DeepseekModel(LlamaModel):
    archs = ("deepseek",)
    shared_expert = "plain"

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.moe is not None:
            L.moe.weights_scale = float(w.g.arch_get("expert_weights_scale", 1.0))
        return L
