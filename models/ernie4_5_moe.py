"""ERNIE 4.5 mixture-of-experts models (Baidu ERNIE-4.5-21B-A3B, -300B-A47B):
https://ernie.baidu.com/blog/posts/ernie4.5/

As llama.cpp's ERNIE4_5_MOE graph: dense ERNIE 4.5's block (the Llama block: rope over consecutive
pairs, biases on Q, K and V where the file has them) whose FFN is a mixture of experts (``moe.py``)
in layer ``il`` where ``il >= leading_dense_block_count`` and ``(il + 1) % interleave_moe_layer_step
== 0`` (the 21B: every layer but the first), a dense SwiGLU FFN elsewhere.  The router: a softmax
over ``expert_count`` experts, the top ``expert_used_count`` chosen by probability plus the file's
``exp_probs_b`` (the load-balancing correction, which moves the choice but not the weights), their
probabilities renormalised to sum 1 (always, as llama.cpp); beside them, where the file states
``expert_shared_feed_forward_length``, a shared expert every token runs: a dense SwiGLU FFN, neither
gated nor scaled, its output added to the experts'.
"""

from __future__ import annotations

from ..loaders.errors import GGUFError
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class Ernie45MoeModel(LlamaModel):
    archs = ("ernie4_5-moe",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        g = w.g
        lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        step = int(g.arch_get("interleave_moe_layer_step", 1) or 0)
        if step <= 0:
            raise GGUFError(f"{g.path}: ernie4_5-moe.interleave_moe_layer_step is {step}; llama.cpp requires it > 0")
        self.shared_expert = "plain" if int(g.arch_get("expert_shared_feed_forward_length", 0) or 0) > 0 else None
        is_moe = self.cfg.n_expert > 0 and i >= lead and (i + 1) % step == 0
        L = super().load_layer(w, i)
        if (L.moe is not None) != is_moe:
            raise GGUFError(f"{g.path}: blk.{i} {'has' if L.moe is not None else 'lacks'} a router (ffn_gate_inp), but "
                            f"leading_dense_block_count {lead} and interleave_moe_layer_step {step} make it "
                            f"{'a mixture of experts' if is_moe else 'dense'}; the file is not a supported model")  # fmt: skip
        if L.moe is not None:
            L.moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
        return L
