"""BLOOM and BLOOMZ (BigScience: 560m to 7b1, 176B), as llama.cpp's BLOOM graph: GPT-2's block
(models/gpt2.py) with no positions in the input at all; attention scores get ALiBi's linear distance penalty
instead, and the embeddings a LayerNorm of their own:

    x = LN_emb(tok_embd[t]);  x = x + attn(LN(x));  x = x + ffn(LN(x))

* ALiBi: head h's score for key j from query i gets ``-slope_h * (i - j)``, slopes as ggml's soft_max
  computes them (models/jina_bert.py's ``alibi_slopes``, llama.cpp's fixed max bias 8 for BLOOM);
* ``token_embd_norm`` (with a bias) right after the lookup;
* Q, K and V from one fused ``attn_qkv`` with its bias (the converter reorders HF's per-head interleaving
  into Q, K, V blocks), multi-head; LayerNorms and projections with biases, an ungated GELU FFN;
* the output head the token embeddings unless the file has an ``output.weight``.

How the causal path gets ALiBi without touching the attention kernels: within a query's row the term
``-slope_h * i`` is a constant the softmax drops, so the bias is ``slope_h * j``, a product of something
of the query's head and something of the key's position.  Each key gets one more channel holding its position
``j`` (exact in the fp16 cache up to 2048, BLOOM's training context) and each query one more holding
``slope_h / scale``: q.k then carries the bias, in every cache and kernel, prefill and decode alike.  The cost:
head_dim + 1 key channels in the cache (1/head_dim more K memory, 1/128 for BLOOM), a copy of Q and K a layer,
and no quantized K cache (a position channel quantized with the keys would blur the bias), nor the GPU yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .gpt2 import GPT2Model
from .jina_bert import alibi_slopes

TENSOR_NAMES.setdefault("tok_norm", "token_embd_norm.weight")
TENSOR_NAMES.setdefault("tok_norm_b", "token_embd_norm.bias")

#: llama.cpp's hparams.f_max_alibi_bias for BLOOM (fixed in code, not read from the file)
BLOOM_MAX_ALIBI_BIAS = 8.0


def file_max_alibi_bias(g: GGUFFile, name: str) -> float:
    """The file's ``attention.max_alibi_bias`` where llama.cpp reads it (MPT, Jais): required, and above 0 (``name``:
    the model's, for the refusal)."""
    bias = g.arch_get("attention.max_alibi_bias")
    if bias is None:  # (llama.cpp requires it)
        raise GGUFError(f"{g.path}: metadata {g.architecture}.attention.max_alibi_bias is missing; the file is not a complete model")
    if float(bias) <= 0:
        raise UnsupportedModelError(f"{g.path}: {name} without ALiBi (max_alibi_bias {bias}) is not supported")
    return float(bias)


class BloomModel(GPT2Model):
    archs = ("bloom",)
    learned_positions = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if backend.name != "cpu":  # (before any upload)
            raise UnsupportedModelError(f"{g.path}: {cfg.arch}'s ALiBi attention runs on the CPU only for now; drop --device gpu")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_norm, self.tok_norm_b = self.load_tok_norm(w)
        #: per query head, the extra query channel that times a key's position gives ALiBi's bias
        self.alibi_q = (alibi_slopes(cfg.n_head, self.max_alibi_bias(g)) * np.float32(np.sqrt(cfg.head_dim))).astype(np.float32)

    def max_alibi_bias(self, g: GGUFFile) -> float:
        return BLOOM_MAX_ALIBI_BIAS

    def load_tok_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return w.vector("tok_norm"), w.vector("tok_norm_b")

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg  # (the keys one channel wider: their positions; the scale stays the real head's)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim + 1, c.head_dim, 0, 1.0 / np.sqrt(c.head_dim), 0.0,
                          position_channel=True)] * c.n_layer  # fmt: skip

    def embed(self, tokens: np.ndarray, pos: Any, x: Any, scratch: Any) -> None:
        """The token embeddings through their own LayerNorm; no positions (ALiBi gives them in the attention)."""
        if self.tok_norm is None:  # (MPT: none)
            self.be.get_rows(self.tok_embd, tokens, x)
        else:
            self.be.get_rows(self.tok_embd, tokens, scratch)
            self.be.layer_norm(scratch, self.tok_norm, self.tok_norm_b, self.cfg.norm_eps, x)

    def rope(self, q3: Any, k3: Any, pos: Any) -> None:
        """None: no positions on Q and K (ALiBi's are in :meth:`attend`)."""

    def attend(self, layer_cache: Any, q3: Any, k3: Any, v3: Any, pos: Any, att3: Any) -> None:
        """ALiBi through the cache's own attention: Q with ``slope_h / scale`` and K with its position appended."""
        T, n_head, hd = q3.shape
        qa = np.empty((T, n_head, hd + 1), np.float32)
        qa[..., :hd] = q3
        qa[..., hd] = self.alibi_q
        ka = np.empty((T, k3.shape[1], hd + 1), np.float32)
        ka[..., :hd] = k3
        ka[..., hd] = np.asarray(pos, np.float32)[:, None]
        layer_cache.update_and_attend(qa, ka, v3, pos, att3)
