"""Kimi Linear (Moonshot's Kimi-Linear-48B-A3B: ``kimi-linear``), as llama.cpp's graph of that name: Kimi Delta
Attention (KDA) layers among multi-head latent attention (MLA) layers, a mixture of experts after a leading dense layer.

Every layer is DeepSeek-V2's pre-norm block (``deepseek2.py``)::

    x = x + mixer(rms_norm(x) * attn_norm)
    x = x + ffn(rms_norm(x) * ffn_norm)

The mixer is MLA where the file's per-layer ``attention.head_count_kv`` is above 0 (Kimi's every 4th layer), KDA where it
is 0.  The FFN: the first ``leading_dense_block_count`` layers dense SwiGLU, the others sigmoid-routed experts chosen with
``exp_probs_b``, their weights always renormalised (llama.cpp fixes it) and times ``expert_weights_scale`` (2.446), beside a
shared expert every token runs (``moe.py``).

MLA is DeepSeek's (``deepseek2.py``: the latent decompressed into every head's K and V, the split ``attn_k_b``/``attn_v_b``
or the older ``attn_kv_b``, a query LoRA where ``q_lora_rank`` says) with no rope at all: each head's query is
``[q_nope, q_pe]`` as ``attn_q`` gives it and its key ``[k_nope, k_pe]`` with ``k_pe`` the latent's shared ``n_rot``
values as ``attn_kv_a_mqa`` gives them, unturned (vLLM's Kimi MLA has ``rotary_emb=None``); scores times
``1/sqrt(key_length_mla)``.

KDA (``n_head`` heads of ``kda.head_dim``, as many key heads as value heads) differs from Qwen3.5's Gated DeltaNet
(``qwen35.py``) in four places:

* q, k and v come from ``attn_q``, ``attn_k``, ``attn_v``, each through a short causal convolution of its own
  (``ssm_conv1d_q/k/v``, ``ssm.conv_kernel`` positions, SiLU after), run here as one over the three side by side;
* the decay is per key channel, not per head: ``g = softplus(f_b(f_a(x)) + ssm_dt.bias) * ssm_a[head]`` with
  ``ssm_f_a`` -> ``ssm_f_b`` a low-rank projection to ``n_head * head_dim`` values (``ops/cpu/kda.py``);
* beta is ``sigmoid(ssm_beta x)`` per head, q and k L2-normed, the output ``S q / sqrt(head_dim)`` as there;
* the output gate is low-rank too, ``g2 = ssm_g_b(ssm_g_a(x))``, and a sigmoid, not SiLU:
  ``attn_output(rms_norm(y) * ssm_norm * sigmoid(g2))`` per head.

The KDA state lives in the cache as Qwen3.5's (``cache/deltanet.py``, its per-channel decay; on the GPU
``cache/gpu_delta.py`` and ``ops/gpu/delta.cu``: ``models/gpu_delta.py``).  Refused in
one line: ``attn_gate`` (a full-rank gate in place of ``ssm_g_a``/``ssm_g_b``, or on the MLA output), attention residuals
(``attn_res_block_size``), latent experts (``moe_latent_size``), fused gate-and-up experts, activations other than SiLU.
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
from .common import WeightLoader
from .deepseek2 import Deepseek2Model
from .moe import MoE, load_moe
from .qwen35 import TENSOR_NAMES  # (with Qwen3.5's roles: ssm_a, ssm_dt_b, ssm_beta, ssm_norm)

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_SSM_CONV1D_Q/K/V, _SSM_F_A/B, _SSM_G_A/B (ssm_a, ssm_dt.bias, ssm_beta,
    # ssm_norm: qwen35.py's; attn_gate: common.py's)
    "ssm_conv1d_q": "blk.{i}.ssm_conv1d_q.weight",
    "ssm_conv1d_k": "blk.{i}.ssm_conv1d_k.weight",
    "ssm_conv1d_v": "blk.{i}.ssm_conv1d_v.weight",
    "ssm_f_a": "blk.{i}.ssm_f_a.weight",
    "ssm_f_b": "blk.{i}.ssm_f_b.weight",
    "ssm_g_a": "blk.{i}.ssm_g_a.weight",
    "ssm_g_b": "blk.{i}.ssm_g_b.weight",
    "ssm_g": "blk.{i}.ssm_g.weight",  # (Kimi K3's full-rank output gate)
})  # fmt: skip


@dataclass
class KDA:
    """A layer's Kimi Delta Attention weights (the small ones float32 on the host, as the cache's kernels read them)."""

    wq: Weight  # [n_head * head_dim, n_embd]
    wk: Weight
    wv: Weight
    conv: np.ndarray  # [d_conv, 3 * d_inner]: q's, k's and v's kernels side by side, oldest position first
    conv_b: np.ndarray  # [3 * d_inner]: zeros (the convolutions have none)
    f_a: Weight  # [head_dim, n_embd]: the decay's low rank (Ling 3's: [d_inner, n_embd], full rank)
    f_b: Weight | None  # [d_inner, head_dim] (None: f_a is full rank, bailingmoe3.py)
    dt_b: np.ndarray  # [d_inner]: per channel
    A: np.ndarray  # [n_head]: -exp(A_log), as the converter stores it
    wbeta: Weight  # [n_head, n_embd]
    g_a: Weight  # [head_dim, n_embd]: the output gate's low rank (Ling 3's: [d_inner, n_embd], full rank)
    g_b: Weight | None  # [d_inner, head_dim] (None: g_a is full rank)
    norm: np.ndarray  # [head_dim]: the output norm's weight, every head's
    wo: Weight  # [n_embd, d_inner]
    k_of_v: np.ndarray  # [n_head] int64: head h reads key head h
    eps: float  # the L2 norms' (llama.cpp's: the RMS eps)
    lower_bound: float = 0.0  # < 0: Ling 3's safe gate, decay log = lower_bound * sigmoid(A * (f + dt_b)), A = exp(A_log)


@dataclass
class KDALayer:
    attn_norm: Any  # [n_embd]
    kda: KDA
    ffn_norm: Any  # [n_embd]
    w_gate: Weight | None = None  # a leading dense layer's SwiGLU FFN
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None  # the others' experts (with the shared one)


class KimiLinearModel(Deepseek2Model):
    archs = ("kimi-linear",)
    ROPE_ABSENCE = "Kimi's MLA: the KDA layers' convolutions carry position"  # (rope.dimension_count sizes the keys' shared part)
    #: Ling 3's (bailingmoe3.py) differences that this class's loading takes as parameters: an MLA output gate
    #: ``attn_gate`` (which the subclass reads), a head tied to ``token_embd``
    GATED_MLA = False
    TIED_OUTPUT = False
    #: Kimi K3's (kimi_k3.py) KDA output gate: one full-rank ``ssm_g`` beside the low-rank decay
    FULL_KDA_GATE = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in ("attn_res_block_size", "moe_latent_size"):
            if int(g.arch_get(key, 0) or 0) > 0:
                raise UnsupportedModelError(f"{g.path}: {cfg.arch} with {key} {g.arch_get(key)} is not supported yet")
        act = str(g.arch_get("hidden_act", "silu") or "silu")
        if act not in ("silu", "swiglu"):
            raise UnsupportedModelError(f"{g.path}: {cfg.arch} with hidden_act {act!r} is not supported (silu is)")
        if g.arch_get("expert_gating_func") is None:
            raise GGUFError(f"{g.path}: metadata {cfg.arch}.expert_gating_func is missing; the file is not a complete model")
        if len(cfg.ssm_layers) != cfg.n_layer or not any(cfg.ssm_layers):
            raise GGUFError(f"{g.path}: {cfg.arch}.attention.head_count_kv must be a list of {cfg.n_layer} (0 for the KDA layers)")
        self.head_dim_kda = int(g.arch_get("kda.head_dim", 0) or 0)
        if self.head_dim_kda <= 0 or cfg.ssm_d_conv <= 0:
            raise GGUFError(f"{g.path}: metadata {cfg.arch}.kda.head_dim and ssm.conv_kernel must be stated and > 0")
        if "output.weight" not in g.tensors and not self.TIED_OUTPUT:  # (llama.cpp requires it: no tied head)
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (deepseek2's checks, then load_layer below for every layer)
        self.rope_cos = self.rope_sin = None  # (Kimi's MLA turns nothing)

    def load_layer(self, w: WeightLoader, i: int) -> Any:
        c = self.cfg
        if w.has("attn_gate", i) and (c.ssm_layers[i] or not self.GATED_MLA):
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.attn_gate (a full-rank output gate) is not supported yet")
        if w.g.tensors.get(f"blk.{i}.ffn_gate_up_exps.weight") is not None:
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
        if not c.ssm_layers[i]:
            L = super().load_layer(w, i)  # MLA and its FFN, as deepseek2's
        else:
            L = KDALayer(attn_norm=w.vector("attn_norm", i), kda=self.load_kda(w, i), ffn_norm=w.vector("ffn_norm", i))
            if i < self.n_dense_lead:
                self.load_dense_ffn(w, i, L)
            else:
                if c.n_expert <= 0:
                    raise GGUFError(f"{w.g.path}: blk.{i} is past leading_dense_block_count {self.n_dense_lead} but the file states no experts")
                L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, gating=self.gating, shared="plain")
                L.moe.weights_scale = self.weights_scale
                L.moe.n_group, L.moe.n_group_used = self.groups
        if L.moe is not None:
            if L.moe.bias is None:
                raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.exp_probs_b.bias' is missing; the file is incomplete or not a supported model")
            L.moe.norm_weights = True  # (llama.cpp renormalises Kimi's chosen weights whatever the file says)
        return L

    def load_kda(self, w: WeightLoader, i: int, low_rank: bool = True) -> KDA:
        """Layer i's KDA weights (``low_rank`` False: Ling 3's full-rank ``ssm_f_a`` and ``ssm_g_a``, no ``_b``)."""
        path, n_embd, H, hd, d_conv = w.g.path, self.cfg.n_embd, self.cfg.n_head, self.head_dim_kda, self.cfg.ssm_d_conv
        d = H * hd
        r = hd if low_rank else d

        def host(role: str, n: int) -> np.ndarray:
            v = w.host_vector(role, i)
            if v.size != n:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
            return v

        def mat(role: str, shape: tuple[int, int]) -> Weight:
            m = w.matrix(role, i)
            if tuple(m.shape) != shape:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return m

        # each channel's kernel, oldest position first ([d_inner, d_conv] in the file), q's, k's, v's side by side
        conv = np.concatenate([host(f"ssm_conv1d_{c}", d * d_conv).reshape(d, d_conv) for c in "qkv"])
        return KDA(
            wq=mat("wq", (d, n_embd)), wk=mat("wk", (d, n_embd)), wv=mat("wv", (d, n_embd)),
            conv=np.ascontiguousarray(conv.T), conv_b=np.zeros(3 * d, np.float32),
            f_a=mat("ssm_f_a", (r, n_embd)), f_b=mat("ssm_f_b", (d, hd)) if low_rank else None, dt_b=host("ssm_dt_b", d), A=host("ssm_a", H),
            wbeta=mat("ssm_beta", (H, n_embd)),
            g_a=mat("ssm_g", (d, n_embd)) if self.FULL_KDA_GATE else mat("ssm_g_a", (r, n_embd)),
            g_b=mat("ssm_g_b", (d, hd)) if low_rank and not self.FULL_KDA_GATE else None,
            norm=host("ssm_norm", hd), wo=mat("wo", (n_embd, d)),
            k_of_v=np.arange(H, dtype=np.int64), eps=float(self.cfg.norm_eps),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c, hd = self.cfg, self.head_dim_kda
        kda = LayerSpec(1, 1, 1, 1, deltanet=(c.ssm_d_conv, c.n_head, c.n_head, hd, hd, 1))  # (1: the decay per key channel)
        mla = LayerSpec(c.n_head, c.n_head, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim))
        return [kda if s else mla for s in c.ssm_layers]

    def kda_y(self, K: KDA, state: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The KDA's output before ``attn_output`` for the normed input ``xn`` [T, n_embd]: gated and normed ``y``
        [T, n_head * head_dim] (a buffer).  ``state``: the layer's cache, which runs the convolutions and the delta rule."""
        if self.be.name == "gpu":  # (the same steps as kernels, the state in the GPU cache: models/gpu_delta.py)
            from .gpu_delta import kda_y

            return kda_y(self, K, state, xn, pos)
        be, buf, H, hd = self.be, self.buf, self.cfg.n_head, self.head_dim_kda
        T, d = xn.shape[0], H * hd
        q, k, v = buf.get("kda_q", T, d), buf.get("kda_k", T, d), buf.get("kda_v", T, d)
        fa, ga, beta = buf.get("kda_fa", T, K.f_a.shape[0]), buf.get("kda_ga", T, K.g_a.shape[0]), buf.get("kda_beta", T, H)
        be.linear_many((K.wq, K.wk, K.wv, K.f_a, K.g_a, K.wbeta), xn, (q, k, v, fa, ga, beta))
        qkv = np.concatenate([q, k, v], axis=1)  # (the three convolutions as one: each channel is its own)
        g = buf.get("kda_g", T, d) if K.f_b is not None else fa  # (Ling's: full rank)
        g2 = buf.get("kda_g2", T, d) if K.g_b is not None else ga  # (Ling's and K3's: full rank)
        if K.f_b is not None:
            be.linear_many((K.f_b,), fa, (g,))
        if K.g_b is not None:
            be.linear_many((K.g_b,), ga, (g2,))
        gb = buf.get("kda_gb", T, d + H)  # every channel's decay log, then each head's write strength (what the cache keeps)
        if K.lower_bound < 0.0:  # (Ling 3's safe gate: the log bounded below by lower_bound)
            gb[:, :d] = (sigmoid((g + K.dt_b).reshape(T, H, hd) * K.A[:, None]) * np.float32(K.lower_bound)).reshape(T, d)
        else:
            gb[:, :d] = (np.logaddexp(np.float32(0.0), g + K.dt_b).reshape(T, H, hd) * K.A[:, None]).reshape(T, d)  # (softplus)
        gb[:, d:] = sigmoid(beta)
        y = buf.get("kda_y", T, d)
        state.scan(qkv, gb, pos, K, y)
        y3 = y.reshape(T, H, hd)  # RMS-normed per head, times ssm_norm and the sigmoid gate
        inv = 1.0 / np.sqrt(np.mean(y3 * y3, axis=2, keepdims=True) + np.float32(self.cfg.norm_eps))
        y3 *= inv * K.norm * sigmoid(g2.reshape(T, H, hd))
        return y

    def mla_attend(self, L: Any, lc: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """MLA's attention output [T, n_head * head_dim_v] (before ``attn_output``): deepseek2's without the rope."""
        if self.be.name == "gpu":  # (kernels, not slices: a decode step is captured)
            from .gpu_delta import kimi_mla_attend

            return kimi_mla_attend(self, L, lc, xn, pos)
        c, be, buf = self.cfg, self.be, self.buf
        T, H, D, Dv, R, nope, rank = xn.shape[0], c.n_head, c.head_dim, c.head_dim_v, self.n_rot, self.qk_nope, self.kv_rank
        q, kva, kvc = buf.get("q", T, H * D), buf.get("kv_a", T, rank + R), buf.get("kv_c", T, rank)
        k_nope, k, v, att = buf.get("k_nope", T, H * nope), buf.get("k", T, H * D), buf.get("v", T, H * Dv), buf.get("att", T, H * Dv)
        if L.wq is not None:
            be.linear(L.wq, xn, q)
        else:
            qa = buf.get("q_a", T, L.wq_a.shape[0])
            be.linear(L.wq_a, xn, qa)
            be.rms_norm(qa, L.q_a_norm, c.norm_eps, qa)
            be.linear(L.wq_b, qa, q)
        be.linear(L.wkv_a, xn, kva)
        kvc[...] = kva[:, :rank]
        be.rms_norm(kvc, L.kv_a_norm, c.norm_eps, kvc)
        be.linear_many((L.wk_nope, L.wv), kvc, (k_nope, v))
        k3 = k.reshape(T, H, D)  # [k_nope, k_pe] as the queries' [q_nope, q_pe]: k_pe every head's, unturned
        k3[:, :, :nope] = k_nope.reshape(T, H, nope)
        k3[:, :, nope:] = kva[:, None, rank:]
        lc.update_and_attend(q.reshape(T, H, D), k3, v.reshape(T, H, Dv), pos, att.reshape(T, H, Dv))
        return att

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        if self.input_embd is not None:  # a picture's rows (Ling-3-VL's: bailingmoe3.py takes images), attended causally
            x[...] = be.vector(self.input_embd)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            if isinstance(L, KDALayer):
                be.linear_add(L.kda.wo, self.kda_y(L.kda, cache[il], xn, pos), x)
            else:
                be.linear_add(L.wo, self.mla_attend(L, cache[il], xn, pos), x)
            self.trace("attn_out", il, x)
            self.add_ffn(L, x, xn, None)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
