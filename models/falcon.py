"""Falcon (TII): Falcon-7B, Falcon-40B and Falcon-180B (v1, and their -instruct), as llama.cpp's FALCON graph.

A *parallel* block, as Phi-2's (``phi2.py``): attention and the MLP both read the layer's input through
LayerNorms (with biases) and both add into the residual stream::

    h = LN(x);  x = x + attn(LN2(x) or h) + mlp(h)

* Falcon-7B normalises once (``attn_norm``), which attention and the MLP share; Falcon-40B and 180B (the "new
  decoder architecture") give attention its own LayerNorm, ``attn_norm_2``, the MLP keeping ``attn_norm``;
* multi-query (7B: one K/V head) or grouped-query attention (40B: 8 K/V groups), Q, K and V from one fused
  ``attn_qkv`` without a bias (the converter regroups Falcon's per-group interleaving into Q, K, V blocks);
* rope over whole heads, neox layout (llama.cpp requires ``rope.dimension_count`` = head_dim);
* no bias on any projection; the MLP is GELU between ``ffn_up`` and ``ffn_down``, no gate;
* the output LayerNorm has a bias; the output head is ``output.weight``, or the token embeddings where absent.

Not runnable: Falcon-RW-1B/7B (ALiBi, biased projections, a sequential block), which llama.cpp's graph does not
model either; a file with projection biases is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache
from ..loaders.errors import UnsupportedModelError
from ..ops.backend import Weight
from .common import TENSOR_NAMES, WeightLoader
from .phi2 import Phi2Layer, Phi2Model

TENSOR_NAMES.update({"attn_norm_2": "blk.{i}.attn_norm_2.weight", "attn_norm_2_b": "blk.{i}.attn_norm_2.bias"})  # (LLM_TENSOR_ATTN_NORM_2)


@dataclass
class FalconLayer(Phi2Layer):
    attn_norm_2: Any = None  # [n_embd]: attention's own LayerNorm (Falcon-40B/180B), or None: it reads attn_norm's
    attn_norm_2_b: Any = None


class FalconModel(Phi2Model):
    archs = ("falcon",)

    def load_layer(self, w: WeightLoader, i: int) -> FalconLayer:
        c = self.cfg
        for role in ("bqkv", "bq", "bo", "b_up", "b_down"):  # (llama.cpp's loader takes none: such a file fails there too)
            if w.has(role, i):
                raise UnsupportedModelError(f"{w.g.path}: tensor {TENSOR_NAMES[role].format(i=i)!r}: Falcon with biased "
                                            "projections (Falcon-RW) is not supported")  # fmt: skip
        wq, wk, wv = w.matrix_rows("wqkv", i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))  # (required fused)
        return FalconLayer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=wq, wk=wk, wv=wv, bq=None, bk=None, bv=None, wo=w.matrix("wo", i), bo=None,
            w_up=w.matrix("w_up", i), b_up=None, w_down=w.matrix("w_down", i), b_down=None,
            attn_norm_2=w.vector("attn_norm_2", i, required=False), attn_norm_2_b=w.vector("attn_norm_2_b", i, required=False),
        )  # fmt: skip

    def load_output(self, w: WeightLoader) -> tuple[Weight, Any]:
        return w.matrix("output", required=False) or self.tok_embd, None  # tied when absent; no bias

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, _, up, q3, k3, v3, att3 = self.step_buffers(T)
        xa = self.buf.get("xa", T, c.n_embd)  # attention's input where it has its own norm

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.layer_norm(x, L.attn_norm, L.attn_norm_b, c.norm_eps, xn)  # the MLP's input (and attention's, 7B)
            self.trace("attn_norm", il, xn)
            h = xn
            if L.attn_norm_2 is not None:
                be.layer_norm(x, L.attn_norm_2, L.attn_norm_2_b, c.norm_eps, xa)
                h = xa
            be.linear_many((L.wq, L.wk, L.wv), h, (q, k, v))
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.w_up, xn, up)  # (of the layer's input: before attention's output joins the stream)
            be.gelu(up, up)
            be.linear_add(L.wo, att, x)
            be.linear_add(L.w_down, up, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
