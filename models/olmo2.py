"""OLMo 2 (OLMo-2-0425-1B, OLMo-2-1124-7B/13B, OLMo-2-0325-32B): https://arxiv.org/abs/2501.00656

The Llama block with its norms moved after the sublayers, as llama.cpp's OLMo 2 graph: no norm
before attention or the FFN (no ``attn_norm``, ``ffn_norm``); each block's output RMS-normalised
before its residual add (``post_attention_norm``, ``post_ffw_norm``); Q and K each RMS-normalised
over their whole projection before RoPE (``attn_q_norm`` of ``n_head*head_dim`` weights,
``attn_k_norm`` of ``n_head_kv*head_dim``: not per head, :meth:`LlamaModel.qk_norm_rope`); NeoX
rope; a separate output head.

OLMo 3 files carry the same architecture name and a sliding window: of each
``sliding_window_pattern`` layers (4 unless the file says) all but the last attend within the
window, and those rotate Q and K with plain rope at ``rope.freq_base_swa`` (the global base unless
the file says), without the long-context scaling the global layers have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .llama import LlamaLayer, LlamaModel


@dataclass
class Olmo2Layer(LlamaLayer):
    attn_post_norm: Any = None  # [n_embd]
    ffn_post_norm: Any = None  # [n_embd]


class Olmo2Model(LlamaModel):
    archs = ("olmo2",)
    local_rope: bool = True  # the window layers rotate at their own base (OLMo 3; EXAONE 4's one base: False)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.rope_local = None  # the sliding-window layers' cos/sin (OLMo 3)
        if cfg.sliding_window and self.local_rope:
            plain = dataclasses.replace(cfg, rope_scaling_type="none", yarn_attn_factor=1.0)
            self.rope_local = make_rope(plain, n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> Olmo2Layer:
        q_norm, k_norm, _ = self.load_qk_norm(w, i, required=True)
        if q_norm.shape[0] != self.cfg.n_head * self.cfg.head_dim:  # (one head's width is all heads' when n_head is 1)
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm is one head wide, where OLMo 2 normalises all heads at once; "
                            "the file is not a supported model")  # fmt: skip
        return Olmo2Layer(
            attn_norm=None, wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i), wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=q_norm, k_norm=k_norm, qk_norm_full=True,
            ffn_norm=None, w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
            attn_post_norm=w.vector("attn_post_norm", i), ffn_post_norm=w.vector("ffn_post_norm", i),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale, 0.0)
                for il in range(c.n_layer)]  # fmt: skip

    def norm_rope_qk(self, L: Olmo2Layer, il: int, q: Any, k: Any, q3: Any, k3: Any, pos: Any) -> None:
        """Layer il's QK-norm (all heads at once) and rope, in place."""
        cos, sin = self.rope_local if self.rope_local is not None and self.cfg.is_swa(il) else (self.rope_cos, self.rope_sin)
        self.qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, _, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)  # a block's output, normalised into x

        if self.input_embd is not None:  # an image's rows (EXAONE 4.5's, runtime/vision_exaone45.py), as LlamaModel's forward
            x[...] = be.vector(self.input_embd)
        else:
            be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.linear_many((L.wq, L.wk, L.wv), x, (q, k, v))
            self.norm_rope_qk(L, il, q, k, q3, k3, pos)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_post_norm, c.norm_eps, x)
            be.linear_many((L.w_gate, L.w_up), x, (gate, up))
            be.linear_glu(L.w_down, gate, up, o, self.ffn_act)
            be.rms_norm_add(o, L.ffn_post_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
