"""IBM Granite 4.0-H (Granite-4.0-H-Micro, -Tiny, -Small) and Bamba, as llama.cpp's ``granitehybrid``
graph: most layers Mamba-2 mixers (``mamba2.py``), the rest grouped-query attention; which is which is
the per-layer ``head_count_kv`` (0: Mamba-2), as for LFM2.  Every layer is pre-norm (RMSNorm) with a
SwiGLU FFN after its operator: dense (H-Micro) or a mixture of experts with a shared expert beside it
(H-Tiny, H-Small: ``moe.py``, softmax routing, the chosen weights renormalised).  Granite's four
multipliers apply as in ``granite.py`` (embeddings, each operator's and FFN's output before its
residual add, attention scores, logits).

The attention rotates Q and K only where ``rope.scaling.finetuned`` says (llama.cpp's switch for
Granite, true unless stated): Granite 4.0-H's converter states false (no positions: the Mamba-2 layers
carry order), Bamba's true.  The Mamba-2 layers' state lives in the cache beside the K/V
(``cache/ssm.py``; on the GPU ``cache/gpu_ssm.py``).
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
from .common import WeightLoader
from .llama import LlamaModel
from .mamba2 import SSMGeometry, SSMMixer, load_mixer, mixer_y
from .moe import MoE, load_moe, moe_add


@dataclass
class HybridLayer:
    attn_norm: Any  # [n_embd]: the norm before the mixer or the attention
    ffn_norm: Any  # [n_embd]
    ssm: SSMMixer | None = None  # a Mamba-2 layer's mixer, or the attention's weights below
    wq: Weight | None = None
    wk: Weight | None = None
    wv: Weight | None = None
    wo: Weight | None = None
    bq: Any = None  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any = None
    bv: Any = None
    w_gate: Weight | None = None  # a dense FFN (H-Micro), or None: the mixture of experts below
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None


class GraniteHybridModel(LlamaModel):
    archs = ("granitehybrid",)

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        return None if g.arch_get("rope.scaling.finetuned", True) else "the file says so: rope.scaling.finetuned false"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if len(cfg.ssm_layers) != cfg.n_layer:
            raise GGUFError(f"{g.path}: granitehybrid.attention.head_count_kv has {len(cfg.ssm_layers)} entries for {cfg.n_layer} layers")
        self.geo = SSMGeometry.of(cfg, g.path)
        self.rope = bool(g.arch_get("rope.scaling.finetuned", True))
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (LlamaModel's: embeddings, output head, layers, rope tables)

    def load_layer(self, w: WeightLoader, i: int) -> HybridLayer:
        c = self.cfg
        for role in ("bo", "b_up", "b_down"):  # (llama.cpp's optional biases; no Granite 4.0-H file has them)
            if w.has(role, i):
                raise UnsupportedModelError(f"{w.g.path}: blk.{i} has a bias ({role}) kvrun does not add yet")
        L = HybridLayer(attn_norm=w.vector("attn_norm", i), ffn_norm=w.vector("ffn_norm", i))
        if c.ssm_layers[i]:
            L.ssm = load_mixer(w, i, self.geo)
        else:
            L.wq, L.wk, L.wv, L.bq, L.bk, L.bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
            L.wo = w.matrix("wo", i)
        if c.n_expert > 0:  # (every layer's FFN, the shared expert beside the routed ones where the file has one)
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm)
        else:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, c.attention_scale or 1.0 / np.sqrt(c.head_dim))
        return [self.geo.spec() if ssm else attn for ssm in c.ssm_layers]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd) if c.residual_scale != 1.0 else None  # (Granite) a block's output
        be.get_rows(self.tok_embd, tokens, x)
        if self.embedding_scale() != 1.0:
            be.scale(x, self.embedding_scale())
        for il, L in enumerate(self.layers):
            if L.ssm is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                y = mixer_y(be, buf, self.geo, L.ssm, cache[il], xn, pos, c.norm_eps)
                self.add_output(x, o, lambda out, acc: (be.linear_add if acc else be.linear)(L.ssm.out_proj, y, out))
            else:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                if self.rope:
                    be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
                self.add_output(x, o, lambda out, acc: (be.linear_add if acc else be.linear)(L.wo, att, out))
            self.trace("attn_out", il, x)
            if L.moe is not None:
                be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
                self.add_output(x, o, lambda out, acc: moe_add(be, L.moe, xn, out, buf, accumulate=acc))
            else:
                be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
                self.add_output(x, o, lambda out, acc: be.linear_glu(L.w_down, gate, up, out, "silu", accumulate=acc))
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
