"""Spark-X2.5 (XHToken's ``Spark2_5ForCausalLM``, Spark-X2.5-1.7B), as llama.cpp's ``spark2_5`` graph.

The pre-norm Llama block (``llama.py``: RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual; a tied or separate
output head), with what sets it apart:

* hybrid attention: the layers the file's ``sliding_window_pattern`` array flags (required, one flag a layer) attend
  within ``sliding_window`` (required) and rotate at ``rope.freq_base_swa`` (where stated) over
  ``rope.dimension_count_swa`` (where stated: the converter's partial rotary of the window layers), the global layers at
  ``rope.freq_base`` over ``rope.dimension_count``; every layer rotates (neox), with the file's rope scaling and no
  ``rope_freqs``;
* each layer its own number of query heads and KV heads where ``head_count`` / ``head_count_kv`` are lists (llama.cpp's
  ``n_head(il)``), Q/K/V fused (``attn_qkv``, the converter's) or apart;
* a head-wise attention gate: ``sigmoid(attn_gate x)`` (``[n_head, n_embd]``, of the attention's normed input), one
  value a head, times that head's output before ``attn_output`` (Step-3.5's gate, ``step35.py``);
* a GELU-gated FFN, ``down(gelu(gate x) * up x)`` (tanh GELU, llama.cpp's ``LLM_FFN_GELU``), not SwiGLU.

On ``--device gpu`` the gate is a kernel (``sigmoid_mul``), the rest the Llama block's kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader, make_rope
from .llama import LlamaLayer, LlamaModel
from .mimo2 import per_layer
from .step35 import gate_heads, head_buffers, per_layer_head_specs  # (step35 also registers attn_gate's tensor name)

#: llama.cpp's get_key / get_arr without a default for spark2_5
REQUIRED_KEYS = ("attention.sliding_window", "attention.sliding_window_pattern")


@dataclass
class Spark25Layer(LlamaLayer):
    n_head: int = 0  # this layer's query heads
    n_kv: int = 0  # and KV heads
    attn_gate: Weight | None = None  # [n_head, n_embd]: one sigmoid gate a head


class Spark25Model(LlamaModel):
    archs = ("spark2_5",)
    ffn_act = "gelu"

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """Each layer's own KV heads (``head_count_kv`` a list, or one count for all)."""
        return tuple(n * (cfg.head_dim + cfg.head_dim_v) for n in per_layer(g, "attention.head_count_kv", cfg.n_layer, cfg.n_head_kv))

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata spark2_5.{key} is missing; the file is not a complete model")
        if not hasattr(g.arch_get("attention.sliding_window_pattern"), "__len__"):  # (llama.cpp's get_arr: an array)
            raise GGUFError(f"{g.path}: metadata spark2_5.attention.sliding_window_pattern is not an array of one flag a layer")
        self.n_heads = per_layer(g, "attention.head_count", cfg.n_layer, cfg.n_head)
        self.n_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer, cfg.n_head_kv)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        # (the window layers: their own base and width, the file's scaling; llama.cpp's *_train_swa and n_rot_swa)
        n_rot_swa = int(g.arch_get("rope.dimension_count_swa", cfg.rope_dim) or cfg.rope_dim)
        self.rope_local = make_rope(dataclasses.replace(cfg, rope_dim=n_rot_swa), n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        return None  # (llama.cpp's spark2_5 graph rotates without rope_freqs)

    def load_layer(self, w: WeightLoader, i: int) -> Spark25Layer:  # type: ignore[override]
        c, H, n_kv = self.cfg, self.n_heads[i], self.n_kv[i]
        wq, wk, wv, bq, bk, bv = w.qkv(i, (H * c.head_dim, n_kv * c.head_dim, n_kv * c.head_dim_v))
        m = {"attn_q": wq, "attn_k": wk, "attn_v": wv, "attn_output": w.matrix("wo", i), "attn_gate": w.matrix("attn_gate", i)}
        want = {"attn_q": (H * c.head_dim, c.n_embd), "attn_k": (n_kv * c.head_dim, c.n_embd), "attn_v": (n_kv * c.head_dim_v, c.n_embd),
                "attn_output": (c.n_embd, H * c.head_dim_v), "attn_gate": (H, c.n_embd)}  # fmt: skip
        for role, shape in want.items():
            if tuple(m[role].shape) != shape:
                raise GGUFError(f"{w.g.path}: blk.{i} {role} has shape {tuple(m[role].shape)}, expected {shape}; the file is not a supported model")
        return Spark25Layer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=m["attn_output"], bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
            n_head=H, n_kv=n_kv, attn_gate=m["attn_gate"],
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        return per_layer_head_specs(self.cfg, self.layers)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, D, Dv = len(tokens), c.head_dim, c.head_dim_v
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        gate, up = buf.get("gate", T, c.n_ff), buf.get("up", T, c.n_ff)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            q, k, v, att, q3, k3, v3, att3 = head_buffers(buf, T, L.n_head, L.n_kv, D, Dv)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
            be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            gate_heads(be, buf, L.attn_gate, xn, att3)  # (one gate a head, of the attention's normed input)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, x, self.ffn_act, accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
