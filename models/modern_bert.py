"""ModernBERT (``modern-bert``: answerdotai/ModernBERT-base/-large, Alibaba-NLP/gte-modernbert-base,
nomic-ai/modernbert-embed-base, IBM's granite-embedding-*-r2), a text encoder for embeddings, as llama.cpp's
``llm_build_modern_bert``.

What sets it apart from BERT's block (models/bert.py):

* pre-norm, not post-norm: x = x + attn(LN(x)); x = x + ffn(LN(x)), then a final LayerNorm (``output_norm``),
  and a LayerNorm of the embeddings (``token_embd_norm``); no biases anywhere, the LayerNorms' included.
  Layer 0 has no attention norm (the checkpoint's Identity: the converter writes no ``attn_norm``);
* rotary positions (NeoX halves), no learned ones, no token types;
* attention alternates: every ``sliding_window_pattern``-th layer (3: global_attn_every_n_layers), the first
  included, sees the whole text; the others a *symmetric* window, token i seeing j where
  |i - j| <= sliding_window // 2 (ModernBERT's local_attention 128: 64 each way; llama.cpp's
  LLAMA_SWA_TYPE_SYMMETRIC), and rotate with their own rope base ``rope.freq_base_swa`` (ModernBERT's
  local_rope_theta 10k against the global layers' 160k);
* one fused QKV product, and a GeGLU FFN whose ``ffn_up`` holds both halves: gelu(first half) * second half
  (the checkpoint's Wi, chunked as ModernBertMLP does); where the file's ``hidden_activation`` says silu
  (granite-embedding-*-r2) SwiGLU over the same halves, relu-gated for reglu (llama.cpp's table; a name it does
  not know falls back to GeGLU, as there).

Activations are numpy arrays on the host (prefill-only work); on the GPU too, as BERT's.  The files set CLS
pooling (gte-modernbert) or mean (modernbert-embed); llama.cpp's default where none is stated is mean.
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import make_rope
from .gemma_embedding import window_mask
from .neo_bert import PreNormEncoder

#: the file's hidden_activation -> the gate's activation over the fused halves (llama.cpp's LLM_FFN_OP_TYPES_FROM_STRING)
GATES = {"gelu": "gelu", "geglu": "gelu", "silu": "silu", "swish": "silu", "swiglu": "silu", "reglu": "relu"}


class ModernBertModel(PreNormEncoder):
    """(A BertModel for its products, rope and attention; its own weights and block.)"""

    archs = ("modern-bert",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        ld = self._start(g, cfg, backend, n_ctx, n_batch)
        self.eps = float(g.arch_get("attention.layer_norm_epsilon", 1e-5))
        self.rope = True
        act = str(g.arch_get("hidden_activation", "gelu") or "gelu")
        if act == "relu":  # (llama.cpp's plain ReLU: not gated, and its down product cannot take the fused halves)
            raise UnsupportedModelError(f"{g.path}: modern-bert with hidden_activation relu (not gated) is not supported")
        self.gate_act = GATES.get(act, "gelu")
        n_pos = max(cfg.n_ctx_train, 1)
        # (global layers: rope.freq_base; window layers: rope.freq_base_swa, the global one where the file states none)
        self.ropes = {False: make_rope(cfg, n_pos, cfg.rope_theta), True: make_rope(cfg, n_pos, cfg.rope_theta_swa or cfg.rope_theta)}
        self.cos, self.sin = self.ropes[False]
        self.tok_embd = ld.matrix("tok_embd")
        self.tok_norm = ld.host_vector("tok_norm")
        self.output_norm = ld.host_vector("output_norm")
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {"attn_norm": ld.host_vector("attn_norm", i, required=i != 0), "ffn_norm": ld.host_vector("ffn_norm", i)}
            L["wq"], L["wk"], L["wv"] = ld.matrix_rows("wqkv", i, (q_dim, kv_dim, kv_dim))
            L["wo"] = ld.matrix("wo", i)
            L["w_up"] = ld.matrix("w_up", i)
            if L["w_up"].shape[0] != 2 * cfg.n_ff:  # (GeGLU: both halves in one)
                raise GGUFError(f"{g.path}: blk.{i}.ffn_up has {L['w_up'].shape[0]} rows, expected {2 * cfg.n_ff}; the file is not a supported model")
            L["w_down"] = ld.matrix("w_down", i)
            L["swa"] = cfg.is_swa(i)
            self.layers.append(L)

    def _qk(self, q: np.ndarray, k: np.ndarray, L: dict) -> tuple[np.ndarray, np.ndarray]:
        self.cos, self.sin = self.ropes[L["swa"]]  # (the layer kind's rope base)
        return self._rope(q), self._rope(k)

    def _norm(self, x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """LayerNorm without bias; none where the layer has no weights (layer 0's attention: the checkpoint's Identity)."""
        return x if w is None else self._layer_norm(x, w, None)  # (on the GPU: the device's, models/bert.py)

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        return self._layer_norm(self._token_rows(tokens), self.tok_norm, None)

    def _attn_biases(self, T: int) -> list:
        """The window layers' mask (none where the text fits inside the window); none for the global layers."""
        c = self.cfg
        window = window_mask(T, c.sliding_window) if c.sliding_window and T - 1 > c.sliding_window // 2 else None
        return [window if L["swa"] else None for L in self.layers]
