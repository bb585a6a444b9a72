"""TII Falcon-H1 (0.5B, 1.5B, 1.5B-Deep, 3B, 7B, 34B), as llama.cpp's ``falcon-h1`` graph: every layer runs
grouped-query attention *and* a Mamba-2 mixer (``mamba2.py``) side by side on the same normed input, both adding
to the residual, then a SwiGLU FFN::

    h = rms_norm(x) * attn_norm
    x = x + attention(h) + mamba2(h)
    x = x + W_down (silu(W_gate n) * W_up n),  n = rms_norm(x) * ffn_norm

The attention rotates Q and K over halves (NeoX) with Llama 3's rope factors where the file has them; its heads
are as wide as ``attention.key_length`` says, not n_embd / n_head.  The mixer's grouped norm is there only where
the file has ``ssm_norm`` (the checkpoints' ``mamba_rms_norm``; the released ones have none: ``y * silu(z)``
alone), and its inner width is its own (``ssm.inner_size``, Falcon's ``mamba_d_ssm``).

Falcon-H1 is trained with muP multipliers (embeddings, lm_head, attention in and out, keys, the SSM's in and out
and per-channel ``mup_vector``, the MLP's gate and down).  llama.cpp's converter folds every one of them into the
weights it writes, and its graph applies none at run time; so neither does kvrun.

Each layer's cache holds its K/V and the mixer's state both (``cache/ssm.py``'s ParallelSSMLayerCache;
on the GPU ``cache/gpu_ssm.py``'s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaModel
from .mamba2 import SSMGeometry, SSMMixer, load_mixer, mixer_y

# (the converter maps pre_ff_layernorm.weight, suffix and all, to this name, and llama.cpp loads it so: no ".weight")
TENSOR_NAMES["falcon_h1_ffn_norm"] = "blk.{i}.ffn_norm"


@dataclass
class FalconH1Layer:
    attn_norm: Any  # [n_embd]: the one norm before both the attention and the mixer
    wq: Weight
    wk: Weight
    wv: Weight
    wo: Weight
    bq: Any  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any
    bv: Any
    ssm: SSMMixer
    ffn_norm: Any  # [n_embd]
    w_gate: Weight
    w_up: Weight
    w_down: Weight


class FalconH1Model(LlamaModel):
    archs = ("falcon-h1",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.geo = SSMGeometry.of(cfg, g.path)
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (LlamaModel's: embeddings, output head, layers, rope tables)

    def load_layer(self, w: WeightLoader, i: int) -> FalconH1Layer:
        c = self.cfg
        # (llama.cpp loads these optional biases, yet its graph adds the FFN's only and never attn_output's; no
        # Falcon-H1 checkpoint has any)
        for name in ("attn_output.bias", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"):
            if f"blk.{i}.{name}" in w.g.tensors:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i}.{name}: a bias kvrun does not add yet")
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return FalconH1Layer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            ssm=load_mixer(w, i, self.geo, norm_required=False),
            ffn_norm=w.vector("falcon_h1_ffn_norm", i), w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = c.attention_scale or 1.0 / np.sqrt(c.head_dim_v)  # (llama.cpp's kq_scale: of n_embd_head_v)
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, scale)
        return [replace(attn, ssm=self.geo.spec().ssm, ssm_attn=True)] * c.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))  # (xn: the mixer's input too)
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            y = mixer_y(be, buf, self.geo, L.ssm, cache[il], xn, pos, c.norm_eps)
            be.linear_add(L.wo, att, x)
            be.linear_add(L.ssm.out_proj, y, x)
            self.trace("ffn_inp", il, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
