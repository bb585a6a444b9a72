"""IBM Granite 3.x (dense): the Llama block with four multipliers from the file (``ModelConfig``):
embeddings times ``embedding_scale``, each attention and FFN output times ``residual_scale``
before its residual add, attention scores times ``attention.scale`` (in place of
``1/sqrt(head_dim)``), logits divided by ``logit_scale``.  The Llama forward applies them where
they are not 1, so the class exists so the registry names it.
"""

from __future__ import annotations

from .llama import LlamaModel


class GraniteModel(LlamaModel):
    archs = ("granite",)
