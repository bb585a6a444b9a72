"""DeepSeek-V2 (V2-Lite, V2, V2.5), DeepSeek-V3-style models and others converted to llama.cpp's ``deepseek2``
(Moonlight, GigaChat3...): multi-head latent attention (MLA) and a mixture of experts with shared experts.

As llama.cpp's DEEPSEEK2 graph, each layer: RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual; a
separate or tied output head.

Attention (MLA).  The queries come from ``attn_q`` (V2-Lite: no query LoRA, ``q_lora_rank`` 0) or from the
low-rank ``attn_q_a`` -> RMSNorm ``attn_q_a_norm`` -> ``attn_q_b``; each head's query is ``[q_nope, q_rope]``
(``qk_nope`` = head_dim - n_rot, ``n_rot`` = ``rope.dimension_count``).  ``attn_kv_a_mqa`` gives every token a
latent of ``kv_lora_rank`` values (RMSNormed by ``attn_kv_a_norm``) and one rope key of ``n_rot`` values that all
heads share.  The latent expands to each head's ``k_nope`` and V: by ``attn_kv_b`` (older converters: per head
``qk_nope`` K rows then ``v_head_dim`` V rows), or by the split ``attn_k_b`` ``[n_head, kv_lora_rank, qk_nope]``
(stored transposed, for llama.cpp's absorbed product) and ``attn_v_b`` ``[n_head, v_head_dim, kv_lora_rank]`` of
newer ones, which state the decompressed widths as ``attention.key_length_mla``/``value_length_mla``.  A head's
key is ``[k_nope (its own), k_rope (shared)]``.  Rope: consecutive pairs (llama.cpp's normal rope) over the rope
parts only.

Absorbed, as llama.cpp's MLA path (``models/mla.py``): the cache holds per token the normed latent and the shared rope
key, one KV head (keys ``n_rot + kv_lora_rank`` wide, values ``kv_lora_rank``), the queries absorb ``k_nope``'s
expansion and the heads' outputs V's.  ``KVRUN_MLA=expanded`` (and Kimi Linear, whose forward is its own) keeps the
decompressed form: for the step's new tokens the latent expands into every head's K (``qk_nope + n_rot`` wide) and V
(``v_head_dim`` wide), as llama.cpp's non-absorbed (``attn_kv_b``) path does, handed to the ordinary cache
(``n_head_kv = n_head``, ``head_dim != head_dim_v``): ``n_head * (qk_nope + n_rot + v_head_dim)`` values a token a
layer (V2-Lite: 16 * (192 + 128) = 5120) against the latent's 576 + 512.  In the queries' and keys' heads the rope part comes first (``[rope, nope]``: the
scores are the same, and the rope kernels turn a head's leading dimensions).  ``attn_k_b`` is held transposed in
float32 (it is small: ``n_head * qk_nope * kv_lora_rank`` a layer).

The attention scale: YaRN with DeepSeek's magnitude rules, as llama.cpp computes them (its
``[TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]``): with ``F`` the scaling factor, ``m`` the file's
``rope.scaling.yarn_log_multiplier`` (the converter's ``0.1 * mscale_all_dim``) and ``A`` its
``rope.scaling.attn_factor`` (1 unless stated), the rope parts come out times ``A`` (``m`` stated: YaRN's own ``1 +
0.1 ln F`` cancelled) or ``A (1 + 0.1 ln F)`` (``m`` 0), and the scores are scaled by ``mscale^2 / sqrt(qk_nope +
n_rot)``, ``mscale`` = (that magnitude, ``A (1 + 0.1 ln F)`` where ``m`` is 0) times ``1 + m ln F``.

FFN: the first ``leading_dense_block_count`` layers dense SwiGLU, the others a mixture of experts (``moe.py``):
router probabilities by softmax (V2; ``expert_gating_func`` 1 or unstated) or sigmoid (V3: 2), chosen with the
``exp_probs_b`` correction bias where the file has it, from the best ``expert_group_used_count`` of
``expert_group_count`` groups where it states groups, the chosen weights renormalised where
``expert_weights_norm`` says, times ``expert_weights_scale``; plus the ``expert_shared_count`` shared experts as
one plain SwiGLU FFN every token runs.

On ``--device gpu`` the same forward runs on the GPU backend's kernels: the products, norms and rope are the dense
models' ones, the cut of the latent and the heads' ``[rope, nope]`` layout ``ops/gpu/mla.cu`` (``Backend.mla_latent_norm``,
``mla_qk``; the absorbed form's ``ops/gpu/mla_latent.cu``: kernels, not host slices, so a decode step is captured as a CUDA graph), the experts ``ops/gpu/moe.cu``, and the
attention the plain or compressed cache's with ``head_dim != head_dim_v``.

Refused: llama.cpp's query temperature (``attention.temperature_scale``, Mistral Large 3's), other gating functions.
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
from ..loaders.quants import dequantize
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .llama import LlamaModel
from .mla import LatentCache
from .mla import latent_attend, latent_enabled, latent_layer_spec, load_latent_weights, mla_query
from .moe import MoE, expert_groups, gating_func, load_moe, moe_add, weights_scale

TENSOR_NAMES.update({  # MLA's names (llama.cpp's LLM_TENSOR_ATTN_Q_A, _Q_B, _KV_A_MQA, _KV_B, _K_B, _V_B and their norms)
    "wq_a": "blk.{i}.attn_q_a.weight",
    "wq_b": "blk.{i}.attn_q_b.weight",
    "q_a_norm": "blk.{i}.attn_q_a_norm.weight",
    "wkv_a_mqa": "blk.{i}.attn_kv_a_mqa.weight",
    "kv_a_norm": "blk.{i}.attn_kv_a_norm.weight",
    "wkv_b": "blk.{i}.attn_kv_b.weight",
    "wk_b": "blk.{i}.attn_k_b.weight",
    "wv_b": "blk.{i}.attn_v_b.weight",
})  # fmt: skip

#: llama.cpp's expert_gating_func values (LLAMA_EXPERT_GATING_FUNC_TYPE_*) deepseek2 runs; 0 (unstated): softmax
GATING = {0: "softmax", 1: "softmax", 2: "sigmoid"}


@dataclass
class Deepseek2Layer:
    attn_norm: Any  # [n_embd]
    wq: Weight | None  # [n_head*head_dim, n_embd] (no query LoRA), else:
    wq_a: Weight | None  # [q_lora_rank, n_embd]
    q_a_norm: Any  # [q_lora_rank]
    wq_b: Weight | None  # [n_head*head_dim, q_lora_rank]
    wkv_a: Weight  # [kv_lora_rank + n_rot, n_embd]: the latent and the shared rope key
    kv_a_norm: Any  # [kv_lora_rank]
    wk_nope: Weight  # [n_head*qk_nope, kv_lora_rank]: every head's k_nope from the latent
    wv: Weight  # [n_head*head_dim_v, kv_lora_rank]: every head's V from the latent
    wo: Weight  # [n_embd, n_head*head_dim_v]
    ffn_norm: Any  # [n_embd]
    w_gate: Weight | None = None  # a leading dense layer's SwiGLU FFN
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None  # the others' mixture of experts (with the shared experts)
    # the absorbed form's per-head products (models/mla.py; wk_nope and wv None then): [n_head, qk_nope, kv_lora_rank] and
    # [n_head, kv_lora_rank, head_dim_v], float32
    wk_lat: Any = None
    wv_lat: Any = None


def mla_mscale(cfg: ModelConfig, log_mul: float) -> tuple[float, float]:
    """(the ``attn_factor`` rope_tables takes, the scores' ``mscale``) as llama.cpp sets them for deepseek2:
    ``log_mul`` the file's ``rope.scaling.yarn_log_multiplier`` (0.1 * mscale_all_dim)."""
    f = cfg.rope_scaling_factor if cfg.rope_scaling_type in ("linear", "yarn") and cfg.rope_scaling_factor > 0 else 1.0
    ln_f = math.log(f)
    # the context's attn_factor: YaRN's magnitude mscale(F, m) / mscale(F, m) = 1 for deepseek2 (llama.cpp takes
    # mscale = mscale_all_dim unless that is 1), with rope_yarn's own 1 + 0.1 ln F divided out; mscale(F, 1) / that = 1
    # where no multiplier is stated
    attn = cfg.yarn_attn_factor
    if cfg.rope_scaling_type == "yarn" and log_mul != 0.0:
        attn /= 1.0 + 0.1 * ln_f
    mscale = attn * (1.0 + 0.1 * ln_f) * (1.0 + log_mul * ln_f)  # (llama.cpp's attn_factor_org, times 1 + 0.1 L ln F)
    return attn, mscale


def mla_project(be: Backend, L: Any, xn: Any, buf: Any, eps: float, q_raw: Any, kva: Any, kvc: Any, k_nope: Any, v: Any) -> None:
    """One MLA layer's projections of ``xn`` (DeepSeek-V2's, Kimi Linear's): the queries ``q_raw`` (whole, or through
    the normed low-rank ``q_a``), the latent ``kva`` (its rope part last) normed into ``kvc``, and every head's
    ``k_nope`` and V decompressed from the latent."""
    mla_query(be, L, xn, buf, eps, q_raw)
    be.linear(L.wkv_a, xn, kva)
    be.mla_latent_norm(kva, L.kv_a_norm, eps, kvc)  # (kernels, not slices: a GPU decode step is captured)
    be.linear_many((L.wk_nope, L.wv), kvc, (k_nope, v))


class Deepseek2Model(LatentCache, Model):  # (LatentCache: the widths its cache holds, told before it loads)
    archs = ("deepseek2",)
    add_output = LlamaModel.add_output  # (block outputs times cfg.residual_scale where it is not 1: MiniCPM3's muP, minicpm3.py)
    #: the key YaRN's log multiplier is read from (the converter's 0.1 * mscale_all_dim), None where llama.cpp's graph
    #: reads none and so scales by 0 (glm-dsa's)
    yarn_log_mul_key: str | None = "rope.scaling.yarn_log_multiplier"

    @property
    def takes_images(self) -> bool:
        """The forward below reads Model.input_embd (Kimi-VL's image rows, runtime/vision_kimivl.py); a subclass with a
        forward of its own does not."""
        return type(self).forward is Deepseek2Model.forward

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if float(g.arch_get("attention.temperature_scale", 0.0) or 0.0) != 0.0:
            raise UnsupportedModelError(f"{g.path}: deepseek2 with attention.temperature_scale (llama.cpp's query temperature) is not supported yet")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        c = cfg
        self.n_rot = c.rope_dim
        self.qk_nope = c.head_dim - c.rope_dim
        if self.qk_nope < 1 or c.rope_dim % 2:
            raise GGUFError(f"{g.path}: deepseek2 heads of {c.head_dim} with rope.dimension_count {c.rope_dim}: "
                            "no room for the non-rope part; the file is not a supported model")  # fmt: skip
        self.kv_rank = int(g.arch_get("attention.kv_lora_rank", 0) or 0)
        self.q_rank = int(g.arch_get("attention.q_lora_rank", 0) or 0)
        if self.kv_rank <= 0:
            raise GGUFError(f"{g.path}: metadata deepseek2.attention.kv_lora_rank is missing")
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, c.n_expert)  # (a one-line error for a grouping llama.cpp does not run)

        #: the cache holds the latent and the shared rope key, one KV head (models/mla.py), not every head's K and V
        self.latent = latent_enabled(type(self), Deepseek2Model.forward)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(c.n_layer)]
        attn, self.mscale = mla_mscale(c, float(g.arch_get(self.yarn_log_mul_key, 0.0) or 0.0) if self.yarn_log_mul_key else 0.0)
        self.rope_cos = self.rope_sin = None  # (no rope part: GLM-5.3-Flash's nope MLA, models/glm5_next.py)
        if c.rope_dim:
            self.rope_cos, self.rope_sin = make_rope(dataclasses.replace(c, yarn_attn_factor=attn), n_ctx, c.rope_theta)

    def _shape(self, w: WeightLoader, role: str, i: int, m: Weight, shape: tuple[int, int]) -> Weight:
        if tuple(m.shape) != shape:
            raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {shape}; "
                            "the file is not a supported model")  # fmt: skip
        return m

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        c, H, rank = self.cfg, self.cfg.n_head, self.kv_rank
        q_rows = H * c.head_dim
        wq = wq_a = wq_b = q_a_norm = None
        if self.q_rank > 0:
            wq_a = self._shape(w, "wq_a", i, w.matrix("wq_a", i), (self.q_rank, c.n_embd))
            q_a_norm = w.vector("q_a_norm", i)
            wq_b = self._shape(w, "wq_b", i, w.matrix("wq_b", i), (q_rows, self.q_rank))
        else:
            wq = self._shape(w, "wq", i, w.matrix("wq", i), (q_rows, c.n_embd))
        wkv_a = self._shape(w, "wkv_a_mqa", i, w.matrix("wkv_a_mqa", i), (rank + self.n_rot, c.n_embd))
        wk_nope, wv = self.load_kv_b(w, i) if not self.latent else (None, None)
        L = Deepseek2Layer(
            attn_norm=w.vector("attn_norm", i),
            wq=wq,
            wq_a=wq_a,
            q_a_norm=q_a_norm,
            wq_b=wq_b,
            wkv_a=wkv_a,
            kv_a_norm=w.vector("kv_a_norm", i),
            wk_nope=wk_nope,
            wv=wv,
            wo=self._shape(w, "wo", i, w.matrix("wo", i), (c.n_embd, H * c.head_dim_v)),
            ffn_norm=w.vector("ffn_norm", i),
        )
        if self.latent:
            L.wk_lat, L.wv_lat = self.load_latent_kv_b(w, i)
        if i < self.n_dense_lead:
            self.load_dense_ffn(w, i, L)
        else:
            if c.n_expert <= 0:
                raise GGUFError(f"{w.g.path}: blk.{i} is past leading_dense_block_count {self.n_dense_lead} but the file states no experts")
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating, shared="plain")
            L.moe.weights_scale = self.weights_scale
            L.moe.n_group, L.moe.n_group_used = self.groups
        return L

    def load_kv_b(self, w: WeightLoader, i: int) -> tuple[Weight, Weight]:
        """Layer i's expansion of the latent into every head's k_nope ``[n_head*qk_nope, kv_lora_rank]`` and V
        ``[n_head*head_dim_v, kv_lora_rank]``: from ``attn_kv_b`` (its rows per head: k_nope's, then V's, gathered
        here), or from the split ``attn_k_b`` (transposed back, float32) and ``attn_v_b``."""
        H, nope, dv, rank = self.cfg.n_head, self.qk_nope, self.cfg.head_dim_v, self.kv_rank
        if w.has("wkv_b", i):
            t = w._info("wkv_b", i, True)
            if tuple(t.shape) != (H * (nope + dv), rank):
                raise GGUFError(f"{w.g.path}: {t.name} has shape {t.shape}, expected {(H * (nope + dv), rank)}; the file is not a supported model")
            rows = t.rows().reshape(H, nope + dv, -1)
            k_rows = np.ascontiguousarray(rows[:, :nope]).reshape(H * nope, -1)
            v_rows = np.ascontiguousarray(rows[:, nope:]).reshape(H * dv, -1)
            return w._upload(t, k_rows, H * nope), w._upload(t, v_rows, H * dv)
        tk = w._info("wk_b", i, True)
        tv = w._info("wv_b", i, True)
        if tuple(tk.shape) != (H, rank, nope) or tuple(tv.shape) != (H, dv, rank):
            raise GGUFError(f"{w.g.path}: {tk.name}/{tv.name} have shapes {tk.shape}/{tv.shape}, expected "
                            f"{(H, rank, nope)}/{(H, dv, rank)}; the file is not a supported model")  # fmt: skip
        kb = dequantize(tk.data, tk.qtype, tk.shape).reshape(H, rank, nope).astype(np.float32)
        k = np.ascontiguousarray(kb.transpose(0, 2, 1).reshape(H * nope, rank))
        wk = self.be.upload(k.view(np.uint8), 0, (H * nope, rank))  # (0: GGML_TYPE_F32)
        return wk, w._upload(tv, tv.rows(), H * dv)

    def load_latent_kv_b(self, w: WeightLoader, i: int) -> tuple[Any, Any]:
        """Layer i's per-head products of the absorbed form (models/mla.py's load_latent_weights)."""
        return load_latent_weights(w, self.be, i, self.cfg.n_head, self.qk_nope, self.cfg.head_dim_v, self.kv_rank)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = self.mscale * self.mscale / math.sqrt(c.head_dim)
        if self.latent:  # one KV head: keys [k_rope, latent], values the latent (the scale the original heads')
            return [latent_layer_spec(c.n_head, self.n_rot, self.kv_rank, scale)] * c.n_layer
        return [LayerSpec(c.n_head, c.n_head, c.head_dim, c.head_dim_v, 0, scale)] * c.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, H, D, Dv, R, nope, rank = len(tokens), c.n_head, c.head_dim, c.head_dim_v, self.n_rot, self.qk_nope, self.kv_rank
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        q_raw, kva, att = buf.get("q_raw", T, H * D), buf.get("kv_a", T, rank + R), buf.get("att", T, H * Dv)
        qr3, att3 = q_raw.reshape(T, H, D), att.reshape(T, H, Dv)
        if not self.latent:  # (the expanded form's scratch: every head's K and V)
            q, kvc = buf.get("q", T, H * D), buf.get("kv_c", T, rank)
            k_nope, k, v = buf.get("k_nope", T, H * nope), buf.get("k", T, H * D), buf.get("v", T, H * Dv)
            q3, k3, v3 = q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, Dv)
        o = buf.get("o", T, c.n_embd) if c.residual_scale != 1.0 else None
        be.get_rows(self.tok_embd, tokens, x)
        if c.embedding_scale != 1.0:  # (MiniCPM3's muP; DeepSeek's files state none)
            be.scale(x, c.embedding_scale)
        if self.input_embd is not None:  # a picture's rows (Kimi-VL's, Engine.eval_embd), attended causally as llama.cpp
            x[...] = be.vector(self.input_embd)  # (host rows: uploaded on the GPU, as is on the CPU)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            self.trace("attn_norm", il, xn)
            if self.latent:  # (models/mla.py: the cache holds the latent)
                mla_query(be, L, xn, buf, c.norm_eps, q_raw)
                be.linear(L.wkv_a, xn, kva)
                latent_attend(self, L, qr3, kva, pos, cache[il], att3)
            else:
                mla_project(be, L, xn, buf, c.norm_eps, q_raw, kva, kvc, k_nope, v)
                be.mla_qk(qr3, k_nope.reshape(T, H, nope), kva, q3, k3)  # heads [rope, nope], the shared rope key in each
                be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)  # (every copy of the rope key turned alike)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            self.add_output(x, o, lambda out, acc: (be.linear_add if acc else be.linear)(L.wo, att, out))
            self.add_ffn(L, x, xn, o)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def add_ffn(self, L: Deepseek2Layer, x: Any, xn: Any, o: Any) -> None:
        """``x +=`` layer ``L``'s FFN: its experts of the RMSNormed stream, or a leading dense layer's (``o``:
        add_output's scratch); every model of this trunk (Kimi Linear, Ling 3, dots.note) ends its layers so."""
        if L.moe is not None:
            self.be.rms_norm(x, L.ffn_norm, self.cfg.norm_eps, xn)
            moe_add(self.be, L.moe, xn, x, self.buf)
        else:
            self.dense_ffn(L, x, xn, o)

    def load_dense_ffn(self, w: WeightLoader, i: int, L: Deepseek2Layer) -> None:
        """A dense layer's FFN weights into ``L``: SwiGLU's (PLM: an ungated squared ReLU's, models/plm.py)."""
        L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))

    def dense_ffn(self, L: Deepseek2Layer, x: Any, xn: Any, o: Any) -> None:
        """``x +=`` a dense layer's FFN of the stream ``x`` RMSNormed into ``xn`` (``o``: add_output's scratch)."""
        be, T, n_ff = self.be, x.shape[0], L.w_gate.shape[0]
        gate, up = self.buf.get("gate", T, n_ff), self.buf.get("up", T, n_ff)
        be.norm_linear_many(x, L.ffn_norm, self.cfg.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
        self.add_output(x, o, lambda out, acc: be.linear_glu(L.w_down, gate, up, out, "silu", accumulate=acc))
