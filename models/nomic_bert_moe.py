"""Nomic-BERT with mixture-of-experts layers (``nomic-bert-moe``: nomic-embed-text-v2-moe), as llama.cpp's
``llm_build_bert`` runs it.

Nomic-BERT's post-norm block with rotary positions (NeoX; models/bert.py), but XLM-RoBERTa's Unigram
vocabulary and biases on the fused QKV, the output and the dense FFN, which is GELU(up) -> down rather
than nomic-bert's SwiGLU.  Every ``moe_every_n_layers``-th layer (those with il % n == 1: layers 1, 3, ...
of the real model's 12 at n = 2) has a mixture of GELU experts instead: a router's softmax over the
``expert_count`` experts, the ``expert_used_count`` most probable chosen (ties to the lower index), each
expert's down(gelu(up x)) weighted by its probability as the softmax gave it (not renormalised), no bias
(the converter drops the checkpoint's shared expert bias, as llama.cpp's graph has none).

Activations are numpy arrays on the host (prefill-only work); the routing is models/moe.py's.  On the GPU the states stay
on the device, as BERT's, the routing moe.cu's kernel (:meth:`NomicBertMoeModel._moe_on_device`).
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import BertModel, gelu
from .common import WeightLoader
from .moe import expert, route


class NomicBertMoeModel(BertModel):
    archs = ("nomic-bert-moe",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.moe_every = int(g.arch_get("moe_every_n_layers", 0) or 0)  # (read before the layers load: it says which are MoE)
        if self.moe_every and not 0 < cfg.n_expert_used <= cfg.n_expert:
            raise GGUFError(f"{g.path}: expert_used_count {cfg.n_expert_used} is not in 1..{cfg.n_expert} (expert_count)")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def is_moe(self, il: int) -> bool:
        """Whether layer il's FFN is a mixture of experts (llama.cpp: il % moe_every_n_layers == 1)."""
        return self.moe_every > 0 and il % self.moe_every == 1

    def _load_ffn(self, ld: WeightLoader, i: int, L: dict) -> None:
        if not self.is_moe(i):
            super()._load_ffn(ld, i, L)
            return
        c = self.cfg
        L["router"] = ld.matrix("ffn_gate_inp", i)
        L["up_exps"] = ld.experts("ffn_up_exps", i, c.n_expert, c.n_ff, c.n_embd)
        L["down_exps"] = ld.experts("ffn_down_exps", i, c.n_expert, c.n_embd, c.n_ff)

    def _ffn(self, x: np.ndarray, L: dict, il: int) -> np.ndarray:
        if not self.is_moe(il):
            return super()._ffn(x, L, il)
        c = self.cfg
        if self._gpu:
            return self._moe_on_device(x, L)
        top, wts = route(self._linear(L["router"], x, None), c.n_expert_used, c.expert_weights_norm)
        out = np.zeros_like(x)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            h = gelu(self._linear(expert(L["up_exps"], e, c.n_expert), x[rows], None))
            out[rows] += self._linear(expert(L["down_exps"], e, c.n_expert), h, None) * wts[rows, slot][:, None]
        return out

    def _moe_on_device(self, x: object, L: dict) -> object:
        """:meth:`_ffn`'s experts with the states on the device: the router's choice by moe.cu's kernel (ids and weights
        stay there), then every expert over every token, in expert order, added with the weight its token gave it (0
        where not chosen: the same sums as the host's).  n_expert / k times the chosen experts' products, for no copy
        down a layer (an encoder runs once a text; a decoder's experts take the grouped kernels, ops/gpu/moe.py)."""
        from ..ops.gpu import encoder as E

        c, be, xp = self.cfg, self.be, self.be.xp
        T, k = x.shape[0], c.n_expert_used
        ids, wts = be.zeros((T, k), np.int32), be.zeros((T, k), np.float32)
        be.moe_route(self._linear(L["router"], x, None), k, "softmax", c.expert_weights_norm, 1.0, None, None, (0, 0), ids, wts)
        given = ((ids[:, :, None] == xp.arange(c.n_expert, dtype=np.int32)) * wts[:, :, None]).sum(axis=1)  # [T, n_expert]
        out = be.zeros(x.shape, np.float32)
        for e in range(c.n_expert):
            h = self._linear(expert(L["up_exps"], e, c.n_expert), x, None)
            E.gelu_f16(h, h)
            out += self._linear(expert(L["down_exps"], e, c.n_expert), h, None) * given[:, e : e + 1]
        return out
