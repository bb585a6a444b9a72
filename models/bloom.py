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
and no quantized K cache (a position channel quantized with the keys would blur the bias).

On the GPU (``--device gpu``) the attention kernels add the bias themselves: the layer spec carries the slopes
(``LayerSpec.alibi_slopes``) and ``slope_h * (j - i)`` joins each score after the scale, as llama.cpp's soft_max_ext
with its ``-|i - j|`` mask (:func:`alibi_layer_specs`); no extra channel, no copies, and exact at any depth.  Every
ALiBi model here (BLOOM, MPT, Jais, Refact, Baichuan 13B) takes its specs from that one function.
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


def alibi_layer_specs(model: Any, slopes: np.ndarray, head_dim_v: int, scale: float) -> list[LayerSpec]:
    """An ALiBi model's layer specs: on the CPU with the keys' position channel (head_dim + 1 key channels,
    :meth:`BloomModel.attend` appends it), elsewhere (the GPU) with ``slopes`` [n_head] for the kernels to add."""
    c = model.cfg
    if model.be.name == "cpu":
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim + 1, head_dim_v, 0, scale, 0.0, position_channel=True)] * c.n_layer
    return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, head_dim_v, 0, scale, 0.0, alibi_slopes=tuple(map(float, slopes)))] * c.n_layer


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
    ROPE_ABSENCE = "ALiBi"  # (a distance penalty on the attention scores; MPT's and JAIS's too)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_norm, self.tok_norm_b = self.load_tok_norm(w)
        #: per query head, ALiBi's slope (the GPU kernels' bias: alibi_layer_specs)
        self.alibi_slopes = alibi_slopes(cfg.n_head, self.max_alibi_bias(g))
        #: per query head, the extra query channel that times a key's position gives ALiBi's bias (the CPU's)
        self.alibi_q = (self.alibi_slopes * np.float32(np.sqrt(cfg.head_dim))).astype(np.float32)

    def max_alibi_bias(self, g: GGUFFile) -> float:
        return BLOOM_MAX_ALIBI_BIAS

    def load_tok_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return w.vector("tok_norm"), w.vector("tok_norm_b")

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg  # (on the CPU the keys one channel wider: their positions; the scale stays the real head's)
        return alibi_layer_specs(self, self.alibi_slopes, c.head_dim, 1.0 / np.sqrt(c.head_dim))

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
        """ALiBi through the cache's own attention: Q with ``slope_h / scale`` and K with its position appended (the
        CPU's); the GPU caches add it in their kernels (``LayerSpec.alibi_slopes``), so Q and K go as they are."""
        if self.be.name != "cpu":
            layer_cache.update_and_attend(q3, k3, v3, pos, att3)
            return
        T, n_head, hd = q3.shape
        qa = np.empty((T, n_head, hd + 1), np.float32)
        qa[..., :hd] = q3
        qa[..., hd] = self.alibi_q
        ka = np.empty((T, k3.shape[1], hd + 1), np.float32)
        ka[..., :hd] = k3
        ka[..., hd] = np.asarray(pos, np.float32)[:, None]
        layer_cache.update_and_attend(qa, ka, v3, pos, att3)
