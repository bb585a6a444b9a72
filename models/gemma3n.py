"""Gemma 3n (text; the E2B and E4B edge models): https://ai.google.dev/gemma/docs/gemma-3n

Gemma 3's block (sandwich norms, QK-norm, GELU-gated FFN, window and global layers) with these differences,
as llama.cpp's ``gemma3n`` graph has them:

- AltUp: the residual stream is ``n_altup`` streams.  The embedding is the first; the others are linear maps
  of it rescaled to its norm.  Each layer *predicts* every stream as a token-dependent mix of all of them
  (coefficients from a tanh router on the active stream), runs attention and FFN on the active prediction
  only, then *corrects* every stream by the innovation (output minus prediction) times routed coefficients.
  At the end the other streams are mapped back, rescaled, and all are averaged.
- LAuReL: a low-rank residual (``laurel_l``, ``laurel_r``, a norm) beside attention; the two are added and
  scaled by 1/sqrt(2).
- Per-layer inputs: a second embedding table gives every token a small vector per layer, added to a
  projection of the embedding; each layer gates it by its corrected active stream (GELU) and adds its
  projection back to the streams other than the first.
- KV sharing: layers from ``n_layer_kv_from_start`` on compute no K/V; they attend over the cache of the last
  earlier layer of their kind (window or global), storing nothing (``LayerSpec.kv_from``).
- Activation sparsity: the first ``n_layer_sparsity`` layers' FFN gates keep only what exceeds
  mean + 1.645 std of the row (shifted down by that cutoff), before the GELU.
- V is RMS-normed too (no weight); attention is unscaled; 4 window layers then 1 global; logits soft-capped.

The CPU's forward does the AltUp arithmetic in numpy on the host arrays; the GPU's (:meth:`Gemma3nModel.forward_device`)
does it in ops/gpu/gemma.cu's kernels on device buffers, so its decode steps are captured as CUDA graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .gemma3 import Gemma3Layer

TENSOR_NAMES.update({  # Gemma 3n's names (llama.cpp's LLM_TENSOR_ALTUP_*, LAUREL_*, PER_LAYER_*)
    "per_layer_tok_embd": "per_layer_token_embd.weight",
    "per_layer_model_proj": "per_layer_model_proj.weight",
    "per_layer_proj_norm": "per_layer_proj_norm.weight",
    "altup_proj": "altup_proj.weight",
    "altup_unembd_proj": "altup_unembd_proj.weight",
    "per_layer_inp_gate": "blk.{i}.inp_gate.weight",
    "per_layer_proj": "blk.{i}.proj.weight",
    "per_layer_post_norm": "blk.{i}.post_norm.weight",
    "altup_correct_coef": "blk.{i}.altup_correct_coef.weight",
    "altup_correct_scale": "blk.{i}.altup_correct_scale.weight",
    "altup_predict_coef": "blk.{i}.altup_predict_coef.weight",
    "altup_router": "blk.{i}.altup_router.weight",
    "altup_router_norm": "blk.{i}.altup_router_norm.weight",
    "laurel_l": "blk.{i}.laurel_l.weight",
    "laurel_r": "blk.{i}.laurel_r.weight",
    "laurel_post_norm": "blk.{i}.laurel_post_norm.weight",
})  # fmt: skip


@dataclass
class Gemma3nLayer(Gemma3Layer):
    laurel_l: Weight  # [laurel_rank, n_embd]
    laurel_r: Weight  # [n_embd, laurel_rank]
    laurel_post_norm: Any  # [n_embd]
    altup_router_norm: Any  # [n_embd]
    altup_router: np.ndarray  # [n_altup, n_embd]
    altup_predict_coef: np.ndarray  # [n_altup*n_altup, n_altup]
    altup_correct_coef: np.ndarray  # [n_altup, n_altup]
    altup_correct_scale: np.ndarray  # [n_embd]
    per_layer_inp_gate: Weight  # [n_embd_altup, n_embd]
    per_layer_proj: Weight  # [n_embd, n_embd_altup]
    per_layer_post_norm: Any  # [n_embd]
    has_kv: bool  # computes and stores its own K/V


class Gemma3nModel(Model):
    archs = ("gemma3n",)
    takes_images = True  # its forward reads Model.input_embd (a gemma3nv picture's rows: runtime/vision_gemma3n.py)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        c = cfg
        w = WeightLoader(g, backend)
        self.g = g
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.per_layer_tok_embd = w.matrix("per_layer_tok_embd")  # [n_vocab, n_layer*n_embd_altup]
        self.per_layer_model_proj = w.matrix("per_layer_model_proj")  # [n_layer*n_embd_altup, n_embd]
        self.per_layer_proj_norm = w.vector("per_layer_proj_norm")  # [n_embd_altup]
        rows = (c.n_embd,) * (c.n_altup - 1)
        self.altup_proj = w.matrix_rows("altup_proj", None, rows)  # n_altup-1 of [n_embd, n_embd]
        self.altup_unembd_proj = w.matrix_rows("altup_unembd_proj", None, rows)
        self.layers = [self.load_layer(w, i) for i in range(c.n_layer)]
        self.rope_global = make_rope(c, n_ctx, c.rope_theta)
        self.rope_local = make_rope(c, n_ctx, c.rope_theta_swa or c.rope_theta)
        self.v_norm = backend.vector(np.ones(c.head_dim_v, np.float32))  # V's RMSNorm has no weight
        if backend.name != "cpu":  # the device forward's: AltUp's small tensors uploaded, its streams and predictions
            self.altup_dev = [tuple(backend.vector(a) for a in (L.altup_router, L.altup_predict_coef, L.altup_correct_coef,
                                                                L.altup_correct_scale)) for L in self.layers]  # fmt: skip
            self.xs = backend.zeros((c.n_altup, n_batch, c.n_embd))  # [n_altup, n_batch, n_embd]: stream c is xs[c, :T]
            self.pred = backend.zeros((c.n_altup, n_batch, c.n_embd))

    def host_matrix(self, w: WeightLoader, role: str, i: int, shape: tuple[int, ...]) -> np.ndarray:
        """A small tensor the host's numpy uses (AltUp's routers and coefficients), float32 in ``shape``."""
        a = w.host_vector(role, i)
        if a.size != math.prod(shape):
            raise GGUFError(f"{self.g.path}: {TENSOR_NAMES[role].format(i=i)} has {a.size} values, expected {shape}; "
                            "the file is not a supported model")  # fmt: skip
        return a.reshape(shape)

    def load_layer(self, w: WeightLoader, i: int) -> Gemma3nLayer:
        c = self.cfg
        n = c.n_altup
        has_kv = c.n_layer_kv_from_start < 0 or i < c.n_layer_kv_from_start
        return Gemma3nLayer(
            attn_norm=w.vector("attn_norm", i),
            wq=w.matrix("wq", i),
            wk=w.matrix("wk", i) if has_kv else None,
            wv=w.matrix("wv", i) if has_kv else None,
            wo=w.matrix("wo", i),
            q_norm=w.vector("q_norm", i),
            k_norm=w.vector("k_norm", i),
            attn_post_norm=w.vector("attn_post_norm", i),
            ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i),
            w_up=w.matrix("w_up", i),
            w_down=w.matrix("w_down", i),
            ffn_post_norm=w.vector("ffn_post_norm", i),
            laurel_l=w.matrix("laurel_l", i),
            laurel_r=w.matrix("laurel_r", i),
            laurel_post_norm=w.vector("laurel_post_norm", i),
            altup_router_norm=w.vector("altup_router_norm", i),
            altup_router=self.host_matrix(w, "altup_router", i, (n, c.n_embd)),
            altup_predict_coef=self.host_matrix(w, "altup_predict_coef", i, (n * n, n)),
            altup_correct_coef=self.host_matrix(w, "altup_correct_coef", i, (n, n)),
            altup_correct_scale=self.host_matrix(w, "altup_correct_scale", i, (c.n_embd,)),
            per_layer_inp_gate=w.matrix("per_layer_inp_gate", i),
            per_layer_proj=w.matrix("per_layer_proj", i),
            per_layer_post_norm=w.vector("per_layer_post_norm", i),
            has_kv=has_kv,
        )

    def kv_source(self, il: int) -> int:
        """The layer whose K/V layer ``il`` attends over: its own, or (past ``n_layer_kv_from_start``) the last
        earlier window layer for a window layer, the last global one for a global layer (llama.cpp's reuse
        rule, which takes the layers just before the cut to be one of each: window, then global)."""
        c = self.cfg
        if self.layers[il].has_kv:
            return il
        return c.n_layer_kv_from_start - (2 if c.is_swa(il) else 1)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        specs = []
        for il in range(c.n_layer):
            src = self.kv_source(il)
            specs.append(LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0,
                                   1.0, 0.0, kv_from=-1 if src == il else src))  # fmt: skip
        return specs

    # ------------------------------------------------------------------ helpers (host numpy, [T, n] rows)
    def linear(self, w: Weight, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], w.n_rows), np.float32)
        self.be.linear(w, np.ascontiguousarray(x, np.float32), out)
        return out

    def rms_norm(self, x: np.ndarray, w: Any) -> np.ndarray:
        out = np.empty_like(x)
        self.be.rms_norm(np.ascontiguousarray(x), w, self.cfg.norm_eps, out)
        return out

    def gelu(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        self.be.gelu(x, out)
        return out

    @staticmethod
    def magnitude(x: np.ndarray) -> np.ndarray:
        """Each row's L2 norm, ``[T, 1]`` (AltUp rescales the streams it makes to the norm of their source)."""
        return np.sqrt(np.sum(x * x, axis=-1, keepdims=True))

    def router_modalities(self, L: Gemma3nLayer, x: np.ndarray) -> np.ndarray:
        """``[T, n_altup]``: tanh of the router over the normed active stream scaled by 1/n_embd."""
        r = self.rms_norm(x, L.altup_router_norm) * (1.0 / self.cfg.n_embd)
        return np.tanh(r @ L.altup_router.T)

    def altup_predict(self, L: Gemma3nLayer, xs: np.ndarray) -> np.ndarray:
        """Every stream predicted as a routed mix of all of them, plus itself: ``[n_altup, T, n_embd]``."""
        n, T = self.cfg.n_altup, xs.shape[1]
        coefs = (self.router_modalities(L, xs[self.cfg.i_altup_act]) @ L.altup_predict_coef.T).reshape(T, n, n)  # [t, out, in]
        return np.einsum("trc,cte->rte", coefs, xs).astype(np.float32) + xs

    def altup_correct(self, L: Gemma3nLayer, pred: np.ndarray, activated: np.ndarray) -> np.ndarray:
        """Every stream's prediction plus the active stream's innovation times 1 + its routed coefficient."""
        innovation = activated - pred[self.cfg.i_altup_act]
        coefs = self.router_modalities(L, activated) @ L.altup_correct_coef.T + 1.0  # [T, n_altup]
        return pred + coefs.T[:, :, None] * innovation[None]

    def gaussian_topk(self, gate: np.ndarray) -> np.ndarray:
        """Activation sparsity: ``relu(x - (mean + k*std))`` per row (the std unbiased), k the normal's 95th
        percentile, so about 5% of a gaussian row survives, shifted down by the cutoff."""
        mean = gate.mean(axis=-1, keepdims=True)
        std = np.sqrt(np.sum((gate - mean) ** 2, axis=-1, keepdims=True) / (gate.shape[-1] - 1))
        return np.maximum(gate - (mean + std * self.cfg.sparsity_std_mul), 0.0).astype(np.float32)

    def per_layer_inputs(self, tokens: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """``[n_layer, T, n_embd_altup]``: the token's per-layer embedding (times sqrt(n_embd_altup)) plus the
        normed projection of its scaled embedding (times 1/sqrt(n_embd)), the sum times 1/sqrt(2)."""
        c = self.cfg
        T, A = len(tokens), c.n_embd_altup
        emb = np.empty((T, c.n_layer * A), np.float32)
        self.be.get_rows(self.per_layer_tok_embd, tokens, emb)
        emb = emb.reshape(T, c.n_layer, A) * math.sqrt(A)
        proj = (self.linear(self.per_layer_model_proj, x0) * (1.0 / math.sqrt(c.n_embd))).reshape(T * c.n_layer, A)
        proj = self.rms_norm(proj, self.per_layer_proj_norm).reshape(T, c.n_layer, A)
        return np.ascontiguousarray(((proj + emb) * (1.0 / math.sqrt(2.0))).transpose(1, 0, 2), np.float32)

    # ------------------------------------------------------------------ forward
    def attention(self, il: int, L: Gemma3nLayer, xn: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:
        """Self-attention of the normed active stream; a layer that shares K/V computes Q alone."""
        c, be = self.cfg, self.be
        T = xn.shape[0]
        cos, sin = self.rope_local if c.is_swa(il) else self.rope_global
        q3 = self.linear(L.wq, xn).reshape(T, c.n_head, c.head_dim)
        att3 = np.empty((T, c.n_head, c.head_dim_v), np.float32)
        if L.has_kv:
            k3 = self.linear(L.wk, xn).reshape(T, c.n_head_kv, c.head_dim)
            v3 = self.linear(L.wv, xn).reshape(T, c.n_head_kv, c.head_dim_v)
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            be.rms_norm_heads(v3, self.v_norm, c.norm_eps)
        else:
            k3 = v3 = None  # (the cache reads the source layer's)
            be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            be.rope(q3, pos, cos, sin, c.rope_neox)
        cache[il].update_and_attend(q3, k3, v3, pos, att3)
        att = att3.reshape(T, c.n_head * c.head_dim_v)
        self.trace("kqv_out", il, att)
        return self.linear(L.wo, att)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        if self.be.name != "cpu":
            self.forward_device(tokens, pos, cache, out_rows, logits)
            return
        c = self.cfg
        T, n, act = len(tokens), c.n_altup, c.i_altup_act
        x0 = np.empty((T, c.n_embd), np.float32)
        if self.input_embd is not None:  # a picture's rows: unscaled, their per-layer inputs token 0's (tokens are 0),
            x0[...] = self.input_embd  # read causally (llama.cpp's multimodal path of the gemma3n graph)
        else:
            self.be.get_rows(self.tok_embd, tokens, x0)
            x0 *= math.sqrt(c.n_embd)
        inp_per_layer = self.per_layer_inputs(tokens, x0)

        # the AltUp streams: the embedding, and its maps rescaled to its norm
        xs = np.empty((n, T, c.n_embd), np.float32)
        xs[0] = x0
        target = self.magnitude(x0)
        for j, wp in enumerate(self.altup_proj, start=1):
            a = self.linear(wp, x0)
            xs[j] = a * target / self.magnitude(a)

        for il, L in enumerate(self.layers):
            pred = self.altup_predict(L, xs)
            active = pred[act]
            xn = self.rms_norm(active, L.attn_norm)
            self.trace("attn_norm", il, xn)
            laurel = self.rms_norm(self.linear(L.laurel_r, self.linear(L.laurel_l, xn)), L.laurel_post_norm) + xn

            attn = self.rms_norm(self.attention(il, L, xn, pos, cache), L.attn_post_norm) + active
            attn_laurel = (attn + laurel) * np.float32(1.0 / math.sqrt(2.0))

            h = self.rms_norm(attn_laurel, L.ffn_norm)
            up, gate = self.linear(L.w_up, h), self.linear(L.w_gate, h)
            if il < c.n_layer_sparsity:
                gate = self.gaussian_topk(gate)
            ffn = self.linear(L.w_down, self.gelu(gate) * up)
            out = self.rms_norm(ffn, L.ffn_post_norm) + attn_laurel

            xs = self.altup_correct(L, pred, out).astype(np.float32)
            # the per-layer input, gated by the corrected active stream, joins the streams after the first
            first = self.gelu(self.linear(L.per_layer_inp_gate, xs[act] * L.altup_correct_scale)) * inp_per_layer[il]
            xs[1:] += self.rms_norm(self.linear(L.per_layer_proj, first), L.per_layer_post_norm)
            self.trace("l_out", il, xs[0])

        # the streams merged back: the others mapped back and rescaled to the active one's norm, then averaged
        target = self.magnitude(xs[act])
        x = xs[0].copy()
        for j, wp in enumerate(self.altup_unembd_proj, start=1):
            u = self.linear(wp, xs[j])
            x += u * target / self.magnitude(u)
        x *= np.float32(1.0 / n)
        self.output_head(x, out_rows, logits)

    # ------------------------------------------------------------------ the device forward (GPU)
    def per_layer_inputs_device(self, tokens: Any, x0: Any) -> Any:
        """:meth:`per_layer_inputs` in backend ops on device buffers: ``[T, n_layer * n_embd_altup]``, layer ``il``'s
        inputs at columns ``il * n_embd_altup`` on (the host's are ``[n_layer, T, n_embd_altup]``)."""
        c, be, buf = self.cfg, self.be, self.buf
        T, A = len(tokens), c.n_embd_altup
        emb, proj = buf.get("pl_emb", T, c.n_layer * A), buf.get("pl_proj", T, c.n_layer * A)
        be.get_rows(self.per_layer_tok_embd, tokens, emb)
        be.scale(emb, math.sqrt(A))
        be.linear(self.per_layer_model_proj, x0, proj)
        be.scale(proj, 1.0 / math.sqrt(c.n_embd))
        rows = proj.reshape(T * c.n_layer, A)
        be.rms_norm(rows, self.per_layer_proj_norm, c.norm_eps, rows)
        be.add(proj, emb)
        be.scale(proj, 1.0 / math.sqrt(2.0))
        return proj

    def attention_device(self, il: int, L: Gemma3nLayer, xn: Any, pos: Any, cache: KVCache, o: Any) -> None:
        """:meth:`attention` on device buffers, its output projection into ``o``."""
        c, be, buf = self.cfg, self.be, self.buf
        T = xn.shape[0]
        cos, sin = self.rope_local if c.is_swa(il) else self.rope_global
        q, att = buf.get("q", T, c.n_head * c.head_dim), buf.get("att", T, c.n_head * c.head_dim_v)
        q3, att3 = q.reshape(T, c.n_head, c.head_dim), att.reshape(T, c.n_head, c.head_dim_v)
        k3 = v3 = None  # (a layer sharing K/V: the cache reads the source layer's)
        if L.has_kv:
            k, v = buf.get("k", T, c.n_head_kv * c.head_dim), buf.get("v", T, c.n_head_kv * c.head_dim_v)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            k3, v3 = k.reshape(T, c.n_head_kv, c.head_dim), v.reshape(T, c.n_head_kv, c.head_dim_v)
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            be.rms_norm_heads(v3, self.v_norm, c.norm_eps)
        else:
            be.linear(L.wq, xn, q)
            be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            be.rope(q3, pos, cos, sin, c.rope_neox)
        cache[il].update_and_attend(q3, k3, v3, pos, att3)
        self.trace("kqv_out", il, att)
        be.linear(L.wo, att, o)

    def forward_device(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        """:meth:`forward`'s arithmetic in backend ops (ops/gpu/gemma.cu for AltUp, the sparse gates and the per-layer
        inputs' gate): every activation a device buffer, nothing brought to the host, so a decode step is captured."""
        c, be, buf = self.cfg, self.be, self.buf
        T, n, act, E, A, eps = len(tokens), c.n_altup, c.i_altup_act, c.n_embd, c.n_embd_altup, c.norm_eps
        xs, pred = self.xs, self.pred
        x0 = xs[0, :T]
        if self.input_embd is not None:  # a picture's rows (host, uploaded): unscaled, their per-layer inputs token 0's
            x0[...] = be.vector(self.input_embd)
        else:
            be.get_rows(self.tok_embd, tokens, x0)
            be.scale(x0, math.sqrt(E))
        pl = self.per_layer_inputs_device(tokens, x0)
        tmp = buf.get("altup_tmp", T, E)
        for j, wp in enumerate(self.altup_proj, start=1):  # the other streams: maps of the embedding, at its norm
            be.linear(wp, x0, tmp)
            be.match_norm(tmp, x0, xs[j, :T])

        xn, o, attn, laurel = (buf.get(name, T, E) for name in ("xn", "o", "altup_attn", "laurel"))
        lr = buf.get("laurel_lr", T, self.layers[0].laurel_l.n_rows)
        cp, cc, g = buf.get("altup_cp", T, n * n), buf.get("altup_cc", T, n), buf.get("pl_gate", T, A)
        for il, L in enumerate(self.layers):
            router, pcoef, ccoef, cscale = self.altup_dev[il]
            be.rms_norm(xs[act, :T], L.altup_router_norm, eps, tmp)
            be.altup_coefs(tmp, router, pcoef, cp, 1.0 / E, 0.0)
            be.altup_predict(xs, cp, pred, T)
            active = pred[act, :T]
            be.rms_norm(active, L.attn_norm, eps, xn)
            self.trace("attn_norm", il, xn)
            be.linear(L.laurel_l, xn, lr)
            be.linear(L.laurel_r, lr, tmp)
            be.rms_norm(tmp, L.laurel_post_norm, eps, laurel)
            be.add(laurel, xn)

            self.attention_device(il, L, xn, pos, cache, o)
            be.rms_norm(o, L.attn_post_norm, eps, attn)
            be.add(attn, active)
            be.add(attn, laurel)
            be.scale(attn, 1.0 / math.sqrt(2.0))

            n_ff = L.w_gate.n_rows
            gate, up = buf.get(f"gate{n_ff}", T, n_ff), buf.get(f"up{n_ff}", T, n_ff)
            be.rms_norm(attn, L.ffn_norm, eps, xn)
            be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
            if il < c.n_layer_sparsity:
                be.gaussian_topk(gate, c.sparsity_std_mul)
            be.linear_glu(L.w_down, gate, up, o, "gelu")
            be.rms_norm_add(o, L.ffn_post_norm, eps, attn)  # (attn: the layer's output now)

            be.rms_norm(attn, L.altup_router_norm, eps, tmp)
            be.altup_coefs(tmp, router, ccoef, cc, 1.0 / E, 1.0)
            be.altup_correct(pred, attn, cc, xs, T, act)
            # the per-layer input, gated by the corrected active stream, joins the streams after the first
            be.mul_vec(xs[act, :T], cscale, tmp)
            be.linear(L.per_layer_inp_gate, tmp, g)
            be.gelu_mul_strided(g, pl, il * A)
            be.linear(L.per_layer_proj, g, o)
            be.rms_norm(o, L.per_layer_post_norm, eps, o)
            for j in range(1, n):
                be.add(xs[j, :T], o)
            self.trace("l_out", il, xs[0, :T])

        # the streams merged back: the others mapped back and rescaled to the active one's norm, then averaged
        x = buf.get("x", T, E)
        be.copy(xs[0, :T], x)
        for j, wp in enumerate(self.altup_unembd_proj, start=1):
            be.linear(wp, xs[j, :T], tmp)
            be.match_norm(tmp, xs[act, :T], x, accumulate=True)
        be.scale(x, 1.0 / n)
        self.output_head(x, out_rows, logits)
