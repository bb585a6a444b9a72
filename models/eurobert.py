"""EuroBERT (``eurobert``: EuroBERT/EuroBERT-210m, -610m, -2.1B; jina-embeddings-v5's trunk), a text encoder
for embeddings, as llama.cpp's ``llm_build_eurobert``.

It is a Llama block turned to look both ways: pre-norm RMSNorms (x = x + attn(RMSNorm(x));
x = x + ffn(RMSNorm(x))), separate Q, K, V and output products without biases (grouped-query where the
file's head_count_kv says), rotary positions over NeoX halves (llama.cpp's rope type for the arch, not
Llama's consecutive pairs), a SwiGLU FFN with separate gate and up products, and a final RMSNorm.  No
causal mask (the converter writes ``attention.causal`` false; llama.cpp reads it), no KV cache, no token types.  The converter writes Llama 3's byte-level BPE (no BOS) and
the checkpoint's pooling where sentence-transformers states one.

Activations are numpy arrays on the host (prefill-only work); on the GPU too, as BERT's.  models/llama_embed.py
runs the same block for a Llama checkpoint (llama-embed-nemotron).
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import BertModel
from .common import make_rope
from .neo_bert import PreNormEncoder


class EuroBertModel(PreNormEncoder):
    """(A BertModel for its products, rope and attention; its own weights and block.)"""

    archs = ("eurobert",)
    _ffn = BertModel._ffn  # (separate gate and up products: SwiGLU)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        ld = self._start(g, cfg, backend, n_ctx, n_batch)
        self.eps = cfg.norm_eps  # (attention.layer_norm_rms_epsilon)
        self.rope = True
        # (llama.cpp's hparams.causal_attn: the file's attention.causal, true where it states none; EuroBERT's
        # converter writes false, llama-embed's nothing)
        self.causal = bool(g.arch_get("attention.causal", True))
        freqs = ld.host_vector("rope_freqs", required=False)  # (Llama 3.1's rope scaling, as the converter writes it)
        self.cos, self.sin = make_rope(cfg, max(cfg.n_ctx_train, 1), cfg.rope_theta, freqs)
        self.tok_embd = ld.matrix("tok_embd")
        self.output_norm = ld.host_vector("output_norm")
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {r: ld.matrix(r, i) for r in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
            L["attn_norm"], L["ffn_norm"] = ld.host_vector("attn_norm", i), ld.host_vector("ffn_norm", i)
            self.layers.append(L)

    def _attn_bias(self, T: int) -> np.ndarray | None:
        """The additive attention mask [T, T]: none (every token sees every token), or a causal one."""
        return np.triu(np.full((T, T), -np.inf, np.float32), 1) if self.causal else None
