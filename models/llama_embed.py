"""llama-embed-nemotron (``llama-embed``: nvidia/llama-embed-nemotron-8b, a Llama 3.1 8B checkpoint trained
as a bidirectional embedder, LlamaBidirectionalModel), as llama.cpp's ``llm_build_llama<embed=true>``.

The graph is Llama's own (models/llama.py): RMSNorm pre-norms, Q/K/V/output products, rope over
consecutive pairs (llama.cpp's "normal" rope for the arch, not EuroBERT's NeoX halves) with Llama 3.1's
per-frequency factors (``rope_freqs``), a SwiGLU FFN and the final RMSNorm; what the arch changes is that
attention has no KV cache and the output is the final-normed state of every token, pooled (mean, the
converter's) rather than projected to logits.  Whether a token sees the tokens after it is the file's
``attention.causal``, as llama.cpp builds the mask (build_attn_inp_no_cache, from hparams.causal_attn):
the converter writes the file exactly as a ``llama`` one under another name, without that key, and llama.cpp
(0.3.36, measured) then masks causally; a file stating ``attention.causal`` false runs both ways, as the
checkpoint was trained.  kvrun does as llama.cpp in both cases.

The block is EuroBERT's (models/eurobert.py), which is this one with another rope layout; it runs here as an
encoder (the whole text at once, numpy on the host, on the GPU too) rather than through LlamaModel's cached
decoding, which an embedder never does.
"""

from __future__ import annotations

from .eurobert import EuroBertModel


class LlamaEmbedModel(EuroBertModel):
    archs = ("llama-embed",)
