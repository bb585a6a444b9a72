"""EXAONE 3.0 / 3.5 (LG AI Research): the Llama block with NeoX-style rope, as llama.cpp's EXAONE
graph: Llama 3's long-context rope factors (``rope_freqs.weight``) where the file has them,
biases on Q, K and V where it has them, a tied or separate output head.  All of it is data the
Llama loader reads and the rope layout is the architecture default in ``loaders/config.py``, so
the class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class ExaoneModel(LlamaModel):
    archs = ("exaone",)
