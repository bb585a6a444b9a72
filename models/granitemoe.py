"""IBM Granite 3.x MoE (granite-3.1-1b-a400m, 3b-a800m) and GraniteMoeShared: Granite's block
(``granite.py``: its four multipliers from the file) with a mixture-of-experts FFN (``moe.py``: softmax
router, the top ``expert_used_count`` experts, their weights renormalised), as llama.cpp builds both
with one graph.  GraniteMoeShared's layers add a shared expert (``ffn_*_shexp``, a dense SwiGLU FFN
``expert_shared_feed_forward_length`` wide, neither gated nor scaled) on every token to the experts'
sum, and Granite's ``residual_scale`` scales that whole sum.  The Llama loader makes an MoE FFN (with
the shared expert where the layer has one) wherever a layer has a router and the Llama forward scales
its output by ``residual_scale`` as a dense FFN's, so the class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class GraniteMoeModel(LlamaModel):
    archs = ("granitemoe",)
