"""NVIDIA Nemotron-H (8B, 47B, 56B) and Nemotron Nano 2 (9B, 12B), as llama.cpp's ``nemotron_h`` graph: each
layer is *one* operator after its RMSNorm (``attn_norm``, whatever the operator) and a residual add, no FFN
after it: a Mamba-2 mixer (``mamba2.py``), grouped-query attention without rope (the Mamba-2 layers carry
order), or an ungated squared-ReLU MLP::

    x = x + op(rms_norm(x) * attn_norm),  op: mamba2 | attention | W_down relu(W_up h)^2

Which operator is the checkpoint's ``hybrid_override_pattern`` ("M", "*", "-"), in the file per layer as
``head_count_kv`` and ``feed_forward_length``: both 0 for Mamba-2, head_count_kv for attention, the MLP's
width for an MLP (llama.cpp sizes each MLP from its own entry).  The mixture-of-experts variant (Nemotron 3
Nano) is another architecture (``nemotron_h_moe``).

The Mamba-2 layers' state lives in the cache beside the attention layers' K/V (``cache/ssm.py``; on the GPU
``cache/gpu_ssm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader
from .mamba2 import SSMGeometry, SSMMixer, load_mixer, mixer_y


@dataclass
class NemotronHLayer:
    attn_norm: Any  # [n_embd]: the norm before the layer's one operator
    ssm: SSMMixer | None = None  # a Mamba-2 layer
    wq: Weight | None = None  # an attention layer
    wk: Weight | None = None
    wv: Weight | None = None
    wo: Weight | None = None
    bq: Any = None  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any = None
    bv: Any = None
    w_up: Weight | None = None  # an MLP layer: [n_ff_i, n_embd], [n_embd, n_ff_i]
    w_down: Weight | None = None


class NemotronHModel(Model):
    archs = ("nemotron_h",)
    ROPE_ABSENCE = "the Mamba layers carry order"  # (rope-less attention among them; nemotron_h_moe's too)
    #: the FFN layers may be mixtures of experts (the nemotron_h_moe subclass, models/nemotron_h_moe.py: :meth:`ffn_layer`)
    takes_experts: bool = False
    takes_images = True  # its forward reads Model.input_embd (Parakeet's audio rows: models/parakeet_audio.py)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if len(cfg.ssm_layers) != cfg.n_layer:
            raise GGUFError(f"{g.path}: nemotron_h.attention.head_count_kv and feed_forward_length must have an entry per layer")
        if cfg.n_expert > 0 and not self.takes_experts:
            raise UnsupportedModelError(f"{g.path}: Nemotron-H with experts is not supported yet")
        self.geo = SSMGeometry.of(cfg, g.path)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        # each layer's cache among layer_specs' (None: an MLP layer's, which keeps nothing)
        kept = np.cumsum([not ffn for ffn in cfg.ffn_layers]) - 1
        self.slots = [None if ffn else int(n) for ffn, n in zip(cfg.ffn_layers, kept)]

    def load_layer(self, w: WeightLoader, i: int) -> NemotronHLayer:
        c = self.cfg
        for name in ("attn_output.bias", "ffn_up.bias", "ffn_down.bias"):  # (llama.cpp's optional biases; no checkpoint has them)
            if f"blk.{i}.{name}" in w.g.tensors:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i}.{name}: a bias kvrun does not add yet")
        L = NemotronHLayer(attn_norm=w.vector("attn_norm", i))
        if c.ssm_layers[i]:
            L.ssm = load_mixer(w, i, self.geo)
        elif c.ffn_layers[i]:
            L.w_up, L.w_down = w.matrix("w_up", i), w.matrix("w_down", i)
        else:
            L.wq, L.wk, L.wv, L.bq, L.bk, L.bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
            L.wo = w.matrix("wo", i)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        """The Mamba-2 and attention layers' caches, in order; an MLP layer keeps nothing, so has none (``slots``)."""
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, c.attention_scale or 1.0 / np.sqrt(c.head_dim_v))
        return [self.geo.spec() if ssm else attn for ssm, ffn in zip(c.ssm_layers, c.ffn_layers) if not ffn]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        if self.input_embd is not None:  # an audio clip's rows (Engine.eval_embd), read causally as llama.cpp's
            x[...] = be.vector(self.input_embd)
        else:
            be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            if L.ssm is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                y = mixer_y(be, buf, self.geo, L.ssm, cache[self.slots[il]], xn, pos, c.norm_eps)
                be.linear_add(L.ssm.out_proj, y, x)
            elif c.ffn_layers[il]:
                self.ffn_layer(L, x, xn)
            else:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                cache[self.slots[il]].update_and_attend(q3, k3, v3, pos, att3)  # (no rope)
                be.linear_add(L.wo, att, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def ffn_layer(self, L: NemotronHLayer, x: Any, xn: Any) -> None:
        """``x +=`` an FFN layer's output for the rows of ``x``: here the ungated squared-ReLU MLP."""
        c, be = self.cfg, self.be
        up = self.buf.get(f"up{L.w_up.shape[0]}", x.shape[0], L.w_up.shape[0])  # (each MLP its own width)
        be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.w_up,), (up,))
        be.relu_sqr(up, up)
        be.linear_add(L.w_down, up, x)
