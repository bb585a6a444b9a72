"""T5 encoders (``t5encoder``: the encoder half of T5, T5 v1.1 and Flan-T5, as text-to-image pipelines use
T5-XXL's and sentence-t5 / GTR embedders theirs), as llama.cpp's ``llm_build_t5_enc``.

What sets T5's block apart:

* no positions in the input at all: attention scores get a learned bias by *relative position bucket*
  (``attn_rel_b``: [buckets, heads], layer 0's serving every layer, as the checkpoints hold it).  The
  key-minus-query distance d is bucketed both ways (half the buckets for d > 0): |d| below a quarter of the
  buckets exactly, beyond that log-spaced up to 128 tokens (llama.cpp's llama_relative_position_bucket,
  HF's _relative_position_bucket);
* scores are not scaled by 1/sqrt(head_dim) (T5 folds it into its Q weights), and heads may be narrower
  than n_embd / n_head (d_kv: attention.key_length);
* RMSNorms without a mean and without bias (T5's LayerNorm), pre-norm, and a final one (``enc.output_norm``);
* the FFN: T5's original ReLU(up) -> down, or T5 v1.1 / Flan-T5's gated GELU, gelu(gate) * up -> down,
  wherever the file has ``ffn_gate``;
* the tensors are the encoder's (``enc.blk.{i}.*``); its SentencePiece Unigram vocabulary (loaders/ugm.py)
  appends ``</s>`` and adds no BOS.

Activations are numpy arrays on the host (prefill-only work); on the GPU they stay on the device (models/bert.py's
``device_states``).  The converter states
no pooling: llama.cpp's embeddings then are every token's state, kvrun's pooled mean.
"""

from __future__ import annotations

import math

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import gelu
from .common import TENSOR_NAMES
from .neo_bert import PreNormEncoder

TENSOR_NAMES.update({  # (llama.cpp's LLM_TENSOR_ENC_*)
    "enc_attn_norm": "enc.blk.{i}.attn_norm.weight",
    "enc_attn_rel_b": "enc.blk.{i}.attn_rel_b.weight",
    "enc_wq": "enc.blk.{i}.attn_q.weight",
    "enc_wk": "enc.blk.{i}.attn_k.weight",
    "enc_wv": "enc.blk.{i}.attn_v.weight",
    "enc_wo": "enc.blk.{i}.attn_o.weight",
    "enc_ffn_norm": "enc.blk.{i}.ffn_norm.weight",
    "enc_w_gate": "enc.blk.{i}.ffn_gate.weight",
    "enc_w_up": "enc.blk.{i}.ffn_up.weight",
    "enc_w_down": "enc.blk.{i}.ffn_down.weight",
})  # fmt: skip

MAX_DISTANCE = 128  #: T5's relative_attention_max_distance (llama.cpp fixes it in code)


def relative_position_bucket(rel: np.ndarray, n_buckets: int, max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """T5's bidirectional bucket of each key-minus-query distance in ``rel``, as llama.cpp computes it: half the
    buckets for positive distances; |d| < n_buckets / 4 exactly, beyond that log-spaced to max_distance."""
    n = n_buckets // 2
    max_exact = n // 2
    bucket = np.where(rel > 0, n, 0)
    d = np.abs(rel)
    ratio = np.log((np.maximum(d, 1) / max_exact).astype(np.float32)).astype(np.float64)  # (logf; d = 0 takes the exact branch)
    large = np.floor(max_exact + ratio * (n - max_exact) / math.log(max_distance / max_exact))
    large = np.minimum(large, n - 1)
    return (bucket + np.where(d < max_exact, d, large)).astype(np.int64)


class T5EncoderModel(PreNormEncoder):
    """(A BertModel for its products and attention; its own weights and block.)"""

    archs = ("t5encoder",)
    kq_scale = 1.0  #: what scores are scaled by: 1 (T5 folds 1/sqrt(d_kv) into its Q weights at training)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        ld = self._start(g, cfg, backend, n_ctx, n_batch)  # (no rank head: RankHead reads none for t5encoder)
        self.eps = cfg.norm_eps  # (attention.layer_norm_rms_epsilon)
        self.rope = False
        self.n_buckets = int(g.arch_get("attention.relative_buckets_count", 32))
        self.tok_embd = ld.matrix("tok_embd")
        self.output_norm = ld.host_vector("enc_output_norm")
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {r: ld.matrix("enc_" + r, i) for r in ("wq", "wk", "wv", "wo", "w_up", "w_down")}
            L["w_gate"] = ld.matrix("enc_w_gate", i, required=False)
            L["attn_norm"], L["ffn_norm"] = ld.host_vector("enc_attn_norm", i), ld.host_vector("enc_ffn_norm", i)
            # (where a layer has no table of its own, layer 0's serves: llama.cpp's rule, and every checkpoint's layout)
            L["rel_b"] = ld.host_vector("enc_attn_rel_b", i, required=i == 0)
            self.layers.append(L)

    def _position_bias(self, rel_b: np.ndarray, T: int) -> np.ndarray:
        """The learned bias [H, T, T] of each query-key pair's relative position bucket."""
        table = rel_b.reshape(self.n_buckets, self.cfg.n_head)
        pos = np.arange(T)
        return np.ascontiguousarray(table[relative_position_bucket(pos[None, :] - pos[:, None], self.n_buckets)].transpose(2, 0, 1))

    def _attn_biases(self, T: int) -> list:
        bias0 = self._position_bias(self.layers[0]["rel_b"], T)
        return [bias0 if L["rel_b"] is None or il == 0 else self._position_bias(L["rel_b"], T) for il, L in enumerate(self.layers)]

    def _qk(self, q: np.ndarray, k: np.ndarray, L: dict) -> tuple[np.ndarray, np.ndarray]:
        """No positions; Q scaled by kq_scale * sqrt(D), undoing BertModel._attend's 1/sqrt(D)."""
        return q * np.float32(self.kq_scale * math.sqrt(self.cfg.head_dim)), k

    def _ffn(self, x: np.ndarray, L: dict, il: int) -> np.ndarray:
        """Gated GELU (v1.1, Flan: gelu(gate) * up, ggml's float16-table GELU) or ReLU (the original T5), then down."""
        up = self._linear(L["w_up"], x, None)
        if self._gpu:  # (t5.cu's float16-table GeGLU or ReLU, in place: kernels, so T5's decode step is one graph)
            from ..ops.gpu import encoder as E

            if L["w_gate"] is None:
                E.relu(up, up)
                return self._linear(L["w_down"], up, None)
            g = self._linear(L["w_gate"], x, None)
            E.gelu_f16_glu(g, up, g)
            return self._linear(L["w_down"], g, None)
        h = gelu(self._linear(L["w_gate"], x, None)) * up if L["w_gate"] is not None else np.maximum(up, np.float32(0.0))
        return self._linear(L["w_down"], h, None)
