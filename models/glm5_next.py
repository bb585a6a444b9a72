"""GLM-5.3-Flash (Z.ai's: ``glm5-next``), as llama.cpp 0.3.36's graph of that name (src/models/glm5-next.cpp): Kimi
Linear's two layer kinds (``kimi_linear.py``: Kimi Delta Attention where the per-layer ``attention.head_count_kv`` is
0, multi-head latent attention elsewhere) and DeepSeek's experts, with GLM's own parts:

* mHC residual streams (DeepSeek-V4's manifold-constrained hyper-connections): the residual is
  ``hyper_connection.count`` (4, as llama.cpp asserts) streams of ``n_embd``, each the token's embedding at the start.
  Before the mixer and before the FFN the streams, flattened and RMS-normed without a weight, give ``(2 + hc) hc`` mixes
  (``hc_attn_fn``/``hc_ffn_fn``: the same arithmetic as HY V4's, whose ``hc_mixes`` this class takes from
  ``hy_v4.py``); with ``s = *_scale`` (3 values) and ``b = *_base``::

      input  = sum_h pre_h stream_h,     pre  = sigmoid(mixes[:hc] s0 + b[:hc]) + eps
      post   = 2 sigmoid(mixes[hc:2hc] s1 + b[hc:2hc])
      comb   = sinkhorn(mixes[2hc:] s2 + b[2hc:])    ([src, dst]: softmax over dst, + eps, then columns and rows
                                                      normalised in turn, each sum + eps, sinkhorn_iterations in all)
      stream_dst = post_dst * block(input) + sum_src comb[src, dst] stream_src

  (HY V4's iHC has neither the Sinkhorn mix nor the factor 2: its streams meet only through the reduce and spread.)  The
  final norm reads the streams' mean;
* the MLA "nope": no rope at all (``rope.dimension_count`` 0, as llama.cpp asserts), a query LoRA (required), the
  latent alone from ``attn_kv_a_mqa``; scores times ``1/sqrt(key_length_mla)``;
* a k-pool DSA indexer on the MLA layers (``attention.indexer.*``, its weights where ``indexer.types`` flags a layer,
  the others sharing the last one's choice): it scores pools of ``kpool`` consecutive keys (each pool one key, a softmax
  of gates over its members) and the attention reads the best ``top_k / kpool`` complete pools and the incomplete tail
  (``kpool_select_tail``, llama.cpp's default).  Up to ``top_k + kpool - 1`` tokens that is every earlier key: the dense
  MLA.  kvrun runs that dense path only, a context (``--ctx-size``) past it refused in one line, the indexer's weights
  never read (glm_dsa.py's way); a file whose selection leaves out the tail (never dense) is refused too;
* the KDA's L2 norms at FLA's fixed 1e-6 (Kimi Linear's: the RMS eps); its decay bounded,
  ``lb * sigmoid(exp(A_log) (f_b(f_a x) + dt_bias))``, where ``kda.gate_lower_bound`` is stated (below 0: else
  refused), else Kimi's softplus;
* DeepSeek's experts after ``leading_dense_block_count`` dense layers: the router sigmoid unless
  ``expert_gating_func`` says otherwise, ``exp_probs_b``, the chosen weights renormalised only where
  ``expert_weights_norm`` says (Kimi's always), times ``expert_weights_scale``, beside the shared experts; every SwiGLU
  clamped gate first (ggml's ``swiglu_clamp``: ``silu(min(g, l)) * clamp(u, -l, l)``) where its limit is above 0: the
  routed experts' by ``swiglu_clamp_exp``, the shared experts' and the dense layers' by ``swiglu_clamp_shexp`` (the
  experts' where unstated), one limit or one a layer.

NextN layers past the trunk (``nextn_predict_layers``) are loaded by llama.cpp for its draft graph and never run here.

On ``--device gpu`` the KDA and the nope MLA run on Kimi Linear's kernels (``gpu_delta.py``), the experts on moe2.cu's
gate-first clamp (Maple's), the shared expert's and the dense layers' clamp on its element-wise form, and the streams'
arithmetic, host numpy on the CPU, on hyper.cu's (``ops/gpu/hyper.py``, HY V4's: a site's pre and post weights with
the reduce, the Sinkhorn mix, the spread, the fill, the mean), so a decode step stays on the device and is captured as
a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from ..ops.host import sigmoid
from .common import WeightLoader
from .deepseek2 import Deepseek2Model, mla_project
from .glm_dsa import GATING
from .hy_v4 import HyperConnection, HyV4Model
from .kimi_linear import KDA, KDALayer, KimiLinearModel
from .mimo2 import per_layer
from .moe import check_expert_counts, clamped_glu, gating_func, moe_add

#: llama.cpp's get_key without a default for glm5-next (key_length_mla, value_length_mla: loaders/config.py)
REQUIRED_KEYS = ("attention.layer_norm_rms_epsilon", "attention.q_lora_rank", "attention.kv_lora_rank", "ssm.conv_kernel", "kda.head_dim",
                 "expert_feed_forward_length", "expert_shared_count", "attention.indexer.head_count", "attention.indexer.key_length",
                 "attention.indexer.top_k", "attention.indexer.kpool", "hyper_connection.count",
                 "hyper_connection.sinkhorn_iterations", "hyper_connection.epsilon")  # fmt: skip

#: FLA's L2 norm of the KDA's q and k (llama.cpp's glm5-next fixes it; Kimi Linear's takes the RMS eps)
L2_EPS = 1e-6


def sinkhorn(logits: np.ndarray, n_iter: int, eps: float) -> np.ndarray:
    """mHC's stream mix ``[T, src, dst]`` of its logits, as llama.cpp's ``build_hc_sinkhorn``: a softmax over ``dst``
    plus ``eps``, the columns (each ``dst``'s sum over ``src``, + ``eps``) normalised, then ``n_iter - 1`` times the rows
    (each ``src``'s sum over ``dst``) and the columns again: near doubly stochastic, float32."""
    e = np.float32(eps)
    c = np.exp(logits - logits.max(axis=2, keepdims=True))
    c = c / c.sum(axis=2, keepdims=True) + e
    c /= c.sum(axis=1, keepdims=True) + e
    for _ in range(1, n_iter):
        c /= c.sum(axis=2, keepdims=True) + e
        c /= c.sum(axis=1, keepdims=True) + e
    return c.astype(np.float32)


class Glm5NextModel(KimiLinearModel):
    archs = ("glm5-next",)
    ROPE_ABSENCE = "GLM-5.3-Flash's nope MLA: the KDA layers' convolutions carry position"
    # (HY V4's: a site's fn/base/scale loaded with their shapes checked, and its mixes of the normed streams)
    _hyper_connection = HyV4Model._hyper_connection
    hc_mixes = HyV4Model.hc_mixes

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata glm5-next.{key} is missing; the file is not a complete model")
        if cfg.rope_dim != 0:
            raise GGUFError(f"{g.path}: glm5-next with rope.dimension_count {cfg.rope_dim}: llama.cpp's graph runs the nope MLA only (0)")
        if "output.weight" not in g.tensors:  # (llama.cpp requires it: no tied head)
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; glm5-next has an output head of its own")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        self.n_hc = int(g.arch_get("hyper_connection.count"))
        if self.n_hc != 4:
            raise GGUFError(f"{g.path}: glm5-next.hyper_connection.count is {self.n_hc}; llama.cpp's mHC takes 4 streams only")
        self.hc_iters = int(g.arch_get("hyper_connection.sinkhorn_iterations"))
        self.hc_eps = float(g.arch_get("hyper_connection.epsilon"))
        self.hc_post_scale = 2.0  # (post's factor, which llama.cpp's mHC fixes: HY V4's iHC reads its magnitude from the file)
        self.hc_dev = None  # the device's hyper-connection kernels (ops/gpu/hyper.py); the CPU's are host numpy
        if backend.name != "cpu":
            from ..ops.gpu import hyper  # (only here: the CPU's runs never load the GPU's modules)

            self.hc_dev = hyper.HyperConnections(self.hc_eps, self.hc_post_scale, post_eps=0.0)  # (mHC's post has no eps)
        lb = g.arch_get("kda.gate_lower_bound")
        self.lower_bound = None if lb is None else float(lb)  # (None: Kimi's softplus decay)
        if self.lower_bound is not None and not self.lower_bound < 0.0:
            raise UnsupportedModelError(f"{g.path}: glm5-next with kda.gate_lower_bound {self.lower_bound} is not supported (below 0 is)")
        self.dense_limit = self._indexer_limit(g, cfg, n_ctx)
        self._gating = gating_func(g, GATING)  # (unstated: sigmoid)
        self.clamp_exp = self._limits(g, "swiglu_clamp_exp", cfg.n_layer)
        shexp = g.arch_get("swiglu_clamp_shexp")  # (unstated: the experts')
        self.clamp_shexp = self.clamp_exp if shexp is None else self._limits(g, "swiglu_clamp_shexp", cfg.n_layer)
        self.head_dim_kda = int(g.arch_get("kda.head_dim"))
        if self.head_dim_kda <= 0 or cfg.ssm_d_conv <= 0:
            raise GGUFError(f"{g.path}: metadata glm5-next.kda.head_dim and ssm.conv_kernel must be > 0")
        # (deepseek2's trunk, not Kimi Linear's __init__, which requires the router's function that GLM's graph leaves to sigmoid)
        Deepseek2Model.__init__(self, g, cfg, backend, n_ctx, n_batch)
        self.rope_cos = self.rope_sin = None  # (nothing turns)
        self.hc_ones = backend.vector(np.ones(self.n_hc * cfg.n_embd, np.float32))  # (the streams' RMSNorm has no weight)

    @staticmethod
    def _limits(g: GGUFFile, key: str, n_layer: int) -> list[float]:
        """A SwiGLU limit a layer (one for all, or a list), 0 where llama.cpp clamps nothing (at or below 1e-6)."""
        return [v if v > 1e-6 else 0.0 for v in per_layer(g, key, n_layer, 0.0, float)]

    @staticmethod
    def _indexer_limit(g: GGUFFile, cfg: ModelConfig, n_ctx: int) -> int:
        """The longest context llama.cpp's k-pool selection reads every earlier key over (``top_k + kpool - 1``: the best
        ``top_k / kpool`` complete pools are all of them, the tail beside them), checked as llama.cpp checks it; a context
        past it refused."""
        top_k, kpool = int(g.arch_get("attention.indexer.top_k")), int(g.arch_get("attention.indexer.kpool"))
        if kpool < 2 or top_k % kpool:
            raise GGUFError(f"{g.path}: glm5-next's indexer with top_k {top_k} and kpool {kpool}: llama.cpp requires kpool > 1 dividing top_k")
        types = g.arch_get("attention.indexer.types")
        first = next((i for i, s in enumerate(cfg.ssm_layers) if not s), None)
        if first is not None and types is not None and hasattr(types, "__len__") and len(types) > first and not bool(types[first]):
            raise GGUFError(f"{g.path}: glm5-next's first attention layer ({first}) owns no indexer (attention.indexer.types); "
                            "llama.cpp's layers that share one need an earlier owner")  # fmt: skip
        if not bool(g.arch_get("attention.indexer.kpool_select_tail", True)):
            raise UnsupportedModelError(f"{g.path}: glm5-next's sparse attention without the incomplete pool (kpool_select_tail false) "
                                        "is not supported yet")  # fmt: skip
        limit = top_k + kpool - 1
        if n_ctx > limit:
            raise UnsupportedModelError(f"{g.path}: glm5-next's sparse attention past {limit} tokens (its indexer's top_k {top_k} and the "
                                        f"incomplete pool of kpool {kpool}) is not supported yet; use a context (--ctx-size) of at most {limit}, "
                                        f"not {n_ctx}")  # fmt: skip
        return limit

    def load_layer(self, w: WeightLoader, i: int) -> Any:
        """Kimi Linear's layer (KDA or MLA, and its FFN) with the two mHC sites, GLM's router, weights and clamps; the shared
        expert held apart (``shexp``: its clamp is gate first, which moe.py's shared expert does not take)."""
        self.gating = self._gating  # (Deepseek2Model's __init__ set deepseek2's default)
        L = super().load_layer(w, i)
        n_mix = (2 + self.n_hc) * self.n_hc
        L.hc_attn = self._hyper_connection(w, "hc_attn", i, n_mix, 3)
        L.hc_ffn = self._hyper_connection(w, "hc_ffn", i, n_mix, 3)
        L.shexp, L.shexp_limit = None, self.clamp_shexp[i]  # (a dense layer's SwiGLU clamped by the shared limit too)
        if L.moe is not None:
            L.moe.norm_weights = self.cfg.expert_weights_norm  # (Kimi's are always renormalised, GLM's where the file says)
            L.moe.swiglu_limit, L.moe.clamp_gate_first = self.clamp_exp[i], True
            L.shexp, L.moe.shared = L.moe.shared, None
        return L

    def load_kda(self, w: WeightLoader, i: int, low_rank: bool = True) -> KDA:
        K = super().load_kda(w, i)
        K.eps = L2_EPS
        if self.lower_bound is not None:  # (the bounded decay reads exp(A_log): ssm_a holds -exp(A_log))
            K.A, K.lower_bound = -K.A, self.lower_bound
        return K

    def mla_attend(self, L: Any, lc: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Kimi Linear's MLA; on the GPU without its ``mla_qk`` (which lays the heads out ``[pe, nope]`` and needs a
        ``pe``): the nope MLA's queries and keys are ``q_raw``'s and ``k_nope``'s heads as they are."""
        if self.be.name == "cpu":
            return super().mla_attend(L, lc, xn, pos)
        c, buf = self.cfg, self.buf
        T, H, D, Dv, rank = xn.shape[0], c.n_head, c.head_dim, c.head_dim_v, self.kv_rank
        q, kva, kvc = buf.get("q_raw", T, H * D), buf.get("kv_a", T, rank), buf.get("kv_c", T, rank)
        k, v, att = buf.get("k_nope", T, H * D), buf.get("v", T, H * Dv), buf.get("att", T, H * Dv)
        mla_project(self.be, L, xn, buf, c.norm_eps, q, kva, kvc, k, v)
        lc.update_and_attend(q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, Dv), pos, att.reshape(T, H, Dv))
        return att

    def hc_pre(self, hc: HyperConnection, streams: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``cur`` = the streams ``[T, hc, n_embd]`` weighed by ``pre`` into one row a token; returns ``post`` ``[T, hc]``
        and ``comb`` ``[T, src, dst]``, what the block's output and the streams go back in by (llama.cpp's ``build_hc_pre``)."""
        n, T = self.n_hc, streams.shape[0]
        mixes = self.hc_mixes(hc, streams)
        if self.hc_dev is not None:
            post, comb = self.buf.get("hc_post", T, n), self.buf.get("hc_comb", T, n, n)
            self.hc_dev.pre(mixes, hc.base, hc.scale, streams, cur, post)
            self.hc_dev.sinkhorn(mixes, hc.base, hc.scale, comb, self.hc_iters)
            return post, comb
        pre = sigmoid(mixes[:, :n] * hc.scale[0] + hc.base[:n]) + np.float32(self.hc_eps)
        post = np.float32(self.hc_post_scale) * sigmoid(mixes[:, n : 2 * n] * hc.scale[1] + hc.base[n : 2 * n])
        comb = sinkhorn((mixes[:, 2 * n :] * hc.scale[2] + hc.base[2 * n :]).reshape(T, n, n), self.hc_iters, self.hc_eps)
        np.einsum("th,the->te", pre, streams, out=cur)
        return post, comb

    def hc_post(self, streams: np.ndarray, out: np.ndarray, post: np.ndarray, comb: np.ndarray) -> None:
        """``stream_dst = post_dst * out + sum_src comb[src, dst] stream_src`` in place (llama.cpp's ``build_hc_post``)."""
        if self.hc_dev is not None:
            self.hc_dev.mix(streams, post, comb, out)
            return
        mixed = np.einsum("tsd,tse->tde", comb, streams)
        np.multiply(post[:, :, None], out[:, None, :], out=streams)
        streams += mixed

    def swiglu(self, gate: Any, up: Any, down: Any, xn: np.ndarray, out: np.ndarray, limit: float, accumulate: bool) -> None:
        """``out (+)= down(silu(min(g, limit)) * clamp(u, -limit, limit))`` of ``g, u = gate xn, up xn`` (ggml's
        ``swiglu_clamp``; unclamped where ``limit`` is 0)."""
        be, T, n_ff = self.be, xn.shape[0], gate.shape[0]
        g, u = self.buf.get("g5_gate", T, n_ff), self.buf.get("g5_up", T, n_ff)
        be.linear_many((gate, up), xn, (g, u))
        if limit > 0.0:
            clamped_glu(be, g, u, limit, gate_first=True)
            (be.linear_add if accumulate else be.linear)(down, g, out)
        else:
            be.linear_glu(down, g, u, out, "silu", accumulate=accumulate)

    def ffn(self, L: Any, xn: np.ndarray, out: np.ndarray) -> None:
        """``out`` = the layer's FFN of its normed input: the routed experts and the shared ones, or the dense SwiGLU."""
        if L.moe is None:
            self.swiglu(L.w_gate, L.w_up, L.w_down, xn, out, L.shexp_limit, accumulate=False)
            return
        moe_add(self.be, L.moe, xn, out, self.buf, accumulate=False)
        if L.shexp is not None:
            self.swiglu(L.shexp.gate, L.shexp.up, L.shexp.down, xn, out, L.shexp_limit, accumulate=True)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf, eps = self.cfg, self.be, self.buf, self.cfg.norm_eps
        T, E = len(tokens), c.n_embd
        x, xn, out = buf.get("x", T, E), buf.get("xn", T, E), buf.get("o", T, E)
        streams = buf.get("hc_streams", T, self.n_hc, E)
        be.get_rows(self.tok_embd, tokens, x)
        if self.hc_dev is not None:  # every stream the embedding
            self.hc_dev.fill(streams, x)
        else:
            streams[...] = x[:, None, :]
        for il, L in enumerate(self.layers):
            post, comb = self.hc_pre(L.hc_attn, streams, x)
            be.rms_norm(x, L.attn_norm, eps, xn)
            if isinstance(L, KDALayer):
                be.linear(L.kda.wo, self.kda_y(L.kda, cache[il], xn, pos), out)
            else:
                be.linear(L.wo, self.mla_attend(L, cache[il], xn, pos), out)
            self.trace("attn_out", il, out)
            self.hc_post(streams, out, post, comb)
            post, comb = self.hc_pre(L.hc_ffn, streams, x)
            be.rms_norm(x, L.ffn_norm, eps, xn)
            self.ffn(L, xn, out)
            self.hc_post(streams, out, post, comb)
            self.trace("l_out", il, streams)
        if self.hc_dev is not None:  # (the head reads the streams' mean)
            self.hc_dev.mean(streams, x)
        else:
            np.multiply(streams.sum(axis=1), np.float32(1.0 / self.n_hc), out=x)
        self.output_head(x, out_rows, logits)
