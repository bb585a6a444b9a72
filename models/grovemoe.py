"""GroveMoE (inclusionAI's GroveMoE-Base and GroveMoE-Inst, 33B with 3.14-3.28B active), as llama.cpp's GROVEMOE graph.

Qwen3-MoE's block (``llama.py``: Q and K RMS-normalised per head before the neox rope) whose FFN is a mixture of
experts (``moe.py``) with *chunk experts* beside it ("adjugate experts": the checkpoint's experts come in groups of
``experts_per_group``, and each group shares one small expert):

* the routed experts as Qwen3-MoE's: a softmax router, the top ``expert_used_count`` (llama.cpp chooses them by the
  logits' sigmoid, which orders them as the softmax does), weighted by their probabilities renormalised;
* then the chunk experts (``ffn_{gate,up,down}_chexps``: ``expert_count / experts_per_group`` SwiGLU experts
  ``expert_chunk_feed_forward_length`` wide, else as the routed experts) as llama.cpp's graph runs them: on the routed
  experts' *output* (not the FFN's input), the chunk expert of each chosen expert ``e`` being
  ``e // experts_per_group`` (two chosen experts of one group run it twice), weighted by the router's probability of
  expert ``e // experts_per_group`` (the probabilities indexed by the chunk expert's number, as llama.cpp's graph
  reads them) renormalised over the chosen (the sum they are divided by, often tiny, floored at 6.1e-5 as llama.cpp
  floors it); the chunk experts' output times ``expert_group_scale`` added to the routed experts'.

On ``--device gpu`` both mixtures run in kernels (:meth:`GroveMoeModel.grove_add_device`): the routed experts chosen by
moe.cu's routing kernel, the chunk experts' ids and weights read off that choice by moe2.cu's, so a decode step brings
nothing to the host (the slots summed in one launch, where the CPU adds them slot by slot: float32 rounding apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, Buffers, WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import MoE, check_expert_counts, experts_add, route

#: llama.cpp's floor on the sum a mixture's chosen weights are divided by (the smallest normal float16)
WEIGHTS_SUM_MIN = np.float32(6.103515625e-5)

# (llama.cpp's LLM_TENSOR_FFN_GATE_CHEXPS, _UP_, _DOWN_)
TENSOR_NAMES.update({f"ffn_{p}_chexps": f"blk.{{i}}.ffn_{p}_chexps.weight" for p in ("gate", "up", "down")})


@dataclass
class GroveMoeLayer(LlamaLayer):
    chunk: MoE | None = None  # the chunk experts (their router the layer's own: llama.cpp routes both with one)


class GroveMoeModel(LlamaModel):
    archs = ("grovemoe",)
    head_qk_norms = "GroveMoE"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        for key in ("experts_per_group", "expert_group_scale"):  # (llama.cpp requires them)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata grovemoe.{key} is missing; the file is not a complete model")
        # (the chunk experts' width: the routed experts' where unstated, as llama.cpp's loader defaults it)
        self.n_ff_chexp = int(g.arch_get("expert_chunk_feed_forward_length", 0) or 0) or cfg.n_ff_exp
        self.n_group_experts = int(g.arch_get("experts_per_group"))
        self.group_scale = float(g.arch_get("expert_group_scale"))
        if self.n_group_experts <= 0 or cfg.n_expert % self.n_group_experts:
            raise GGUFError(f"{g.path}: {cfg.n_expert} experts in groups of experts_per_group {self.n_group_experts}: "
                            "not a GroveMoE model")  # fmt: skip
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> GroveMoeLayer:
        c = self.cfg
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        L = GroveMoeLayer(**vars(super().load_layer(w, i)))
        L.moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
        n_chunk = c.n_expert // self.n_group_experts
        L.chunk = MoE(
            router=L.moe.router,
            gate=w.experts("ffn_gate_chexps", i, n_chunk, self.n_ff_chexp, c.n_embd),
            up=w.experts("ffn_up_chexps", i, n_chunk, self.n_ff_chexp, c.n_embd),
            down=w.experts("ffn_down_chexps", i, n_chunk, c.n_embd, self.n_ff_chexp),
            n_expert=n_chunk, n_used=min(c.n_expert_used, n_chunk), norm_weights=True,
        )  # fmt: skip
        return L

    def grove_add(self, L: GroveMoeLayer, xn: np.ndarray, x: np.ndarray, buf: Buffers) -> None:
        """``x += `` the routed experts' output ``y`` of ``xn`` plus ``expert_group_scale`` times the chunk experts' of ``y``."""
        be, moe, ch = self.be, L.moe, L.chunk
        T, n_embd = xn.shape
        logits = buf.get("moe_router", T, moe.n_expert)
        be.linear(moe.router, xn, logits)
        if be.name != "cpu":
            self.grove_add_device(L, xn, x, buf, logits)
            return
        logits = be.to_host(logits)
        top, wts = route(logits, moe.n_used, moe.norm_weights)
        y = buf.get("grove_moe_out", T, n_embd)
        y.fill(0.0)
        experts_add(be, moe, xn, y, buf, top, wts)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z, dtype=np.float32)
        p /= p.sum(axis=1, keepdims=True)
        cid = top[:, : ch.n_used] // self.n_group_experts
        cw = np.take_along_axis(p, cid, axis=1)  # (the probability of expert cid, not of the chosen one: llama.cpp's)
        # (renormalised as llama.cpp's build_moe_ffn does, the sum clamped from below at float16's smallest normal: the
        # probabilities of experts the router did not choose may be tiny, and their chunk experts' weights then too)
        cw = (cw / np.maximum(cw.sum(axis=1, keepdims=True), WEIGHTS_SUM_MIN)).astype(np.float32)
        out = buf.get("grove_chunk_out", T, n_embd)
        out.fill(0.0)
        for j in range(ch.n_used):  # (slot by slot: two chosen experts of one group run its chunk expert twice)
            experts_add(be, ch, y, out, buf, cid[:, j : j + 1], cw[:, j : j + 1])
        out *= np.float32(self.group_scale)
        x += y
        x += out

    def grove_add_device(self, L: GroveMoeLayer, xn: Any, x: Any, buf: Buffers, logits: Any) -> None:
        """:meth:`grove_add` on a device, from the router's ``logits``: the routed experts' output ``y``, then the chunk
        experts of ``y`` (their ids and weights, ``expert_group_scale`` in them, by ``Backend.moe_chunk_route``)."""
        be, moe, ch = self.be, L.moe, L.chunk
        T, n_embd = xn.shape
        k, kc = moe.n_used, ch.n_used
        n_ff, n_ff_ch = moe.up.shape[0] // moe.n_expert, ch.up.shape[0] // ch.n_expert
        ids, wts = buf.get("moe_ids", T, k, dtype=np.int32), buf.get("moe_wts", T, k)
        be.moe_route(logits, k, "softmax", moe.norm_weights, 1.0, None, None, (0, 0), ids, wts)  # (as grove_add's route)
        y = buf.get("grove_moe_out", T, n_embd)
        be.moe_experts(moe.gate, moe.up, moe.down, n_ff, ids, wts, xn, y, buf.get("moe_h", T, k * n_ff), None, moe.act, False)
        cids, cw = buf.get("grove_cids", T, kc, dtype=np.int32), buf.get("grove_cw", T, kc)
        be.moe_chunk_route(logits, ids, self.n_group_experts, self.group_scale, cids, cw)
        be.add(x, y)
        be.moe_experts(ch.gate, ch.up, ch.down, n_ff_ch, cids, cw, y, x, buf.get("grove_h", T, kc * n_ff_ch), None, ch.act, True)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
            self.grove_add(L, xn, x, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
