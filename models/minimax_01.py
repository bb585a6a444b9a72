"""MiniMax-Text-01 and MiniMax-M1 (456B-A46B: ``minimax-01``), as llama.cpp's graph of that name: *lightning attention*
(linear attention with a fixed decay per head) in most layers, softmax attention in every ``full_attention_interval``-th
(8 unstated; the file's ``attention.recurrent_layers`` array where stated), a mixture of experts in every layer.

Every layer's residual is its *normed* input (MiniMax's ``postnorm``), scaled by the file's ``residual_scale``
(``alpha``, the checkpoint's ``layernorm_*_alpha``)::

    h = rms_norm(x) * attn_norm;    u = mixer(h) + alpha * h
    h2 = rms_norm(u) * ffn_norm;    x = moe(h2) + alpha * h2

The softmax layers: Llama's attention (``attn_q``/``attn_k``/``attn_v`` or a fused ``attn_qkv``, biases where the file
has them), partial neox rope (``rope.dimension_count`` of each head's dimensions), scores times ``1/sqrt(head_dim)``.

A lightning layer (``n_head`` heads of ``head_dim``): ``silu(attn_qkv h)``, each head's ``q, k, v`` side by side, then per
head a state ``S`` [head_dim, head_dim] carried from token to token::

    S_t = exp(-s) S_(t-1) + k_t^T v_t;    o_t = q_t S_t          (no 1/sqrt(d), no normalisation of q or k)

with ``s = slope[h] * (1 - il / (n_layer - 1) + 1e-5)``, ``slope`` ALiBi's (``2^(-8 / n_head)`` to the powers 1..n_head,
as llama.cpp computes it, for any head count); then ``attn_output(sigmoid(attn_gate h) * rms_norm(o) * attn_norm_2)``,
the norm over all heads at once.  llama.cpp runs it block-wise (a batch's tokens in one product with their decays);
the recurrence above is the same sum.  It is exactly Mamba-2's scan (``cache/ssm.py``, ``ops/cpu/ssm.py``) with one
group per head (``B`` = k, ``C`` = q, ``x`` = v, ``d_state`` = head_dim), ``dt`` = 1 and ``A`` = -s, ``D`` = 0, and a
"convolution" of one position with weight 1 and no bias, whose SiLU is lightning's: so the state lives in the Mamba-2
caches, going back and replaying as theirs, on the CPU and the GPU (``cache/gpu_ssm.py``).  ``attn_qkv``'s rows are
reordered at load to the scan's ``v, k, q`` (all heads each) and widened by ``n_head`` zero rows, the ``dt`` columns the
scan reads, to which ``dt_b = log(e - 1)`` adds the softplus that makes 1.

The experts: softmax routing, the chosen weights always renormalised (llama.cpp's graph fixes both), each expert
``feed_forward_length`` wide; no selection bias, no shared expert, no weight scale (llama.cpp reads none for it).  An
output head of its own where the file has ``output.weight``, else the token embeddings.  Refused in one line: experts
without ``ffn_gate_exps`` (llama.cpp would run ``silu(up)`` alone), a lightning layer in a model of one layer (its decay
is 0/0 in llama.cpp).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .afmoe import _sigmoid
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import MoE, check_expert_counts, expert_groups, load_moe, moe_add

TENSOR_NAMES.update({"attn_norm_2": "blk.{i}.attn_norm_2.weight"})  # (llama.cpp's LLM_TENSOR_ATTN_NORM_2)

#: softplus(DT_ONE) = 1: the scan's dt (its raw columns zero), each step's decay exp(A) and write k^T v unscaled
DT_ONE = math.log(math.e - 1.0)


def alibi_slopes(n_head: int) -> np.ndarray:
    """Each head's decay rate before the layer's scale, in float32 as llama.cpp's ``llm_graph_input_la``:
    ``start = 2^(-2^(-(log2(n_head) - 3)))``, head h's ``start^(h + 1)``."""
    f = np.float32
    start = f(2.0) ** -(f(2.0) ** -(np.log2(f(n_head)) - f(3.0)))
    return np.array([start * start ** f(h) for h in range(n_head)], np.float32)


