"""StarCoder (v1) and SantaCoder, tiny_starcoder, WizardCoder-15B: the GPT-BigCode block, as llama.cpp's
STARCODER graph: GPT-2's (models/gpt2.py) with *multi-query* attention.

* learned absolute positions (``position_embd.weight``), no rope;
* one K/V head for all the query heads (``attention.head_count_kv`` 1: the converter states it where the
  checkpoint's ``multi_query`` is set, as every GPT-BigCode release has), so ``attn_qkv`` is
  ``n_embd + 2 * head_dim`` rows, fused, with its bias;
* LayerNorms with biases, biased output and FFN projections, an ungated GELU FFN;
* the output head the token embeddings unless the file has an ``output.weight`` (StarCoder's own ``lm_head``).

Nothing in the forward differs from GPT-2's once the K/V head count is read: the fused projection splits into
``n_embd``, ``head_dim`` and ``head_dim`` rows and the attention shares the single K/V head across the queries.
"""

from __future__ import annotations

from .gpt2 import GPT2Model


class StarCoderModel(GPT2Model):
    archs = ("starcoder",)
