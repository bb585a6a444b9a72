"""Kimi K3 (Moonshot's: ``kimi-k3``), as llama.cpp 0.3.36's graph of that name (src/models/kimi-k3.cpp): Kimi Linear's
layers (``kimi_linear.py``: Kimi Delta Attention where the per-layer ``attention.head_count_kv`` is 0, rope-less MLA
elsewhere, leading dense layers, sigmoid-routed experts with ``exp_probs_b`` beside a shared expert) with K3's own
parts, which are all this module adds:

* cross-layer residual attention (``attn_res.block_size`` above 0).  Every ``block_size``-th layer banks its raw input
  as a checkpoint and restarts the stream from its mixer's output alone; the mixer's and the FFN's inputs (and the
  final norm's) are not the stream but a softmax mix of the checkpoints and the stream, each scored by
  ``sum(rms_norm(s) * score)`` with the layer's ``attn_res_score``/``ffn_res_score`` (``output_res_score``)::

      h = mix(checkpoints, x; attn_res_score);  bank x (as a checkpoint) where il % block_size == 0
      a = mixer(rms_norm(h) * attn_norm);       x = a where banked, else x + a
      h = mix(checkpoints, x; ffn_res_score);   x = x + ffn(rms_norm(h) * ffn_norm)

  (the scores read the RMS-normed values, the sum the raw ones; layer 0's first mix has nothing banked: the stream);
* latent experts (``expert_latent_length`` above 0): the routed experts run on ``ffn_routed_down x`` at the latent
  width, their weighted sum RMS-normed (``ffn_routed_norm``, where the file has it) and brought back by
  ``ffn_routed_up``; the router and the shared expert read the full-width ``x``;
* situ in place of SwiGLU everywhere (dense FFN, routed and shared experts):
  ``beta * tanh(g / beta) * sigmoid(g) * lb * tanh(u / lb)`` (``activation.situ_beta``, ``situ_linear_beta``; ``u``
  as it is where lb <= 0);
* MLA's output gated per channel before ``attn_output``: ``att * sigmoid(attn_gate xn)`` (``attn_gate``
  [n_head * v_head_dim, n_embd], optional), from the normed layer input;
* the KDA output gate one full-rank ``ssm_g`` (kimi_linear.py's ``FULL_KDA_GATE``) beside the low-rank decay; where
  ``kda.gate_lower_bound`` is stated the decay is bounded, ``lb * sigmoid(exp(A_log) * (f_b(f_a x) + dt_bias))``
  (kimi_linear.py's ``lower_bound``, Ling 3's form, with ``ssm_a`` = -exp(A_log) negated), else Kimi's softplus;
* the experts' weights renormalised only where ``expert_weights_norm`` says (Kimi's always), times
  ``expert_weights_scale``.

On ``--device gpu`` the KDA and the MLA run on Kimi Linear's kernels (``gpu_delta.py``), the MLA gate on the backend's
``sigmoid_mul``; the checkpoints are slots of one device buffer and the residual mix one launch (attn_res.cu,
``ops/gpu/attn_res.py``); the experts are routed on the device (``moe_route``) and run at the latent width with situ as
moe2.cu's act ``"situ"``, the dense FFN's and the shared expert's situ its element-wise form (``situ_mul``).  The CPU's
host numpy is kept there; a device decode step launches only kernels and is captured as a CUDA graph.  Refused in one
line: a ``kda.gate_lower_bound`` not below 0 and Kimi's refusals (fused gate-and-up experts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from ..ops.host import sigmoid
from .common import TENSOR_NAMES, WeightLoader
from .kimi_linear import KDA, KDALayer, KimiLinearModel
from .moe import MoE, expert, load_shared_expert, route

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_ATTN_RES_SCORE, _FFN_RES_SCORE, _OUTPUT_RES_SCORE, _FFN_ROUTED_DOWN/UP/NORM
    "attn_res_score": "blk.{i}.attn_res_score.weight",
    "ffn_res_score": "blk.{i}.ffn_res_score.weight",
    "output_res_score": "output_res_score.weight",
    "ffn_routed_down": "blk.{i}.ffn_routed_down.weight",
    "ffn_routed_up": "blk.{i}.ffn_routed_up.weight",
    "ffn_routed_norm": "blk.{i}.ffn_routed_norm.weight",
})  # fmt: skip


def situ(g: np.ndarray, u: np.ndarray, beta: float, linear_beta: float) -> np.ndarray:
    """K3's GLU ``beta*tanh(g/beta)*sigmoid(g) * linear_beta*tanh(u/linear_beta)`` (``u`` as it is where
    ``linear_beta`` <= 0), float32, as llama.cpp's ``kimi_k3_situ``."""
    b = np.float32(beta)
    a = b * np.tanh(g / b) * sigmoid(g)
    if linear_beta > 0.0:
        lb = np.float32(linear_beta)
        u = lb * np.tanh(u / lb)
    return (a * u).astype(np.float32)


