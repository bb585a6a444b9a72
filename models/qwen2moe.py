"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's block (biases on Q, K and V, NeoX rope)
with a mixture-of-experts FFN (``moe.py``): a softmax router, the top ``expert_used_count`` experts
with their weights as the router gave them (not renormalised: the ``expert_weights_norm`` default in
``loaders/config.py``, as llama.cpp's Qwen2-MoE graph), plus a shared expert every token runs, a dense
SwiGLU FFN (``expert_shared_feed_forward_length`` wide) whose output is scaled per token by
``sigmoid(ffn_gate_inp_shexp . x)`` before it joins the routed experts' sum.  All of it is data the
Llama loader and forward read; the class names the architecture and requires the shared expert and
its gate in every layer, as llama.cpp does.
"""

from __future__ import annotations

from .llama import LlamaModel


class Qwen2MoeModel(LlamaModel):
    archs = ("qwen2moe",)
    shared_expert = "gated"
