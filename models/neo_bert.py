"""NeoBERT (``neo-bert``: chandar-lab/NeoBERT), a text encoder for embeddings, as llama.cpp's
``llm_build_neo_bert``.

Unlike BERT's post-norm block (models/bert.py) it is a modern decoder block turned to look both ways:
pre-norm RMSNorms without biases (x = x + attn(RMSNorm(x)); x = x + ffn(RMSNorm(x))), one fused QKV
product and an output product without biases, rotary positions over consecutive pairs (llama.cpp's
"normal" rope, not NeoX's halves), a SwiGLU FFN whose gate and up rows are fused in one ``ffn_up``
(silu(first half) * second half; the converter states two thirds of the checkpoint's intermediate
size as feed_forward_length), and a final RMSNorm (``enc.output_norm``).  No token-type embeddings,
no embedding norm.  Its vocabulary is BERT's WordPiece; the converter sets CLS pooling.

Activations are numpy arrays on the host (prefill-only work); on the GPU they stay on the device, as BERT's.
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import BertModel, gelu
from .common import TENSOR_NAMES, make_rope

TENSOR_NAMES.update({"enc_output_norm": "enc.output_norm.weight"})  # (llama.cpp's LLM_TENSOR_ENC_OUTPUT_NORM)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (float32 in and out, the mean square in float64, as ggml sums it)."""
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)).astype(np.float32) * w


class PreNormEncoder(BertModel):
    """BertModel's products, rope and attention in a pre-norm block: x = x + attn(norm(x)); x = x + ffn(norm(x)), then
    a final norm, without biases (NeoBERT, EuroBERT, ModernBERT, T5's encoder).  The norms are RMSNorms (ModernBERT's
    LayerNorms: :meth:`_norm`); the FFN is one fused ``ffn_up`` of gate and up halves, act(first half) * second half
    (``gate_act``), unless a subclass has its own; each layer's attention bias comes from :meth:`_attn_biases`."""

    gate_act = "silu"  #: the fused FFN's gate: "gelu" (ggml's float16-table GELU), "silu" or "relu"

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        if self._gpu:  # (nn.cu's rms_norm_f32 on the device states)
            out = self.be.zeros(x.shape, np.float32)
            self.be.rms_norm(x, self._dev(w), self.eps, out)
            return out
        return rms_norm(x, w, self.eps)

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        """The stream the first layer reads: the tokens' embeddings (ModernBERT normalises them)."""
        return self._token_rows(tokens)

    def _attn_biases(self, T: int) -> list:
        """Each layer's attention bias or mask [H or 1, T, T] (None: every token sees every token)."""
        return [self._attn_bias(T)] * len(self.layers)

    def _ffn(self, x: np.ndarray, L: dict, il: int) -> np.ndarray:
        """gate_act(first half) * second half of the fused ``ffn_up``, then down: SwiGLU, GeGLU or ReGLU."""
        gu = self._linear(L["w_up"], x, None)
        n = gu.shape[1] // 2
        if self._gpu:  # (the halves made contiguous for the kernels: nn.cu's SwiGLU, t5.cu's GeGLU and ReLU)
            from ..ops.gpu import encoder as E

            xp = self.be.xp
            g, u = xp.ascontiguousarray(gu[:, :n]), xp.ascontiguousarray(gu[:, n:])
            if self.gate_act == "silu":
                self.be.silu_mul(g, u, g)
            elif self.gate_act == "gelu":
                E.gelu_f16_glu(g, u, g)
            else:
                E.relu(g, g)
                g *= u
            return self._linear(L["w_down"], g, None)
        g = gu[:, :n]
        if self.gate_act == "gelu":
            a = gelu(g)
        elif self.gate_act == "silu":
            a = g / (1.0 + np.exp(-g))
        else:
            a = np.maximum(g, np.float32(0.0))
        return self._linear(L["w_down"], a * gu[:, n:], None)

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Every token's final-normed state of ``tokens`` [T]: float32 [T, n_embd]."""
        x = self._embed(tokens)
        biases = self._attn_biases(len(tokens))
        for il, L in enumerate(self.layers):
            x = x + self._attention(self._norm(x, L["attn_norm"]), L, biases[il])
            self.trace("ffn_inp", il, x)
            x = x + self._ffn(self._norm(x, L["ffn_norm"]), L, il)
        return self._host(self._norm(x, self.output_norm))


class NeoBertModel(PreNormEncoder):
    """(A BertModel for its products, rope and attention; its own weights and block.)"""

    archs = ("neo-bert",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        ld = self._start(g, cfg, backend, n_ctx, n_batch, pooling=2)
        self.eps = cfg.norm_eps  # (attention.layer_norm_rms_epsilon)
        self.rope = True
        self.cos, self.sin = make_rope(cfg, cfg.n_ctx_train, cfg.rope_theta)
        self.tok_embd = ld.matrix("tok_embd")
        self.output_norm = ld.host_vector("enc_output_norm")
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {"attn_norm": ld.host_vector("attn_norm", i), "ffn_norm": ld.host_vector("ffn_norm", i)}
            L["wq"], L["wk"], L["wv"] = ld.matrix_rows("wqkv", i, (q_dim, kv_dim, kv_dim))
            L["wo"] = ld.matrix("wo", i)
            L["w_up"] = ld.matrix_rows("w_up", i, (2 * cfg.n_ff,))[0]  # (SwiGLU: gate's rows, then up's)
            L["w_down"] = ld.matrix("w_down", i)
            self.layers.append(L)
