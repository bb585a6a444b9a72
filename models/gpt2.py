"""GPT-2 (OpenAI; DistilGPT2, and the Cerebras-GPT files, written as gpt2), and the block StarCoder2
(models/starcoder2.py) and GPT-NeoX (models/gptneox.py) share with it.

As llama.cpp's GPT2 graph, the pre-LayerNorm transformer everything since has varied on:

    x = tok_embd[t] + position_embd[p]
    x = x + attn(LN(x));  x = x + ffn(LN(x))

* *learned* absolute positions, no rope: ``position_embd.weight`` has a row for each of the
  ``context_length`` positions the model was trained for, and there is nothing past the last one
  (a context longer than that is refused at load, a position past it at eval);
* every LayerNorm with a bias (two per layer, and the output's);
* Q, K and V from one fused ``attn_qkv`` with its bias, the attention output projection with its
  bias (multi-head: as many K/V heads as query heads);
* the FFN is GELU (tanh form) between ``ffn_up`` and ``ffn_down``, both with biases, no gate;
* the output head is the token embeddings unless the file has an ``output.weight``; no bias.

The layer is Phi-2's (models/phi2.py: the same biased projections and ungated GELU FFN) with the
FFN's own LayerNorm added; the forward here serves the family, their differences as hooks: how a
token enters (``embed``), how Q and K learn their positions (``rope``), and GPT-NeoX's parallel
residual (``parallel_residual``: both branches read the layer's input, ``x + attn(LN1(x)) +
ffn(LN2(x))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .phi2 import Phi2Layer, Phi2Model

TENSOR_NAMES["pos_embd"] = "position_embd.weight"  # (BERT's name too: llama.cpp's LLM_TENSOR_POS_EMBD)


@dataclass
class GPT2Layer(Phi2Layer):
    ffn_norm: Any = None  # [n_embd]: the FFN's own LayerNorm (Phi-2's FFN reads the attention's)
    ffn_norm_b: Any = None  # [n_embd]


class GPT2Model(Phi2Model):
    archs = ("gpt2",)
    #: a table of learned positions added to the token embeddings (GPT-2); False: rope on Q and K instead
    learned_positions: bool = True

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:  # (BLOOM's kin: their ALiBi; the others rope)
        return "learned positions: position_embd.weight" if cls.learned_positions else cls.ROPE_ABSENCE

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if self.learned_positions and n_ctx > cfg.n_ctx_train:  # (no row to look up past the table; before any upload)
            raise KvrunError(f"{g.path}: {cfg.arch} learned positions for {cfg.n_ctx_train} tokens (position_embd.weight), "
                             f"a context of {n_ctx} goes past them; use --ctx-size {cfg.n_ctx_train} or less")  # fmt: skip
        #: GPT-NeoX's parallel block, where the file says so (models/gptneox.py)
        self.parallel_residual = False
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (Phi-2's rope tables come too: unused without rope)
        self.pos_embd: Weight | None = None
        if self.learned_positions:
            self.pos_embd = WeightLoader(g, backend).matrix("pos_embd")  # [n_ctx_train, n_embd]
            if self.pos_embd.shape != (cfg.n_ctx_train, cfg.n_embd):
                raise GGUFError(f"{g.path}: tensor 'position_embd.weight' has shape {self.pos_embd.shape}, expected "
                                f"{(cfg.n_ctx_train, cfg.n_embd)} (context_length rows); the file is not a supported model")  # fmt: skip

    def load_layer(self, w: WeightLoader, i: int) -> GPT2Layer:
        L = super().load_layer(w, i)
        if L.bq is None:  # (llama.cpp requires the Q, K and V biases of all three)
            name = "attn_qkv" if w.has("wqkv", i) else "attn_q"
            raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.{name}.bias' is missing; the file is incomplete or not a supported model")
        return GPT2Layer(**vars(L), ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=w.vector("ffn_norm_b", i))

    def load_output(self, w: WeightLoader) -> tuple[Weight, Any]:
        return w.matrix("output", required=False) or self.tok_embd, None  # tied when absent; never a bias

    def embed(self, tokens: np.ndarray, pos: Any, x: Any, scratch: Any) -> None:
        """The residual stream's start for ``tokens`` at ``pos``: token embeddings plus (GPT-2) learned positions."""
        self.be.get_rows(self.tok_embd, tokens, x)
        if self.pos_embd is not None:
            if isinstance(pos, np.ndarray) and len(pos) and int(pos.max()) >= self.pos_embd.n_rows:
                raise KvrunError(f"{self.cfg.arch}: position {int(pos.max())} is past the {self.pos_embd.n_rows} "
                                 "positions the model learned (position_embd.weight)")  # fmt: skip
            ids = pos
            if self.be.name == "gpu":  # (the device copy of the positions the layers read: a captured decode step's
                # is the buffer each replay refills, where an upload of pos here would stay fixed at the capture's)
                from ..ops.gpu.arrays import positions

                ids = positions(pos)
            self.be.get_rows(self.pos_embd, ids, scratch)
            self.be.add(x, scratch)

    def rope(self, q3: Any, k3: Any, pos: Any) -> None:
        """Q and K turned by their positions (in place), unless the positions are learned ones, in the embeddings
        (GPT-2); ``rope.dimension_count`` wide (GPT-NeoX's partial rotary: the tables are that narrow)."""
        if not self.learned_positions:
            self.be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, self.cfg.rope_neox)

    def attend(self, layer_cache: Any, q3: Any, k3: Any, v3: Any, pos: Any, att3: Any) -> None:
        """The layer's attention into ``att3`` through its cache (BLOOM's and MPT's ALiBi: models/bloom.py)."""
        layer_cache.update_and_attend(q3, k3, v3, pos, att3)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)

        self.embed(tokens, pos, x, xn)
        for il, L in enumerate(self.layers):
            be.layer_norm(x, L.attn_norm, L.attn_norm_b, c.norm_eps, xn)
            self.trace("attn_norm", il, xn)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            be.add_bias(q, L.bq)
            be.add_bias(k, L.bk)
            be.add_bias(v, L.bv)
            self.rope(q3, k3, pos)
            self.attend(cache[il], q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            if self.parallel_residual:  # the FFN's norm of the layer's input, before attention's output joins it
                be.layer_norm(x, L.ffn_norm, L.ffn_norm_b, c.norm_eps, xn)
            be.linear_add(L.wo, att, x)
            be.add_bias(x, L.bo)
            if not self.parallel_residual:  # the FFN's norm of the stream attention's output went into
                be.layer_norm(x, L.ffn_norm, L.ffn_norm_b, c.norm_eps, xn)
            self.trace("ffn_norm", il, xn)
            self.ffn(L, xn, gate, up, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def ffn(self, L: GPT2Layer, xn: Any, gate: Any, up: Any, x: Any) -> None:
        """``x +=`` the FFN of the normed rows ``xn`` (``gate``, ``up``: ``[T, n_ff]`` scratch): GELU between the biased
        ``ffn_up`` and ``ffn_down`` (Jais: a biased SwiGLU, models/jais.py)."""
        be = self.be
        be.linear(L.w_up, xn, up)
        be.add_bias(up, L.b_up)
        be.gelu(up, up)
        be.linear_add(L.w_down, up, x)
        be.add_bias(x, L.b_down)
