"""Apple OpenELM (270M, 450M, 1.1B, 3B; made for on-device use): https://arxiv.org/abs/2404.14619

As llama.cpp's OPENELM graph, the Llama block (RMSNorm -> GQA attention -> residual -> RMSNorm -> SwiGLU FFN ->
residual) with *layer-wise scaling*: each layer has its own number of query heads, K/V heads and FFN width, growing
with depth (OpenELM-270M: 12 to 20 query heads, 3 to 5 K/V heads, FFNs 0.5 to 4 times n_embd), so the file states
``attention.head_count``, ``attention.head_count_kv`` and ``feed_forward_length`` as per-layer arrays (ModelConfig
holds the widest layer's, which sizes the buffers; each layer's own are here), and every layer's K/V cache is its own
width (``layer_specs``).  Besides:

* Q, K and V in one ``attn_qkv`` per layer (that layer's Q heads, then K's, then V's rows), cut into row ranges at load;
* every head of Q and K RMS-normalised before the rope (``attn_q_norm``/``attn_k_norm``, one head's width), as Qwen3;
* heads ``key_length`` wide whatever n_embd / n_head (64 in every OpenELM), rope over the whole head, NeoX layout;
* the output head is always the token embeddings (llama.cpp reads no ``output.weight`` for OpenELM).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


def per_layer(g: GGUFFile, key: str, n_layer: int) -> list[int]:
    """A hyperparameter per layer: the file's array, or its one value for every layer."""
    v = g.arch_get(key)
    if v is None:
        raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
    out = [int(n) for n in v] if hasattr(v, "__len__") else [int(v)] * n_layer
    if len(out) != n_layer:
        raise GGUFError(f"{g.path}: {g.architecture}.{key} has {len(out)} entries for {n_layer} layers")
    return out


class OpenELMModel(LlamaModel):
    archs = ("openelm",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        # (read before the layers load: each layer's weights are cut by its own counts)
        self.n_heads = per_layer(g, "attention.head_count", cfg.n_layer)
        self.n_heads_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer)
        self.n_ffs = per_layer(g, "feed_forward_length", cfg.n_layer)
        if any(h == 0 or kv == 0 or h % kv for h, kv in zip(self.n_heads, self.n_heads_kv)):
            raise GGUFError(f"{g.path}: openelm's per-layer head counts {self.n_heads} / {self.n_heads_kv} do not group; "
                            "the file is not a supported model")  # fmt: skip
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.output = self.tok_embd  # (always tied: llama.cpp takes token_embd whatever else the file has)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        hd = self.cfg.head_dim
        wq, wk, wv = w.matrix_rows("wqkv", i, (self.n_heads[i] * hd, self.n_heads_kv[i] * hd, self.n_heads_kv[i] * hd))
        q_norm, k_norm = w.vector("q_norm", i), w.vector("k_norm", i)
        if (q_norm.shape[0], k_norm.shape[0]) != (hd, hd):
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm have {q_norm.shape[0]}/{k_norm.shape[0]} weights, "
                            f"expected {hd} (one head's); the file is not a supported model")  # fmt: skip
        L = LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=None, bk=None, bv=None,
            q_norm=q_norm, k_norm=k_norm, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
        if (L.w_gate.n_rows, L.w_up.n_rows, L.w_down.n_cols) != (self.n_ffs[i],) * 3:
            raise GGUFError(f"{w.g.path}: blk.{i}'s FFN is {L.w_up.n_rows} wide, openelm.feed_forward_length says "
                            f"{self.n_ffs[i]}; the file is not a supported model")  # fmt: skip
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(h, kv, c.head_dim, c.head_dim, 0, scale, 0.0) for h, kv in zip(self.n_heads, self.n_heads_kv)]

    def layer_buffers(self, il: int, T: int) -> tuple[Any, ...]:
        """Layer il's activations at its own widths: ``q``, ``k``, ``v``, ``att``, ``gate``, ``up`` and q, k, v, att by
        head (a buffer per width: layers of the same width share one)."""
        buf, hd = self.buf, self.cfg.head_dim
        nh, nkv, nff = self.n_heads[il], self.n_heads_kv[il], self.n_ffs[il]
        q, k, v = buf.get(f"q{nh}", T, nh * hd), buf.get(f"k{nkv}", T, nkv * hd), buf.get(f"v{nkv}", T, nkv * hd)
        att, gate, up = buf.get(f"att{nh}", T, nh * hd), buf.get(f"gate{nff}", T, nff), buf.get(f"up{nff}", T, nff)
        heads = (q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd), att.reshape(T, nh, hd))
        return (q, k, v, att, gate, up, *heads)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn = self.buf.get("x", T, c.n_embd), self.buf.get("xn", T, c.n_embd)

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            q, k, v, att, gate, up, q3, k3, v3, att3 = self.layer_buffers(il, T)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)  # (per-head QK-norm, then rope)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
