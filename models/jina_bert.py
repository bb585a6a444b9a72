"""Jina's BERT encoders, for embeddings: ``jina-bert-v2`` (jina-embeddings-v2-small/base-en, -de, -es,
-zh, -base-code; jina-reranker-v1-turbo) and ``jina-bert-v3`` (jina-embeddings-v3), as llama.cpp's
``llm_build_bert`` runs them.  BERT's post-norm block (models/bert.py); what sets them apart:

* jina-bert-v2 has no positions in its input at all: attention scores get ALiBi's linear distance
  penalty instead, ``-slope_h * |i - j|`` (symmetric: an encoder's tokens look both ways), the slopes
  ggml's for llama.cpp's fixed max bias of 8 (a geometric series over the largest power of two of
  heads, the rest interleaved from a second series: jina-embeddings-v2-base's 12 heads use both).
  Its FFN is gated GELU: GEGLU with the gate's and up's rows fused in one ``ffn_up`` (today's
  converter: gelu(first half) * second half), or ``ffn_gate`` and ``ffn_up`` apart (older files).
  Where the checkpoint has them, LayerNorms (with biases, over the whole n_embd) on Q and K before
  attention, and (jina-embeddings-v2-base-code) a second LayerNorm after attention's, the layer's
  input added again before it (``attn_norm_2``).  The up product has no bias, the down one has.
* jina-bert-v3 is XLM-RoBERTa (Unigram vocabulary, GELU FFN with biases) with rotary positions (NeoX)
  in place of learned ones.  Its task LoRA adapters (retrieval.query, text-matching, ...) are separate
  GGUF files the converter writes beside the base; this runs the base model, as llama.cpp does unless
  given an adapter.

Activations are numpy arrays on the host (prefill-only work); on the GPU they stay on the device, as BERT's.
"""

from __future__ import annotations

import math

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import BertModel, gelu
from .common import TENSOR_NAMES, WeightLoader

TENSOR_NAMES.update({  # (llama.cpp's LLM_TENSOR_ATTN_Q_NORM / _K_NORM biases, LLM_TENSOR_ATTN_NORM_2)
    "q_norm_b": "blk.{i}.attn_q_norm.bias",
    "k_norm_b": "blk.{i}.attn_k_norm.bias",
    "attn_norm_2": "blk.{i}.attn_norm_2.weight",
    "attn_norm_2_b": "blk.{i}.attn_norm_2.bias",
})  # fmt: skip

MAX_ALIBI_BIAS = 8.0  #: llama.cpp's hparams.f_max_alibi_bias for jina-bert-v2 (fixed in code, not read from the file)


def alibi_slopes(n_head: int, max_bias: float = MAX_ALIBI_BIAS) -> np.ndarray:
    """ALiBi's per-head slopes [n_head], float32, as ggml's soft_max computes them: m0 = 2^(-max_bias / n),
    m1 = 2^(-max_bias / 2 / n) for n the largest power of two <= n_head; head h < n gets m0^(h+1), the
    others m1^(2 (h - n) + 1)."""
    n = 1 << int(math.floor(math.log2(n_head)))
    m0, m1 = np.float32(2.0 ** (-max_bias / n)), np.float32(2.0 ** (-(max_bias / 2.0) / n))
    h = np.arange(n_head)
    return np.where(h < n, m0 ** (h + 1.0), m1 ** (2.0 * (h - n) + 1.0)).astype(np.float32)


def alibi_bias(n_head: int, T: int, max_bias: float = MAX_ALIBI_BIAS) -> np.ndarray:
    """ALiBi's additive scores [n_head, T, T] for an encoder: -slope_h * |i - j| (llama.cpp's KQ mask holds
    -|p_i - p_j| where the model uses ALiBi; ggml's soft_max scales it by the head's slope)."""
    i = np.arange(T, dtype=np.float32)
    dist = -np.abs(i[:, None] - i[None, :])
    return alibi_slopes(n_head, max_bias)[:, None, None] * dist[None]