class KimiK3Model(KimiLinearModel):
    archs = ("kimi-k3",)
    GATED_MLA = True  # (its attn_gate, read below: per channel)
    FULL_KDA_GATE = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        lb = g.arch_get("kda.gate_lower_bound")
        self.lower_bound = None if lb is None else float(lb)  # (None: Kimi's softplus decay)
        if self.lower_bound is not None and not self.lower_bound < 0.0:
            raise UnsupportedModelError(f"{g.path}: kimi-k3 with kda.gate_lower_bound {self.lower_bound} is not supported (below 0 is)")
        for key in ("attn_res.block_size", "activation.situ_beta", "activation.situ_linear_beta"):  # (llama.cpp requires them)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata kimi-k3.{key} is missing; the file is not a complete model")
        self.res_block = int(g.arch_get("attn_res.block_size"))
        self.latent_width = int(g.arch_get("expert_latent_length", 0) or 0)
        self.situ_beta = float(g.arch_get("activation.situ_beta"))
        self.situ_linear_beta = float(g.arch_get("activation.situ_linear_beta"))
        if self.situ_beta == 0.0:
            raise GGUFError(f"{g.path}: metadata kimi-k3.activation.situ_beta is 0; the file is not a supported model")
        #: the file's leading dense layers (Deepseek2's n_dense_lead is set to every layer while loading, so that every
        #: layer's FFN comes through load_dense_ffn below, the latent experts included)
        self.k3_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.output_res_score = w.vector("output_res_score") if self.res_block > 0 else None
        #: the checkpoints a forward banks (layers 0, res_block, 2 res_block...): a device's bank buffer's slots
        self.n_slots = -(-cfg.n_layer // self.res_block) if self.res_block > 0 else 0
        self.res_dev = None  # the device's residual-mix kernels (ops/gpu/attn_res.py); the CPU's are host numpy
        if backend.name != "cpu":
            from ..ops.gpu import attn_res  # (only here: the CPU's runs never load the GPU's modules)

            self.res_dev = attn_res

    def load_layer(self, w: WeightLoader, i: int) -> Any:
        c = self.cfg
        self.n_dense_lead = c.n_layer
        L = super().load_layer(w, i)
        L.attn_res_score = w.vector("attn_res_score", i) if self.res_block > 0 else None
        L.ffn_res_score = w.vector("ffn_res_score", i) if self.res_block > 0 else None
        L.attn_gate = None
        if not c.ssm_layers[i] and w.has("attn_gate", i):
            L.attn_gate = w.matrix("attn_gate", i)
            if tuple(L.attn_gate.shape) != (c.n_head * c.head_dim_v, c.n_embd):
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_gate.weight has shape {tuple(L.attn_gate.shape)}, expected "
                                f"{(c.n_head * c.head_dim_v, c.n_embd)}; the file is not a supported model")  # fmt: skip
        if L.moe is not None:
            L.moe.norm_weights = c.expert_weights_norm  # (Kimi's are always renormalised, K3's where the file says)
        return L

    def load_dense_ffn(self, w: WeightLoader, i: int, L: Any) -> None:
        """Layer i's FFN: a leading dense layer's gate/up/down, else the experts (at the latent width where the file
        states one) with their down and up projections, the shared expert at n_embd."""
        c = self.cfg
        L.moe = None
        if i < self.k3_dense_lead:
            super().load_dense_ffn(w, i, L)
            return
        if c.n_expert <= 0:
            raise GGUFError(f"{w.g.path}: blk.{i} is past leading_dense_block_count {self.k3_dense_lead} but the file states no experts")
        width = self.latent_width or c.n_embd
        if not 0 < c.n_expert_used <= c.n_expert:
            raise GGUFError(f"{w.g.path}: expert_used_count {c.n_expert_used} is not in 1..{c.n_expert} (expert_count)")
        router = w.matrix("ffn_gate_inp", i)
        if tuple(router.shape) != (c.n_expert, c.n_embd):
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_inp.weight has shape {tuple(router.shape)}, expected "
                            f"{(c.n_expert, c.n_embd)}; the file is not a supported model")  # fmt: skip
        # (the routed experts at the latent width, the shared expert at n_embd: load_moe takes one width for both)
        moe = MoE(router=router, gate=w.experts("ffn_gate_exps", i, c.n_expert, c.n_ff_exp, width),
                  up=w.experts("ffn_up_exps", i, c.n_expert, c.n_ff_exp, width), down=w.experts("ffn_down_exps", i, c.n_expert, width, c.n_ff_exp),
                  n_expert=c.n_expert, n_used=c.n_expert_used, norm_weights=True, gating=self.gating,
                  bias=w.host_vector("exp_probs_b", i, required=False), shared=load_shared_expert(w, i, c.n_embd, None))  # fmt: skip
        n_ff_sh = c.n_ff_exp * max(1, int(w.g.arch_get("expert_shared_count", 0) or 0))  # (llama.cpp's width)
        if moe.shared is not None and moe.shared.gate.shape[0] != n_ff_sh:
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight is {moe.shared.gate.shape[0]} wide, expected "
                            f"{n_ff_sh}; the file is not a supported model")  # fmt: skip
        moe.weights_scale = self.weights_scale
        moe.routed_down = moe.routed_up = moe.routed_norm = None
        if self.latent_width > 0:
            moe.routed_down, moe.routed_up = w.matrix("ffn_routed_down", i), w.matrix("ffn_routed_up", i)
            for role, m, shape in (("ffn_routed_down", moe.routed_down, (width, c.n_embd)), ("ffn_routed_up", moe.routed_up, (c.n_embd, width))):
                if tuple(m.shape) != shape:
                    raise GGUFError(f"{w.g.path}: blk.{i}.{role}.weight has shape {tuple(m.shape)}, expected {shape}; the file is not a supported model")
            moe.routed_norm = w.vector("ffn_routed_norm", i, required=False)
        L.moe = moe

    def load_kda(self, w: WeightLoader, i: int, low_rank: bool = True) -> KDA:
        K = super().load_kda(w, i)  # (the low-rank decay, the full-rank ssm_g: FULL_KDA_GATE)
        if self.lower_bound is not None:  # (the bounded decay reads exp(A_log): ssm_a holds -exp(A_log))
            K.A, K.lower_bound = -K.A, self.lower_bound
        return K

    def mla_attend(self, L: Any, lc: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Kimi's MLA, each channel of its output times its sigmoid gate (before ``attn_output``)."""
        att = super().mla_attend(L, lc, xn, pos)
        if L.attn_gate is not None:
            gate = self.buf.get("k3_mla_gate", xn.shape[0], L.attn_gate.shape[0])
            self.be.linear(L.attn_gate, xn, gate)
            self.be.sigmoid_mul(att, gate)
        return att

    def res_mix(self, banked: list[np.ndarray], x: np.ndarray, score: Any) -> np.ndarray:
        """The softmax mix of the checkpoints ``banked`` and the stream ``x`` [T, n_embd] (``x`` itself where none is
        banked), each scored by ``sum(rms_norm(s) * score)``."""
        if not banked:
            return x
        eps, w = np.float32(self.cfg.norm_eps), np.asarray(score, np.float32)
        src = np.stack(banked + [x], axis=1)  # [T, n_ckpt + 1, n_embd]: the stream last, as llama.cpp's concat
        sc = ((src / np.sqrt(np.mean(src * src, axis=2, keepdims=True) + eps)) * w).sum(axis=2)
        p = np.exp(sc - sc.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return np.einsum("tc,tce->te", p, src).astype(np.float32)

    def mix(self, banked: list[np.ndarray], n_bank: int, x: Any, score: Any) -> Any:
        """:meth:`res_mix` of the ``n_bank`` checkpoints banked so far and the stream ``x``: the CPU's in host numpy
        (``banked`` its host copies), a device's one launch reading the bank buffer's first ``n_bank`` slots."""
        if self.res_dev is None or n_bank == 0:
            return self.res_mix(banked, x, score)
        T, E = x.shape
        out = self.buf.get("k3_mix", T, E)
        self.res_dev.mix(self.buf.get("k3_bank", T, self.n_slots, E), n_bank, x, score, self.cfg.norm_eps, out)
        return out

    def bank(self, banked: list[np.ndarray], n_bank: int, x: Any) -> None:
        """``x`` kept as checkpoint ``n_bank``: a host copy appended to ``banked`` on the CPU, the bank buffer's slot on
        a device."""
        if self.res_dev is None:
            banked.append(x.copy())
        else:
            self.res_dev.bank(x, self.buf.get("k3_bank", x.shape[0], self.n_slots, x.shape[1]), n_bank)

    def situ_glu(self, g: Any, u: Any) -> Any:
        """situ of ``g`` and ``u``: a new host array on the CPU (:func:`situ`), ``g`` in place on a device (a kernel)."""
        if self.be.name == "cpu":
            return situ(g, u, self.situ_beta, self.situ_linear_beta)
        self.be.situ_mul(g, u, g, self.situ_beta, self.situ_linear_beta)
        return g

    def ffn_add(self, L: Any, xn: np.ndarray, x: np.ndarray) -> None:
        """``x +=`` layer L's FFN of ``xn``: the dense situ FFN, or the latent experts plus the shared expert."""
        be, buf, T = self.be, self.buf, xn.shape[0]
        act = self.situ_glu
        moe: MoE | None = L.moe
        if moe is None:
            n_ff = L.w_gate.shape[0]
            g, u = buf.get("gate", T, n_ff), buf.get("up", T, n_ff)
            be.linear_many((L.w_gate, L.w_up), xn, (g, u))
            be.linear_add(L.w_down, act(g, u), x)
            return
        logits = buf.get("moe_router", T, moe.n_expert)
        be.linear(moe.router, xn, logits)  # (the router reads the full-width input)
        if be.name != "cpu":
            self.device_experts_add(moe, logits, xn, x)
        else:
            self.host_experts_add(moe, logits, xn, x)
        sh = moe.shared
        if sh is not None:  # (the shared expert at n_embd, on the un-projected input)
            g, u = buf.get("shexp_gate", T, sh.gate.shape[0]), buf.get("shexp_up", T, sh.gate.shape[0])
            be.linear_many((sh.gate, sh.up), xn, (g, u))
            be.linear_add(sh.down, act(g, u), x)

    def latent_in(self, moe: MoE, xn: Any) -> Any:
        """The routed experts' input: ``ffn_routed_down xn`` at the latent width (``xn`` where the file has none)."""
        if moe.routed_down is None:
            return xn
        xe = self.buf.get("k3_latent_in", xn.shape[0], moe.up.shape[1])
        self.be.linear(moe.routed_down, xn, xe)
        return xe

    def device_experts_add(self, moe: MoE, logits: Any, xn: Any, x: Any) -> None:
        """``x +=`` the routed experts on a device: chosen and weighed by ``moe_route``, run at the latent width by
        moe2.cu with situ, their sum normed and brought back as the CPU's (nothing comes to the host)."""
        be, buf, T = self.be, self.buf, xn.shape[0]
        n_ff, k = moe.up.shape[0] // moe.n_expert, moe.n_used
        ids, wts = buf.get("moe_ids", T, k, dtype=np.int32), buf.get("moe_wts", T, k)
        be.moe_route(logits, k, moe.gating, moe.norm_weights, moe.weights_scale, moe.bias, None, (moe.n_group, moe.n_group_used), ids, wts)
        xe = self.latent_in(moe, xn)
        out = x if moe.routed_up is None else buf.get("k3_latent_out", T, moe.up.shape[1])
        be.moe_experts_x(moe.gate, moe.up, moe.down, n_ff, ids, wts, xe, out, buf.get("moe_h", T, k * n_ff), "situ",
                         self.situ_beta, accumulate=out is x, limit2=self.situ_linear_beta)  # fmt: skip
        if moe.routed_norm is not None:
            be.rms_norm(out, moe.routed_norm, self.cfg.norm_eps, out)
        if moe.routed_up is not None:
            be.linear_add(moe.routed_up, out, x)

    def host_experts_add(self, moe: MoE, logits: np.ndarray, xn: np.ndarray, x: np.ndarray) -> None:
        """``x +=`` the routed experts on the CPU: routed in host numpy, each chosen expert over its tokens."""
        be, buf, T = self.be, self.buf, xn.shape[0]
        act = self.situ_glu
        top, wts = route(np.asarray(logits), moe.n_used, moe.norm_weights, moe.gating, moe.bias, moe.n_group, moe.n_group_used)
        wts *= np.float32(moe.weights_scale)
        width = moe.up.shape[1]
        xe = self.latent_in(moe, xn)
        n_ff = moe.up.shape[0] // moe.n_expert
        out = np.zeros((T, width), np.float32)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            xs = np.ascontiguousarray(xe[rows])
            g, u, d = buf.get("moe_gate", len(rows), n_ff), buf.get("moe_up", len(rows), n_ff), buf.get("moe_down", len(rows), width)
            be.linear_many((expert(moe.gate, e, moe.n_expert), expert(moe.up, e, moe.n_expert)), xs, (g, u))
            be.linear(expert(moe.down, e, moe.n_expert), act(g, u), d)
            out[rows] += d * wts[rows, slot][:, None]
        if moe.routed_norm is not None:
            be.rms_norm(out, moe.routed_norm, self.cfg.norm_eps, out)
        if moe.routed_up is not None:
            be.linear_add(moe.routed_up, out, x)
        else:
            x += out

    def forward(self, tokens, pos, cache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, a = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd), buf.get("k3_mixer", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        banked: list[np.ndarray] = []  # the checkpoints: the raw inputs of every res_block-th layer (the CPU's)
        n_bank = 0  # (as many on a device, in its bank buffer)
        for il, L in enumerate(self.layers):
            h = self.mix(banked, n_bank, x, L.attn_res_score)
            bank = self.res_block > 0 and il % self.res_block == 0
            if bank:
                self.bank(banked, n_bank, x)
                n_bank += 1
            be.rms_norm(h, L.attn_norm, c.norm_eps, xn)
            if isinstance(L, KDALayer):
                be.linear(L.kda.wo, self.kda_y(L.kda, cache[il], xn, pos), a)
            else:
                be.linear(L.wo, self.mla_attend(L, cache[il], xn, pos), a)
            if bank:  # (the stream restarts from the mixer's output; its input is kept as the checkpoint)
                be.copy(a, x)
            else:
                be.add(x, a)
            self.trace("attn_out", il, x)
            h = self.mix(banked, n_bank, x, L.ffn_res_score)
            be.rms_norm(h, L.ffn_norm, c.norm_eps, xn)
            self.ffn_add(L, xn, x)
            self.trace("l_out", il, x)
        h = self.mix(banked, n_bank, x, self.output_res_score)
        self.output_head(h, out_rows, logits)
