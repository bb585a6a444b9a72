"""ERNIE 4.5 (Baidu), the dense model (ERNIE-4.5-0.3B): https://ernie.baidu.com/blog/posts/ernie4.5/

As llama.cpp's ERNIE4_5 graph, the Llama block unchanged: RMSNorm -> attention (GQA, rope over
consecutive pairs as Llama's, not NeoX's halves) -> residual -> RMSNorm -> SwiGLU FFN -> residual;
biases on Q, K and V where the file has them; the output head tied to the token embeddings (the
0.3B's) or separate.  All of it is data the Llama loader reads and the rope layout is the
architecture default in ``loaders/config.py``, so the class exists so the registry names it.
(The mixture-of-experts models are another architecture, ``ernie4_5-moe``.)
"""

from __future__ import annotations

from .llama import LlamaModel


class Ernie45Model(LlamaModel):
    archs = ("ernie4_5",)