class JinaBertV2Model(BertModel):
    archs = ("jina-bert-v2",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        ld = WeightLoader(g, backend)
        if self.type_row is None:  # (llama.cpp requires it for the arch, though BERT's are optional)
            ld.matrix("type_embd")
        for i, L in enumerate(self.layers):
            for r in ("q_norm", "k_norm", "attn_norm_2"):
                L[r], L[r + "_b"] = ld.host_vector(r, i, required=False), ld.host_vector(r + "_b", i, required=False)
        self.max_bias = MAX_ALIBI_BIAS

    def _load_ffn(self, ld: WeightLoader, i: int, L: dict) -> None:
        L["w_gate"] = ld.matrix("w_gate", i, required=False)
        L["w_up"], L["b_up"] = ld.matrix("w_up", i), None
        L["w_down"], L["b_down"] = ld.matrix("w_down", i), ld.host_vector("b_down", i)
        rows = L["w_up"].shape[0]
        want = self.cfg.n_ff if L["w_gate"] is not None else 2 * self.cfg.n_ff  # (GEGLU: gate's rows and up's in one)
        if rows != want:
            raise GGUFError(f"{ld.g.path}: blk.{i}.ffn_up has {rows} rows, expected {want}; the file is not a supported model")

    def _attn_bias(self, T: int) -> np.ndarray | None:
        return alibi_bias(self.cfg.n_head, T, self.max_bias)

    def _qk(self, q: np.ndarray, k: np.ndarray, L: dict) -> tuple[np.ndarray, np.ndarray]:
        if L["q_norm"] is not None:  # (over the whole projection, not per head)
            q = self._layer_norm(q.reshape(q.shape[0], -1), L["q_norm"], L["q_norm_b"]).reshape(q.shape)
        if L["k_norm"] is not None:
            k = self._layer_norm(k.reshape(k.shape[0], -1), L["k_norm"], L["k_norm_b"]).reshape(k.shape)
        return q, k

    def _attn_residual(self, x: np.ndarray, o: np.ndarray, L: dict) -> np.ndarray:
        y = super()._attn_residual(x, o, L)
        if L["attn_norm_2"] is not None:  # (jina-v2-code: the layer's input added once more, then its own LayerNorm)
            y = self._layer_norm(y + x, L["attn_norm_2"], L["attn_norm_2_b"])
        return y

    def _ffn(self, x: np.ndarray, L: dict, il: int) -> np.ndarray:
        if self._gpu:  # (t5.cu's float16-table GeGLU on the device states; the fused halves made contiguous)
            from ..ops.gpu import encoder as E

            if L["w_gate"] is not None:
                g, u = self._linear(L["w_gate"], x, None), self._linear(L["w_up"], x, None)
            else:
                gu = self._linear(L["w_up"], x, None)
                n = gu.shape[1] // 2
                g, u = self.be.xp.ascontiguousarray(gu[:, :n]), self.be.xp.ascontiguousarray(gu[:, n:])
            E.gelu_f16_glu(g, u, g)
            return self._linear(L["w_down"], g, L["b_down"])
        if L["w_gate"] is not None:  # GELU(gate) * up
            h = gelu(self._linear(L["w_gate"], x, None)) * self._linear(L["w_up"], x, None)
        else:  # GEGLU: gelu(first half) * second half
            gu = self._linear(L["w_up"], x, None)
            n = gu.shape[1] // 2
            h = gelu(gu[:, :n]) * gu[:, n:]
        return self._linear(L["w_down"], h, L["b_down"])


class JinaBertV3Model(BertModel):
    """XLM-RoBERTa with rope: BERT's block as models/bert.py runs it for ``jina-bert-v3`` (ROPE_ARCHS, no
    learned positions), GELU FFN with biases."""

    archs = ("jina-bert-v3",)
