"""Preferred Networks' PLaMo 2 (PLaMo 2 1B, 8B, 2.1B-instruct, translate), as llama.cpp's ``plamo2`` graph: Mamba layers
and attention layers by turns (the converter's ``mamba_step`` 2: every other layer attends, head_count and head_count_kv
0 for the Mamba ones), each wrapped in *sandwich* norms::

    x = x + rms_norm(op(rms_norm(x) * attn_norm)) * post_attention_norm,   op: mamba | attention
    x = x + rms_norm(ffn(rms_norm(x) * ffn_norm)) * post_ffw_norm,          ffn: W_down swiglu(W_up x) (gate+up fused)

The Mamba layer is Mamba-2's scan (a state ``[head_dim, d_state]`` per head, ``A``, ``D`` and the time step one a head,
``B`` and ``C`` one group) fed as Mamba 1 feeds it: ``x`` alone through the convolution (no bias), ``B``, ``C`` and a
``dt`` of ``max(64, n_embd / 16)`` from the convolution's output (``ssm_x``), each RMS-normalised with its weight, as
Jamba's; ``dt`` widened to a step per head (``ssm_dt``), ``y = C . s + D x`` gated by ``silu(z)`` and no grouped norm.
The in-projection's rows come per head (``z`` then ``x``, ``head_dim`` each) and ``ssm_x`` gives ``B, C, dt``.  Such a
scan *is* Mamba 1's with every channel of a head sharing the head's ``A``, ``D`` and time step, so kvrun reorders and
widens the weights once at load (rows of ``ssm_in`` to all of ``x`` then all of ``z``, of ``ssm_x`` to ``dt, B, C``, each
head's ``ssm_dt`` row, ``A``, ``D`` and bias repeated ``head_dim`` times) and runs Mamba 1's mixer (``mamba.py``) and its
cache (``cache/mamba.py``) unchanged.

The attention: a fused ``attn_qkv``, every head of Q and K RMS-normalised with a weight of its own (``[n_head,
head_dim]``, not one shared by the heads), then NeoX rope, ``key_length`` wide heads (on the GPU each head's norm
one kernel, ``ops/gpu/ssm.cu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader, make_rope
from .jamba import dt_b_c_norms
from .mamba import MambaLayer, MambaModel

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_ATTN_POST_NORM, FFN_POST_NORM and the dt/B/C norms as it loads them for PLaMo 2:
    # without ".weight" (Jamba's dt/B/C norms have it)
    "plamo2_attn_post_norm": "blk.{i}.post_attention_norm",
    "plamo2_ffn_post_norm": "blk.{i}.post_ffw_norm",
    "plamo2_ssm_dt_norm": "blk.{i}.ssm_dt_norm",
    "plamo2_ssm_b_norm": "blk.{i}.ssm_b_norm",
    "plamo2_ssm_c_norm": "blk.{i}.ssm_c_norm",
})  # fmt: skip


@dataclass
class Plamo2Layer:
    attn_norm: Any  # [n_embd]: before the mixer or the attention
    attn_post_norm: Any  # [n_embd]: on the mixer's or the attention's output, before the residual add
    ffn_norm: Any  # [n_embd]
    ffn_post_norm: Any  # [n_embd]: on the FFN's output, before the residual add
    w_gate: Weight  # [n_ff, n_embd]: the first half of the fused ffn_up (swiglu's silu side)
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    mamba: MambaLayer | None = None  # a Mamba layer (its weights reordered as Mamba 1's), or the attention below
    wq: Weight | None = None
    wk: Weight | None = None
    wv: Weight | None = None
    wo: Weight | None = None
    q_norm: np.ndarray | None = None  # [n_head, head_dim]: a weight per head and channel
    k_norm: np.ndarray | None = None  # [n_head_kv, head_dim]


class Plamo2Model(MambaModel):
    archs = ("plamo2",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if len(cfg.ssm_layers) != cfg.n_layer:
            raise GGUFError(f"{g.path}: plamo2.attention.head_count_kv has {len(cfg.ssm_layers)} entries for {cfg.n_layer} layers")
        if cfg.ssm_d_inner <= 0 or cfg.ssm_dt_rank <= 0 or cfg.ssm_d_inner % cfg.ssm_dt_rank or cfg.ssm_n_group != 0:
            raise GGUFError(f"{g.path}: plamo2.ssm.inner_size {cfg.ssm_d_inner}, time_step_rank {cfg.ssm_dt_rank} (the Mamba heads) and "
                            f"group_count {cfg.ssm_n_group} (llama.cpp takes 0) do not make heads; the file is not a supported model")  # fmt: skip
        if cfg.n_head_kv <= 0 or cfg.n_head % cfg.n_head_kv:
            raise GGUFError(f"{g.path}: plamo2 attention with {cfg.n_head} heads over {cfg.n_head_kv} K/V heads; the file is not a supported model")
        self.ssm_heads, self.ssm_head_dim = cfg.ssm_dt_rank, cfg.ssm_d_inner // cfg.ssm_dt_rank
        self.dt_dim = max(64, cfg.n_embd // 16)  # (llama.cpp's, fixed in code: the raw time step's width)
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (MambaModel's: the ssm sizes, embeddings, head, layers)
        self.dt_rank = self.dt_dim  # (the mixer cuts ssm_x's output at it)
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> Plamo2Layer:  # type: ignore[override]
        c = self.cfg
        w_gate, w_up = w.matrix_rows("w_up", i, (c.n_ff, c.n_ff))  # (llama.cpp's LLM_FFN_SWIGLU: silu of the first half)
        L = Plamo2Layer(attn_norm=w.vector("attn_norm", i), attn_post_norm=w.vector("plamo2_attn_post_norm", i),
                        ffn_norm=w.vector("ffn_norm", i), ffn_post_norm=w.vector("plamo2_ffn_post_norm", i),
                        w_gate=w_gate, w_up=w_up, w_down=w.matrix("w_down", i))  # fmt: skip
        if c.ssm_layers[i]:
            L.mamba = self.load_mamba(w, i)
        else:
            hd = c.head_dim
            L.wq, L.wk, L.wv = w.matrix_rows("wqkv", i, (c.n_head * hd, c.n_head_kv * hd, c.n_head_kv * c.head_dim_v))
            L.wo = w.matrix("wo", i)
            L.q_norm, L.k_norm = (self.host(w, role, i, n * hd).reshape(n, hd) for role, n in (("q_norm", c.n_head), ("k_norm", c.n_head_kv)))
        return L

    def host(self, w: WeightLoader, role: str, i: int, n: int) -> np.ndarray:
        v = w.host_vector(role, i)
        if v.size != n:
            raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
        return v

    def load_mamba(self, w: WeightLoader, i: int) -> MambaLayer:
        """Layer i's Mamba weights, reordered and widened to Mamba 1's layout (the module docstring says why)."""
        n, di, ds, dd, nh, hd = self.cfg.n_embd, self.d_inner, self.d_state, self.dt_dim, self.ssm_heads, self.ssm_head_dim

        def rows(role: str, shape: tuple[int, int], order: np.ndarray) -> Weight:
            m = w.matrix(role, i)
            if tuple(m.shape) != shape:
                raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return self.be.upload(np.ascontiguousarray(m.data[order]), m.qtype, (len(order), m.shape[1]))

        zx = np.arange(2 * di).reshape(nh, 2, hd)  # ssm_in's rows: per head z, then x
        heads = np.repeat(np.arange(nh), hd)  # each channel's head
        L = MambaLayer(
            attn_norm=None,  # (the layer's: Plamo2Layer.attn_norm)
            in_proj=rows("ssm_in", (2 * di, n), np.concatenate([zx[:, 1].ravel(), zx[:, 0].ravel()])),
            conv=np.ascontiguousarray(self.host(w, "ssm_conv1d", i, di * self.d_conv).reshape(di, self.d_conv).T),
            conv_b=np.zeros(di, np.float32),  # (none: llama.cpp's PLaMo 2 adds no bias)
            x_proj=rows("ssm_x", (2 * ds + dd, di), np.r_[2 * ds : 2 * ds + dd, 0 : 2 * ds]),  # B, C, dt -> dt, B, C
            dt_proj=rows("ssm_dt", (nh, dd), heads),
            dt_b=self.host(w, "ssm_dt_b", i, nh)[heads],
            A=np.ascontiguousarray(np.repeat(self.host(w, "ssm_a", i, nh)[heads, None], ds, axis=1)),
            D=self.host(w, "ssm_d", i, nh)[heads],
            out_proj=w.matrix("ssm_out", i),
        )
        if tuple(L.out_proj.shape) != (n, di):
            raise GGUFError(f"{w.g.path}: blk.{i}.ssm_out.weight has shape {tuple(L.out_proj.shape)}, expected {(n, di)}; the file is not a supported model")
        return dt_b_c_norms(w, L, i, dd, ds, prefix="plamo2_")

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim_v))
        mamba = LayerSpec(1, 1, 1, 1, mamba=(self.d_conv, self.d_inner, self.d_state))
        return [mamba if ssm else attn for ssm in c.ssm_layers]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)  # (an operator's output, post-normed before its residual add)
        ones = np.ones(c.head_dim, np.float32)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            if L.mamba is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                be.linear(L.mamba.out_proj, self.mixer(L.mamba, cache[il], xn, pos), o)
            else:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                for h3, wn in ((q3, L.q_norm), (k3, L.k_norm)):  # (each head its own weights: normed alone, then weighted)
                    if be.name == "gpu":  # (one kernel: an array product would not be captured with the decode step)
                        from ..ops.gpu.ssm import const, rms_norm_heads_each

                        rms_norm_heads_each(h3, const(wn), c.norm_eps)
                        continue
                    be.rms_norm_heads(h3, ones, c.norm_eps)
                    h3 *= wn
                be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
                be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_post_norm, c.norm_eps, x)
            self.trace("attn_out", il, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, o, "silu")
            be.rms_norm_add(o, L.ffn_post_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
