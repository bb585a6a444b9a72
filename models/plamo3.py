"""PLaMo 3 (Preferred Networks: PLaMo-3 2B/8B/31B, Japanese-English), as llama.cpp's PLAMO3 graph.

The Llama block with "sandwich" norms, as Gemma 3's but with SwiGLU and no embedding scale:

    x = x + RMSNorm_post(attn(RMSNorm(x)));  x = x + RMSNorm_post(ffn(RMSNorm(x)))

* Q, K and V from one fused ``attn_qkv`` (Q's rows, K's, V's; GQA), Q and K RMS-normalised per head
  (``attn_q_norm``/``attn_k_norm``, ``[head_dim]``) before the rope, rope over halves (NeoX's layout);
* the FFN's gate and up fused in ``ffn_up`` (gate rows first, as ggml's swiglu splits it), SiLU-gated;
* sliding-window attention where the file states a window: of each ``sliding_window_pattern`` layers (8 unless the
  file says) all but the last attend within it (OLMo 3's layout: models/olmo2.py), rotating at ``rope.freq_base_swa``
  (the global base unless the file says);
* the output head tied to the token embeddings where the file has no ``output.weight``.

The post-norms' names: the converter writes ``post_attention_norm.weight``/``post_ffw_norm.weight``; llama.cpp 0.3.36
looks them up without ``.weight``.  Either is read.  (The norm weights carry PLaMo's offsets: the converter adds them.)
"""

from __future__ import annotations

from typing import Any

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader, make_rope
from .olmo2 import Olmo2Layer, Olmo2Model

TENSOR_NAMES.setdefault("attn_post_norm_bare", "blk.{i}.post_attention_norm")
TENSOR_NAMES.setdefault("ffn_post_norm_bare", "blk.{i}.post_ffw_norm")


class Plamo3Model(Olmo2Model):
    archs = ("plamo3",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if cfg.sliding_window:  # (llama.cpp's window layers keep the file's rope scaling, at their own base)
            self.rope_local = make_rope(cfg, n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> Olmo2Layer:
        c = self.cfg
        wq, wk, wv = w.matrix_rows("wqkv", i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        w_gate, w_up = w.matrix_rows("w_up", i, (c.n_ff, c.n_ff))
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        return Olmo2Layer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=q_norm, k_norm=k_norm, qk_norm_full=full,
            ffn_norm=w.vector("ffn_norm", i), w_gate=w_gate, w_up=w_up, w_down=w.matrix("w_down", i),
            attn_post_norm=self.post_norm(w, "attn_post_norm", i), ffn_post_norm=self.post_norm(w, "ffn_post_norm", i),
        )  # fmt: skip

    @staticmethod
    def post_norm(w: WeightLoader, role: str, i: int) -> Any:
        """A post-norm's weights under the converter's name, else under llama.cpp 0.3.36's (no ``.weight``)."""
        return w.vector(role + "_bare", i) if not w.has(role, i) and w.has(role + "_bare", i) else w.vector(role, i)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)  # a block's output, normalised into x

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            self.qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_post_norm, c.norm_eps, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, o, self.ffn_act)
            be.rms_norm_add(o, L.ffn_post_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
