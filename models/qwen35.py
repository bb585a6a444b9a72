"""Qwen3.5 (0.8B ... 27B dense: ``qwen35``; the MoE ones: ``qwen35moe``) and Qwen3-Next (80B-A3B: ``qwen3next``), as
llama.cpp's graphs of those names: hybrids of Gated DeltaNet linear attention and gated softmax attention.

Every layer is pre-norm with a post-attention norm before its FFN, both residual::

    x = x + mixer(rms_norm(x) * attn_norm)
    x = x + ffn(rms_norm(x) * post_attention_norm)

The FFN is SwiGLU (qwen35), or a mixture of experts (softmax router, the chosen weights renormalised) beside a
shared expert scaled by ``sigmoid(ffn_gate_inp_shexp . x)`` (qwen35moe, qwen3next: ``moe.py``'s Qwen2-MoE one).
The mixer is attention in every ``full_attention_interval``-th layer (the file's ``attention.recurrent_layers``
where stated), Gated DeltaNet in the rest.

Gated attention: the Q projection gives, per head, ``head_dim`` query values then ``head_dim`` of an output gate;
Q and K are RMS-normed per head (QK-norm), rotated over their first ``rope_dim`` dimensions in neox pairs,
attend with scale ``1/sqrt(head_dim)``, and the output is multiplied by ``sigmoid(gate)`` before ``attn_output``.
Qwen3.5's rope is llama.cpp's interleaved multimodal rope (IMROPE: ``rope.dimension_sections`` assign each pair a
time, height, width or extra position).  Text's positions are ``(p, p, p, 0)``: a pair of the first three sections
turns as neox rope does at position p, a pair of the extra one not at all (:func:`imrope_tables`).  Qwen3-Next's
rope is plain neox.

Gated DeltaNet (``linear_attention``): with ``n_k_heads`` (llama.cpp's ``ssm.group_count``) key heads and
``n_v_heads`` (``ssm.time_step_rank``) value heads, all ``d_k = d_v`` (``ssm.state_size``) wide, the layer's input
gives ``qkv`` [2 n_k_heads d_k + n_v_heads d_v], ``z`` [n_v_heads d_v] and per value head ``alpha`` and ``beta``.
``qkv`` goes through a causal depthwise convolution of ``ssm.conv_kernel`` positions (no bias) and SiLU, q and k
are L2-normalised per head, each value head's state ``[d_v, d_k]`` decays by ``exp(g)``,
``g = softplus(alpha + ssm_dt.bias) * ssm_a`` (``ssm_a = -exp(A_log)``), and takes in the delta rule with strength
``sigmoid(beta)`` (``ops/cpu/deltanet.py``); the output ``S q / sqrt(d_k)`` is RMS-normed per head (``ssm_norm``),
times ``silu(z)``, and projected back (``ssm_out``).  Qwen3.5's files have ``attn_qkv``, ``attn_gate``, ``ssm_beta``
and ``ssm_alpha`` and tile the key heads over the value heads (value head h reads key head ``h % n_k_heads``);
Qwen3-Next's have ``ssm_ba`` (per key head its value heads' beta, then their alpha) and either ``ssm_in`` (per key
head its q, k, v, z: older converters) or ``attn_qkv`` and ``attn_gate``, and repeat each key head over its value
heads in place (``h // (n_v_heads / n_k_heads)``).  kvrun reorders the grouped rows to ``attn_qkv``'s layout when
it loads them.

The DeltaNet layers' state lives in the cache beside the attention layers' K/V (``cache/deltanet.py``; on the GPU
``cache/gpu_delta.py``, the kernels ``ops/gpu/delta.cu``: ``models/gpu_delta.py``).  Qwen3.5's multi-token-prediction
block (``nextn_predict_layers``) is loaded by llama.cpp for drafting only;
kvrun ignores it.
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
from ..ops.host import sigmoid
from ..ops.cpu.deltanet import gated_rms_norm
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .moe import MoE, load_moe, moe_add

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_SSM_* (ssm_a has no ".weight")
    "ssm_conv1d": "blk.{i}.ssm_conv1d.weight",
    "ssm_dt_b": "blk.{i}.ssm_dt.bias",
    "ssm_a": "blk.{i}.ssm_a",
    "ssm_beta": "blk.{i}.ssm_beta.weight",
    "ssm_alpha": "blk.{i}.ssm_alpha.weight",
    "ssm_ba": "blk.{i}.ssm_ba.weight",
    "ssm_in": "blk.{i}.ssm_in.weight",
    "ssm_norm": "blk.{i}.ssm_norm.weight",
    "ssm_out": "blk.{i}.ssm_out.weight",
})  # fmt: skip


@dataclass(frozen=True)
class DeltaNetGeometry:
    """A Gated DeltaNet layer's sizes, from the file's ``ssm.*`` hyperparameters (as llama.cpp reads them)."""

    d_conv: int
    n_k_heads: int  # (ssm.group_count)
    n_v_heads: int  # (ssm.time_step_rank)
    d_k: int  # (ssm.state_size; d_v as wide: ggml's gated_delta_net takes square states)
    d_v: int  # (ssm.inner_size / n_v_heads)

    @property
    def channels(self) -> int:  # the convolution's: q, k, v
        return 2 * self.n_k_heads * self.d_k + self.n_v_heads * self.d_v

    @property
    def d_inner(self) -> int:  # v's, z's and the output's width
        return self.n_v_heads * self.d_v

    def spec(self) -> LayerSpec:
        return LayerSpec(1, 1, 1, 1, deltanet=(self.d_conv, self.n_k_heads, self.n_v_heads, self.d_k, self.d_v))

    @classmethod
    def of(cls, cfg: ModelConfig, path: str) -> DeltaNetGeometry:
        if min(cfg.ssm_d_conv, cfg.ssm_d_inner, cfg.ssm_d_state, cfg.ssm_dt_rank, cfg.ssm_n_group) <= 0:
            raise GGUFError(f"{path}: {cfg.arch}.ssm.conv_kernel, inner_size, state_size, time_step_rank and group_count "
                            "must all be stated and > 0")  # fmt: skip
        geo = cls(cfg.ssm_d_conv, cfg.ssm_n_group, cfg.ssm_dt_rank, cfg.ssm_d_state, cfg.ssm_d_inner // cfg.ssm_dt_rank)
        if geo.d_inner != cfg.ssm_d_inner or geo.n_v_heads % geo.n_k_heads or geo.d_v != geo.d_k:
            raise GGUFError(f"{path}: ssm.inner_size {cfg.ssm_d_inner}, state_size {cfg.ssm_d_state}, time_step_rank "
                            f"{cfg.ssm_dt_rank} and group_count {cfg.ssm_n_group} do not make square heads, the value heads "
                            "a multiple of the key heads; the file is not a supported model")  # fmt: skip
        return geo


@dataclass
class DeltaNet:
    """A layer's Gated DeltaNet weights (the small ones float32 on the host, as the kernels read them)."""

    wqkv: Weight  # [channels, n_embd]: q (n_k_heads x d_k), k, v (n_v_heads x d_v) rows
    wz: Weight  # [d_inner, n_embd]: the output gate
    wbeta: Weight  # [n_v_heads, n_embd]
    walpha: Weight  # [n_v_heads, n_embd]
    conv: np.ndarray  # [d_conv, channels]: each channel's kernel, oldest position first
    conv_b: np.ndarray  # [channels]: zeros (the layer has none; the shared convolution kernel adds one)
    dt_b: np.ndarray  # [n_v_heads]
    A: np.ndarray  # [n_v_heads]: -exp(A_log), as the converter stores it
    norm: np.ndarray  # [d_v]: the gated RMSNorm's weight, one for every head
    out: Weight  # [n_embd, d_inner]
    k_of_v: np.ndarray  # [n_v_heads] int64: the key head each value head reads
    eps: float  # the L2 norms' (llama.cpp's: the RMS eps)