@dataclass
class Lightning:
    """A lightning layer's weights, the scan's in Mamba-2's form (``w`` of cache/ssm.py's and cache/gpu_ssm.py's scans)."""

    in_proj: Weight  # [3 * n_head * head_dim + n_head, n_embd]: attn_qkv's rows as v, k, q (all heads each), then zeros
    gate: Weight  # [n_head * head_dim, n_embd]: attn_gate
    norm: Any  # [n_head * head_dim]: attn_norm_2
    wo: Weight  # [n_embd, n_head * head_dim]
    conv: np.ndarray  # [1, 3 * n_head * head_dim]: ones (a convolution of one position: its SiLU alone)
    conv_b: np.ndarray  # zeros
    dt_b: np.ndarray  # [n_head]: DT_ONE
    A: np.ndarray  # [n_head]: -slope * the layer's scale
    D: np.ndarray  # [n_head]: zeros


@dataclass
class LightningLayer:
    attn_norm: Any  # [n_embd]
    la: Lightning
    ffn_norm: Any  # [n_embd]
    moe: MoE


class MiniMax01Model(LlamaModel):
    archs = ("minimax-01",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if g.arch_get("residual_scale") is None:  # (llama.cpp requires it)
            raise GGUFError(f"{g.path}: metadata minimax-01.residual_scale is missing; the file is not a complete model")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if any(cfg.ssm_layers) and cfg.n_layer < 2:
            raise UnsupportedModelError(f"{g.path}: minimax-01 of one layer with lightning attention is not supported (no decay)")
        self.groups = expert_groups(g, cfg.n_expert)
        self.slopes = alibi_slopes(cfg.n_head)
        # (llama.cpp sizes the experts by feed_forward_length; expert_feed_forward_length is not read)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=cfg.n_ff), backend, n_ctx, n_batch)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> None:
        return None  # (llama.cpp's graph rotates without rope_freqs)

    def is_lightning(self, il: int) -> bool:
        return bool(self.cfg.ssm_layers) and self.cfg.ssm_layers[il]

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer | LightningLayer:
        c = self.cfg
        attn_norm, moe, ffn_norm = w.vector("attn_norm", i), self.load_experts(w, i), w.vector("ffn_norm", i)
        if self.is_lightning(i):
            return LightningLayer(attn_norm=attn_norm, la=self.load_lightning(w, i), ffn_norm=ffn_norm, moe=moe)
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return LlamaLayer(attn_norm=attn_norm, wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv, q_norm=None,
                          k_norm=None, ffn_norm=ffn_norm, w_gate=None, w_up=None, w_down=None, moe=moe)  # fmt: skip

    def load_experts(self, w: WeightLoader, i: int) -> MoE:
        """Layer i's experts, routed as llama.cpp's graph fixes: softmax, renormalised, nothing more."""
        c = self.cfg
        w.matrix("ffn_gate_inp", i)  # (every layer routes: a one-line error naming it where it is missing)
        if not w.has("ffn_gate_exps", i):
            raise UnsupportedModelError(f"{w.g.path}: blk.{i} has experts without ffn_gate_exps (silu(up) alone); not supported yet")
        moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, gating="softmax")
        moe.bias, moe.shared = None, None  # (llama.cpp's graph reads neither)
        moe.n_group, moe.n_group_used = self.groups
        return moe

    def load_lightning(self, w: WeightLoader, i: int) -> Lightning:
        c = self.cfg
        H, hd, n_embd = c.n_head, c.head_dim, c.n_embd
        d = H * hd
        t = w._info("wqkv", i, True)
        if tuple(t.shape) != (3 * d, n_embd):
            raise GGUFError(f"{w.g.path}: {t.name} has shape {tuple(t.shape)}, expected {(3 * d, n_embd)}; the file is not a supported model")
        per_head = np.arange(3 * d).reshape(H, 3, hd)  # the file's rows: head by head, its q, k, v
        order = np.concatenate([per_head[:, 2].ravel(), per_head[:, 1].ravel(), per_head[:, 0].ravel()])
        rows = t.rows()
        # (zero bytes are zero weights in every block format: a block's scale 0, or floats 0)
        in_proj = w._upload(t, np.concatenate([rows[order], np.zeros((H, rows.shape[1]), np.uint8)]), 3 * d + H)

        def mat(role: str, shape: tuple[int, int]) -> Weight:
            m = w.matrix(role, i)
            if tuple(m.shape) != shape:
                raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return m

        norm = w.host_vector("attn_norm_2", i)
        if norm.size != d:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_norm_2.weight has {norm.size} values, expected {d}; the file is not a supported model")
        scale = np.float32(1.0 - 1.0 * i / (c.n_layer - 1) + 1e-5)  # (llama.cpp's slope_scale: double, then a float)
        return Lightning(
            in_proj=in_proj, gate=mat("attn_gate", (d, n_embd)), norm=w.be.vector(norm), wo=mat("wo", (n_embd, d)),
            conv=np.ones((1, 3 * d), np.float32), conv_b=np.zeros(3 * d, np.float32), dt_b=np.full(H, DT_ONE, np.float32),
            A=-(self.slopes * scale), D=np.zeros(H, np.float32),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim))
        lightning = LayerSpec(1, 1, 1, 1, ssm=(1, c.n_head, c.head_dim, c.n_head, c.head_dim))  # (d_conv, heads, head_dim, groups, d_state)
        return [lightning if self.is_lightning(il) else attn for il in range(c.n_layer)]

    def lightning(self, la: Lightning, state: Any, xn: Any, pos: np.ndarray) -> Any:
        """A lightning layer's output before ``attn_output`` for its normed input ``xn`` [T, n_embd]: gated and normed
        ``o`` [T, n_head * head_dim] (a buffer).  ``state``: the layer's Mamba-2 cache, which runs the SiLU and the scan."""
        be, buf, c = self.be, self.buf, self.cfg
        T, d = xn.shape[0], c.n_head * c.head_dim
        vkq, g = buf.get("la_in", T, 3 * d + c.n_head), buf.get("la_gate", T, d)
        be.linear_many((la.in_proj, la.gate), xn, (vkq, g))
        y, yn = buf.get("la_y", T, d), buf.get("la_yn", T, d)
        if be.name == "gpu":  # (the scan reads its columns of the rows in place)
            state.scan_rows(vkq, 0, 3 * d, pos, la, y)
        else:
            state.scan(vkq[:, : 3 * d], vkq[:, 3 * d :], pos, la, y)
        be.rms_norm(y, la.norm, c.norm_eps, yn)  # (over all heads at once)
        if be.name == "cpu":
            yn *= _sigmoid(g)
        else:  # (a kernel: a captured decode step brings nothing to the host)
            be.sigmoid_mul(yn, g)
        return yn

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        u = buf.get("o", T, c.n_embd)  # the FFN's input
        alpha = c.residual_scale
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)  # (the layer's residual: this normed stream, not x)
            if isinstance(L, LightningLayer):
                be.linear(L.la.wo, self.lightning(L.la, cache[il], xn, pos), u)
            else:
                be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
                be.linear(L.wo, att, u)
            self.trace("attn_out", il, u)
            be.scale(xn, alpha)
            be.add(u, xn)
            be.rms_norm(u, L.ffn_norm, c.norm_eps, xn)
            moe_add(be, L.moe, xn, x, buf, accumulate=False)
            be.scale(xn, alpha)
            be.add(x, xn)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
