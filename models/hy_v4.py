"""Tencent's HY V4 (Hy4), as llama.cpp's ``hy_v4`` graph: DeepSeek-V3's trunk (``deepseek2.py``: latent attention with a
query LoRA and the split ``attn_k_b``/``attn_v_b``, rope over consecutive pairs of the heads' rope parts, in the absorbed
form of ``mla.py``; leading dense SwiGLU layers, then sigmoid-routed experts with ``exp_probs_b`` beside the shared
experts) with what sets it apart:

* independent hyper-connections (iHC): the residual is ``hyper_connection.count`` streams (``hc``) of ``n_embd``, each
  the token's embedding at the start.  Before the attention and before the FFN, the streams flattened and RMS-normed
  without a weight give ``2 hc`` mixes (``hc_attn_fn``/``hc_ffn_fn``, float32); the block's input is the streams'
  sum weighted by ``pre = sigmoid(mixes[:hc] * scale[0] + base[:hc]) + eps``, and its output goes back into stream
  ``h`` times ``post = magnitude * sigmoid(mixes[hc:] * scale[1] + base[hc:]) + eps`` (``hyper_connection.epsilon``,
  ``.magnitude``).  No Sinkhorn term mixes the streams with one another (DeepSeek-V4's HC has one): they meet only
  through that reduce and spread.  At the end ``output_hc_fn`` (``hc`` mixes) weighs the streams into the one row
  the final norm and ``output`` read;
* gated MLA: the heads' decompressed outputs times ``sigmoid(attn_gate x)`` (``[n_head * v_head_dim, n_embd]``: one
  gate a value, ``x`` the attention's normed input) before ``attn_output``;
* a learned sink logit per head (``attn_sinks``, gpt-oss's: it joins each head's softmax sum and adds no value);
* the scores at the plain ``1/sqrt(key_length_mla)`` (no DeepSeek YaRN magnitude: llama.cpp's graph takes it so);
* the routed experts' SwiGLU clamped as Maple's (``swiglu_clamp_exp``, one limit or one a layer, where stated):
  ``silu(min(gate, limit)) * clamp(up, -limit, limit)``; the shared and dense FFNs unclamped;
* an output head of its own (llama.cpp requires ``output.weight``).

The router's function is the file's ``expert_gating_func`` (the converter writes sigmoid; unstated, llama.cpp's graph
aborts, so kvrun refuses the file in one line).  Checkpoints with DeepSeek sparse attention state the lightning
indexer (``attention.indexer.*``, its weights on the layers ``indexer.types`` flags): as glm-dsa, llama.cpp takes
``min(top_k, n_kv)`` keys, so up to ``top_k`` cached cells every key is chosen and the attention is the dense MLA;
kvrun runs that dense path only, a context (``--ctx-size``) past ``top_k`` refused in one line, the indexer's weights
never read.  The all-full-attention checkpoints state no indexer and have no such limit.

On ``--device gpu`` the trunk runs on deepseek2's kernels (the latent attention with the sinks, the gate's
``sigmoid_mul``, the experts' gate-first clamp) and the streams' arithmetic, host numpy on the CPU, on hyper.cu's
(``ops/gpu/hyper.py``: a site's pre and post weights with the reduce, the spread, the fill), so a decode step stays on
the device and is captured as a CUDA graph.  ``KVRUN_MLA=expanded`` is not honoured: the latent form only (dots3note's
way).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from ..ops.host import sigmoid
from .common import TENSOR_NAMES, WeightLoader, make_rope
from .deepseek2 import Deepseek2Layer, Deepseek2Model
from .mimo2 import per_layer
from .mla import latent_attend, latent_layer_spec, mla_query
from .moe import check_expert_counts, gating_func, moe_add

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_HC_* (the iHC mixes of each layer's two sites and of the output)
    **{f"hc_{site}_{part}": f"blk.{{i}}.hc_{site}_{part}.weight" for site in ("attn", "ffn") for part in ("fn", "base", "scale")},
    **{f"output_hc_{part}": f"output_hc_{part}.weight" for part in ("fn", "base", "scale")},
})  # fmt: skip

#: llama.cpp's get_key without a default for hy_v4 (key_length_mla and value_length_mla: loaders/config.py)
REQUIRED_KEYS = ("attention.layer_norm_rms_epsilon", "attention.q_lora_rank", "attention.kv_lora_rank", "expert_feed_forward_length",
                 "expert_shared_count", "hyper_connection.count", "hyper_connection.epsilon", "hyper_connection.magnitude")  # fmt: skip

#: the expert_gating_func values hy_v4's graph runs (0, unstated, aborts llama.cpp's build_moe_ffn: refused)
GATING = {1: "softmax", 2: "sigmoid"}


@dataclass
class HyperConnection:
    """One iHC site's mixing weights: ``fn`` ``[n_mix, hc * n_embd]`` (the mixes of the flattened, normed streams),
    ``base`` ``[n_mix]`` and ``scale`` (a layer's sites: one for the pre half of the mixes, one for the post; the
    output's: one for all), host float32."""

    fn: Weight
    base: np.ndarray
    scale: np.ndarray


@dataclass
class HyV4Layer(Deepseek2Layer):
    hc_attn: HyperConnection | None = None  # before and after the attention: pre (hc mixes) and post (hc)
    hc_ffn: HyperConnection | None = None  # before and after the FFN
    attn_gate: Weight | None = None  # [n_head * head_dim_v, n_embd]: one sigmoid gate a value of the heads' outputs
    sinks: np.ndarray | None = None  # [n_head] sink logits (host: they go into the layer's cache spec)


class HyV4Model(Deepseek2Model):
    archs = ("hy_v4",)

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """The latent's (``mla.py``): the rope key and the latent a token a layer (the compressed cache: V apart)."""
        rank = int(g.arch_get("attention.kv_lora_rank", 0) or 0)
        return (cfg.rope_dim + (rank if bits >= 16 else 2 * rank),) * cfg.n_layer

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata hy_v4.{key} is missing; the file is not a complete model")
        if g.arch_get("expert_gating_func") is None:
            raise GGUFError(f"{g.path}: metadata hy_v4.expert_gating_func is missing (llama.cpp's hy_v4 graph has no default router)")
        if "output.weight" not in g.tensors:
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; hy_v4 has an output head of its own")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        self.n_hc = int(g.arch_get("hyper_connection.count"))
        self.hc_eps = float(g.arch_get("hyper_connection.epsilon"))
        self.hc_magnitude = float(g.arch_get("hyper_connection.magnitude"))
        if self.n_hc < 1:
            raise GGUFError(f"{g.path}: hy_v4.hyper_connection.count is {self.n_hc}; the file is not a supported model")
        self.hc_dev = None  # the device's hyper-connection kernels (ops/gpu/hyper.py); the CPU's are host numpy
        if backend.name != "cpu":
            from ..ops.gpu import hyper  # (only here: the CPU's runs never load the GPU's modules)

            if self.n_hc > hyper.MAX_HC:
                raise UnsupportedModelError(f"{g.path}: hy_v4 with {self.n_hc} hyper-connection streams on the GPU (its kernels "
                                            f"hold at most {hyper.MAX_HC}); use --device cpu")  # fmt: skip
            self.hc_dev = hyper.HyperConnections(self.hc_eps, self.hc_magnitude)
        self.indexer_top_k = self._indexer_top_k(g, cfg, n_ctx)
        self._gating = gating_func(g, GATING)
        # (llama.cpp clamps where the limit is above 1e-6; unstated, nowhere)
        self.clamp_exp = [v if v > 1e-6 else 0.0 for v in per_layer(g, "swiglu_clamp_exp", cfg.n_layer, 0, float)]
        self.n_shared = int(g.arch_get("expert_shared_count"))
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        c, w = cfg, WeightLoader(g, backend)
        self.output_hc = self._hyper_connection(w, "output_hc", None, self.n_hc, 1)
        self.hc_ones = backend.vector(np.ones(self.n_hc * c.n_embd, np.float32))  # (the streams' RMSNorm has no weight)
        # llama.cpp's generic rope (not deepseek2's YaRN magnitude), the scores at 1/sqrt(key_length_mla)
        self.rope_cos, self.rope_sin = make_rope(c, n_ctx, c.rope_theta)

    @staticmethod
    def _indexer_top_k(g: GGUFFile, cfg: ModelConfig, n_ctx: int) -> int:
        """The lightning indexer's ``top_k`` (0: no sparse attention), checked as llama.cpp checks it; a context past it
        refused (kvrun runs the dense path, where every key is chosen)."""
        top_k = int(g.arch_get("attention.indexer.top_k", 0) or 0)
        if top_k <= 0:
            return 0
        n_head, key_len = int(g.arch_get("attention.indexer.head_count", 0) or 0), int(g.arch_get("attention.indexer.key_length", 0) or 0)
        types = g.arch_get("attention.indexer.types")
        owns = types is not None and hasattr(types, "__len__") and len(types) > 0 and bool(types[0])
        if n_head == 0 or key_len <= cfg.rope_dim or not owns:
            raise GGUFError(f"{g.path}: hy_v4's indexer (head_count {n_head}, key_length {key_len}, layer 0 owning one: {owns}) is not one "
                            f"llama.cpp runs: it needs heads, keys wider than the rope ({cfg.rope_dim}) and layer 0 owning an indexer")  # fmt: skip
        if n_ctx > top_k:
            raise UnsupportedModelError(f"{g.path}: hy_v4's sparse attention past {top_k} tokens (its indexer's top_k) is not "
                                        f"supported yet; use a context (--ctx-size) of at most {top_k}, not {n_ctx}")  # fmt: skip
        return top_k

    def _hyper_connection(self, w: WeightLoader, prefix: str, i: int | None, n_mix: int, n_scale: int) -> HyperConnection:
        """A site's ``fn`` ``[n_mix, hc * n_embd]``, ``base`` ``[n_mix]`` and ``scale`` ``[n_scale]``, shapes checked."""
        c = self.cfg
        fn = self._shape(w, prefix + "_fn", i, w.matrix(prefix + "_fn", i), (n_mix, self.n_hc * c.n_embd))
        base, scale = w.host_vector(prefix + "_base", i), w.host_vector(prefix + "_scale", i)
        for role, v, n in ((prefix + "_base", base, n_mix), (prefix + "_scale", scale, n_scale)):
            if v.size != n:
                raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
        return HyperConnection(fn, base, scale)

    def load_layer(self, w: WeightLoader, i: int) -> HyV4Layer:
        """deepseek2's layer (its latent form, the file's router and the clamp) with the iHC sites, the gate and the sinks."""
        c, H = self.cfg, self.cfg.n_head
        self.latent, self.gating = True, self._gating  # (Deepseek2Model's __init__ decided both by deepseek2's rules)
        base = super().load_layer(w, i)
        L = HyV4Layer(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
        L.hc_attn = self._hyper_connection(w, "hc_attn", i, 2 * self.n_hc, 2)
        L.hc_ffn = self._hyper_connection(w, "hc_ffn", i, 2 * self.n_hc, 2)
        L.attn_gate = self._shape(w, "attn_gate", i, w.matrix("attn_gate", i), (H * c.head_dim_v, c.n_embd))
        L.sinks = w.host_vector("attn_sinks", i)
        if L.sinks.size != H:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_sinks has {L.sinks.size} values, expected one per head ({H})")
        if L.moe is not None:
            n_ff_shexp = c.n_ff_exp * self.n_shared
            if L.moe.shared.gate.shape[0] != n_ff_shexp:
                raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight has {L.moe.shared.gate.shape[0]} rows, expected "
                                f"{n_ff_shexp} (expert_feed_forward_length x expert_shared_count); the file is not a supported model")  # fmt: skip
            L.moe.swiglu_limit, L.moe.clamp_gate_first = self.clamp_exp[i], True
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / math.sqrt(c.head_dim)  # (key_length_mla: the original heads' width)
        return [dataclasses.replace(latent_layer_spec(c.n_head, self.n_rot, self.kv_rank, scale), sink_logits=tuple(float(s) for s in L.sinks))
                for L in self.layers]  # fmt: skip

    def hc_pre(self, hc: HyperConnection, streams: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """``cur`` = the streams ``[T, hc, n_embd]`` weighed by ``pre`` into one row a token; returns ``post`` ``[T, hc]``,
        what the block's output goes back into each stream times (llama.cpp's ``build_hc_pre``)."""
        n = self.n_hc
        mixes = self.hc_mixes(hc, streams)
        if self.hc_dev is not None:
            post = self.buf.get("hc_post", streams.shape[0], n)
            self.hc_dev.pre(mixes, hc.base, hc.scale, streams, cur, post)
            return post
        pre = sigmoid(mixes[:, :n] * hc.scale[0] + hc.base[:n]) + np.float32(self.hc_eps)
        post = np.float32(self.hc_magnitude) * sigmoid(mixes[:, n:] * hc.scale[1] + hc.base[n:]) + np.float32(self.hc_eps)
        np.einsum("th,the->te", pre, streams, out=cur)
        return post

    def hc_mixes(self, hc: HyperConnection, streams: np.ndarray) -> np.ndarray:
        """A site's mixes ``[T, n_mix]`` of the streams, flattened and RMS-normed without a weight."""
        T, buf = streams.shape[0], self.buf
        flat, mixes = buf.get("hc_flat", T, streams.shape[1] * streams.shape[2]), buf.get(f"hc_mixes_{hc.fn.shape[0]}", T, hc.fn.shape[0])
        self.be.rms_norm(streams.reshape(T, -1), self.hc_ones, self.cfg.norm_eps, flat)
        self.be.linear(hc.fn, flat, mixes)
        return mixes

    def hc_head(self, streams: np.ndarray, x: np.ndarray) -> None:
        """``x`` = the streams weighed into one row a token for the final norm and ``output`` (``output_hc``: ``hc``
        mixes, one scale and base for them, no post)."""
        hc = self.output_hc
        mixes = self.hc_mixes(hc, streams)
        if self.hc_dev is not None:
            self.hc_dev.pre(mixes, hc.base, hc.scale, streams, x)
            return
        pre = sigmoid(mixes * hc.scale[0] + hc.base) + np.float32(self.hc_eps)
        np.einsum("th,the->te", pre, streams, out=x)

    def hc_post(self, streams: np.ndarray, post: np.ndarray, out: np.ndarray) -> None:
        """Each stream its share of a block's output ``out``, times its ``post`` (llama.cpp's ``build_hc_post``)."""
        if self.hc_dev is not None:
            self.hc_dev.post(streams, post, out)
        else:
            streams += post[:, :, None] * out[:, None, :]

    def hc_fill(self, streams: np.ndarray, x: np.ndarray) -> None:
        """Every stream the row ``x`` (the token's embedding, at the start)."""
        if self.hc_dev is not None:
            self.hc_dev.fill(streams, x)
        else:
            streams[...] = x[:, None, :]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf, eps = self.cfg, self.be, self.buf, self.cfg.norm_eps
        T, H, R, rank, E = len(tokens), c.n_head, self.n_rot, self.kv_rank, c.n_embd
        x, xn, out = buf.get("x", T, E), buf.get("xn", T, E), buf.get("o", T, E)
        streams = buf.get("hc_streams", T, self.n_hc, E)
        q_raw, kva = buf.get("q_raw", T, H * c.head_dim), buf.get("kv_a", T, rank + R)
        att, gate = buf.get("att", T, H * c.head_dim_v), buf.get("attn_gate", T, H * c.head_dim_v)
        be.get_rows(self.tok_embd, tokens, x)
        self.hc_fill(streams, x)  # every stream the embedding
        for il, L in enumerate(self.layers):
            post = self.hc_pre(L.hc_attn, streams, x)
            be.rms_norm(x, L.attn_norm, eps, xn)
            self.trace("attn_norm", il, xn)
            mla_query(be, L, xn, buf, eps, q_raw)
            be.linear(L.wkv_a, xn, kva)
            latent_attend(self, L, q_raw.reshape(T, H, -1), kva, pos, cache[il], att.reshape(T, H, c.head_dim_v))
            be.linear(L.attn_gate, xn, gate)  # gated MLA: a sigmoid gate a value, of the attention's input
            be.sigmoid_mul(att, gate)
            self.trace("attn_gated", il, att)
            be.linear(L.wo, att, out)
            self.hc_post(streams, post, out)
            post = self.hc_pre(L.hc_ffn, streams, x)
            be.rms_norm(x, L.ffn_norm, eps, xn)
            if L.moe is not None:
                moe_add(be, L.moe, xn, out, buf, accumulate=False)  # (the routed experts and the shared ones)
            else:
                g, u = buf.get("gate", T, L.w_gate.shape[0]), buf.get("up", T, L.w_gate.shape[0])
                be.linear_many((L.w_gate, L.w_up), xn, (g, u))
                be.linear_glu(L.w_down, g, u, out, "silu")
            self.hc_post(streams, post, out)
            self.trace("l_out", il, streams)
        self.hc_head(streams, x)
        self.output_head(x, out_rows, logits)