@dataclass
class Qwen35Layer:
    attn_norm: Any  # [n_embd]
    post_norm: Any  # [n_embd]: llama.cpp's attn_post_norm, the FFN's input norm
    dn: DeltaNet | None = None  # a Gated DeltaNet layer, or the gated attention's weights below
    wq: Weight | None = None  # [n_head * 2 * head_dim, n_embd]: per head its query then its gate
    wk: Weight | None = None
    wv: Weight | None = None
    wo: Weight | None = None
    q_norm: Any = None  # [head_dim]
    k_norm: Any = None
    w_gate: Weight | None = None  # a dense FFN (qwen35), or None: the mixture of experts below
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None


def imrope_tables(cos: np.ndarray, sin: np.ndarray, sections: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Neox rope tables ``[n_pos, n_rot/2]`` made llama.cpp's interleaved multimodal rope's for text: pair ``i``'s
    sector is ``i % sum(sections)``; sectors ``3j``, ``3j+1``, ``3j+2`` below 3 x their section (time, height, width)
    turn with the text position, the rest (the extra section's) with position 0, i.e. not at all (ggml's
    ``ggml_mrope_cache_init``, ``is_imrope``)."""
    t, h, w = sections[:3]
    n = sum(sections)
    cos, sin = cos.copy(), sin.copy()
    for i in range(cos.shape[1]):
        s = i % n
        turns = (s % 3 == 0 and s < 3 * t) or (s % 3 == 1 and s < 3 * h) or (s % 3 == 2 and s < 3 * w)
        if not turns:
            cos[:, i], sin[:, i] = 1.0, 0.0
    return cos, sin


class Qwen35Model(Model):
    archs = ("qwen35", "qwen35moe", "qwen3next")

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if len(cfg.ssm_layers) != cfg.n_layer:
            raise GGUFError(f"{g.path}: {cfg.arch}.attention.recurrent_layers has {len(cfg.ssm_layers)} entries for {cfg.n_layer} layers")
        if cfg.arch != "qwen35" and cfg.n_expert <= 0:
            raise GGUFError(f"{g.path}: {cfg.arch} states no experts (expert_count)")
        self.geo = DeltaNetGeometry.of(cfg, g.path)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        cos, sin = make_rope(cfg, n_ctx, cfg.rope_theta)
        sections = g.arch_get("rope.dimension_sections")
        if cfg.arch in ("qwen35", "qwen35moe") and sections is not None and sum(int(s) for s in sections) > 0:
            cos, sin = imrope_tables(cos, sin, [int(s) for s in sections] + [0] * (4 - len(sections)))
        self.rope_cos, self.rope_sin = cos, sin

    def load_layer(self, w: WeightLoader, i: int) -> Qwen35Layer:
        c = self.cfg
        L = Qwen35Layer(attn_norm=w.vector("attn_norm", i), post_norm=w.vector("attn_post_norm", i))
        if c.ssm_layers[i]:
            L.dn = self.load_deltanet(w, i)
        else:
            L.wq, L.wk, L.wv, bq, _, _ = w.qkv(i, (c.n_head * 2 * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))
            if bq is not None:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i} has QKV biases, which {c.arch} does not")
            L.wo = w.matrix("wo", i)
            L.q_norm, L.k_norm = w.vector("q_norm", i), w.vector("k_norm", i)
        if c.arch == "qwen35":
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
        else:
            if w.g.tensors.get(f"blk.{i}.ffn_gate_up_exps.weight") is not None:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, shared="gated")
        return L

    def load_deltanet(self, w: WeightLoader, i: int) -> DeltaNet:
        geo, path, n_embd = self.geo, w.g.path, self.cfg.n_embd
        nk, nv, dk, dv = geo.n_k_heads, geo.n_v_heads, geo.d_k, geo.d_v
        r = nv // nk

        def host(role: str, n: int) -> np.ndarray:
            v = w.host_vector(role, i)
            if v.size != n:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
            return v

        def rows(role: str, order: np.ndarray, n_rows: int) -> Weight:
            """Rows ``order`` of a matrix of ``n_rows`` (a copy of them: Qwen3-Next's grouped projections)."""
            w.matrix(role, i)  # (its checks: presence and type)
            t = w.g.tensors[TENSOR_NAMES[role].format(i=i)]
            if t.n_elements // t.shape[-1] != n_rows:
                raise GGUFError(f"{path}: {t.name} has shape {t.shape}, expected {n_rows} rows; the file is not a supported model")
            return w._upload(t, np.ascontiguousarray(t.rows()[order]), order.size)

        if self.cfg.arch == "qwen3next":
            # per key head: beta of its r value heads, then their alpha
            ba = np.arange(2 * nv).reshape(nk, 2, r)
            wbeta, walpha = rows("ssm_ba", ba[:, 0].reshape(-1), 2 * nv), rows("ssm_ba", ba[:, 1].reshape(-1), 2 * nv)
            if w.has("ssm_in", i):  # (older converters) per key head: its q, k, then its r value heads' v, then their z
                grp = np.arange(nk * (2 * dk + 2 * r * dv)).reshape(nk, -1)
                q, k = grp[:, :dk], grp[:, dk : 2 * dk]
                v, z = grp[:, 2 * dk : 2 * dk + r * dv], grp[:, 2 * dk + r * dv :]
                wqkv = rows("ssm_in", np.concatenate([q.reshape(-1), k.reshape(-1), v.reshape(-1)]), grp.size)
                wz = rows("ssm_in", z.reshape(-1), grp.size)
            else:
                wqkv, wz = w.matrix("wqkv", i), w.matrix("attn_gate", i)
            k_of_v = np.arange(nv, dtype=np.int64) // r  # (llama.cpp repeats each key head in place)
        else:
            wqkv, wz = w.matrix("wqkv", i), w.matrix("attn_gate", i)
            wbeta, walpha = w.matrix("ssm_beta", i), w.matrix("ssm_alpha", i)
            k_of_v = np.arange(nv, dtype=np.int64) % nk  # (the converter ordered the value heads so the key heads tile)
        out = w.matrix("ssm_out", i)
        for m, shape, role in ((wqkv, (geo.channels, n_embd), "attn_qkv"), (wz, (geo.d_inner, n_embd), "attn_gate"),
                               (wbeta, (nv, n_embd), "ssm_beta"), (walpha, (nv, n_embd), "ssm_alpha"),
                               (out, (n_embd, geo.d_inner), "ssm_out")):  # fmt: skip
            if tuple(m.shape) != shape:
                raise GGUFError(f"{path}: blk.{i}.{role} has shape {tuple(m.shape)}, expected {shape}; the file is not a supported model")
        conv = host("ssm_conv1d", geo.channels * geo.d_conv).reshape(geo.channels, geo.d_conv)
        return DeltaNet(
            wqkv=wqkv, wz=wz, wbeta=wbeta, walpha=walpha,
            conv=np.ascontiguousarray(conv.T), conv_b=np.zeros(geo.channels, np.float32),
            dt_b=host("ssm_dt_b", nv), A=host("ssm_a", nv), norm=host("ssm_norm", dv), out=out,
            k_of_v=k_of_v, eps=float(self.cfg.norm_eps),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim, 0, c.attention_scale or 1.0 / np.sqrt(c.head_dim))
        return [self.geo.spec() if dn else attn for dn in c.ssm_layers]

    def deltanet_y(self, D: DeltaNet, state: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The Gated DeltaNet's output before ``ssm_out`` for the normed input ``xn`` [T, n_embd]: gated and normed
        ``y`` [T, d_inner] (a buffer).  ``state``: the layer's cache (cache/deltanet.py), which runs the convolution
        and the delta rule and keeps what they leave."""
        if self.be.name == "gpu":  # (the same steps as kernels, the state in the GPU cache: models/gpu_delta.py)
            from .gpu_delta import deltanet_y

            return deltanet_y(self, D, state, xn, pos)
        be, buf, geo = self.be, self.buf, self.geo
        T, nv = xn.shape[0], geo.n_v_heads
        qkv, z = buf.get("dn_qkv", T, geo.channels), buf.get("dn_z", T, geo.d_inner)
        beta, alpha = buf.get("dn_beta", T, nv), buf.get("dn_alpha", T, nv)
        be.linear_many((D.wqkv, D.wz, D.wbeta, D.walpha), xn, (qkv, z, beta, alpha))
        gb = buf.get("dn_gb", T, 2 * nv)  # each head's decay log g, then its write strength beta (what the cache keeps)
        gb[:, :nv] = np.logaddexp(np.float32(0.0), alpha + D.dt_b) * D.A  # (softplus)
        gb[:, nv:] = sigmoid(beta)
        y = buf.get("dn_y", T, geo.d_inner)
        state.scan(qkv, gb, pos, D, y)
        gated_rms_norm(y, z, D.norm, self.cfg.norm_eps)
        return y

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, hd = len(tokens), c.head_dim
        if be.name == "gpu":
            from ..ops.gpu import delta as gpu_gate
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            if L.dn is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                y = self.deltanet_y(L.dn, cache[il], xn, pos)
                be.linear_add(L.dn.out, y, x)
            else:
                qg = buf.get("qg", T, c.n_head * 2 * hd)
                k, v = buf.get("k", T, c.n_head_kv * hd), buf.get("v", T, c.n_head_kv * hd)
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (qg, k, v))
                qg3 = qg.reshape(T, c.n_head, 2 * hd)
                q3 = buf.get("q", T, c.n_head * hd).reshape(T, c.n_head, hd)
                if be.name == "gpu":  # (a kernel, not a slice: a decode step is captured)
                    gpu_gate.query(qg3, q3)
                else:
                    q3[...] = qg3[:, :, :hd]  # (each head's query; its gate stays in qg)
                k3, v3 = k.reshape(T, c.n_head_kv, hd), v.reshape(T, c.n_head_kv, hd)
                be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                att = buf.get("att", T, c.n_head * hd)
                att3 = att.reshape(T, c.n_head, hd)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
                if be.name == "gpu":
                    gpu_gate.sigmoid_gate(qg3, att3)
                else:
                    att3 *= sigmoid(qg3[:, :, hd:])
                be.linear_add(L.wo, att, x)
            self.trace("attn_out", il, x)
            if L.moe is not None:
                be.rms_norm(x, L.post_norm, c.norm_eps, xn)
                moe_add(be, L.moe, xn, x, buf)
            else:
                gate, up = buf.get("gate", T, c.n_ff), buf.get("up", T, c.n_ff)
                be.norm_linear_many(x, L.post_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
                be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
