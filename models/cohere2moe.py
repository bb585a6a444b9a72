"""Cohere's mixture-of-experts Command models (``cohere2moe``: North-Mini-Code, 49 layers, 30B-A3B), as llama.cpp's
graph of that name: Command R7B's parallel block (``cohere2.py``: one norm per layer that attention and the FFN both
read, ``x = x + attn(h) + ffn(h)``, windows on some layers, the logits times ``logit_scale``) with what sets it apart:

* the norms (the layers' and the output's, without a bias) are RMSNorms where the file states
  ``attention.layer_norm_rms_epsilon`` (above 0), else LayerNorms at ``attention.layer_norm_epsilon``;
* the window layers are the file's ``sliding_window_pattern`` array (the converter's, from the checkpoint's
  ``layer_types``), else every ``sliding_window_pattern``-th layer (4 unstated) attends globally, the *first* of each
  period (llama.cpp's ``dense_first``), not the last as Command R7B's;
* the window layers rotate Q and K (consecutive pairs), and so do the first ``leading_dense_block_count`` layers
  whatever their window; the other global layers attend without positions.  Every rotating layer at
  ``rope.freq_base`` (llama.cpp's graph reads no ``rope.freq_base_swa`` here, though its loader does);
* the leading dense layers' FFN a SwiGLU; the others' a mixture of experts (``moe.py``) routed by ``sigmoid``
  (``expert_gating_func``, sigmoid unstated), no selection bias, the chosen weights renormalised where
  ``expert_weights_norm`` says (unstated: not) and times ``expert_weights_scale``; where ``expert_shared_count`` is above 0
  a shared SwiGLU expert beside them, and the FFN's output the *average* of the two, ``(experts + shared) / 2``;
* an output head of its own where the file has ``output.weight``, else the token embeddings.

The multi-token-prediction block after the trunk (``nextn_predict_layers``, counted in ``block_count``) is not run,
as llama.cpp's main graph does not.  Refused in one line: experts with gate and up fused (``ffn_gate_up_exps``).
On ``--device gpu`` it runs as Command R7B's block and moe.py's routing do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .cohere2 import Cohere2Layer, Cohere2Model
from .common import WeightLoader
from .moe import MoE, check_expert_counts, gating_func, load_moe, moe_add, weights_scale

#: llama.cpp's expert_gating_func values the graph runs (0, unstated: sigmoid, as llama.cpp defaults it for cohere2moe)
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}
#: the FFN's output where a shared expert runs beside the routed ones: their average (the converter's only strategy)
SHARED_AVERAGE = 0.5


@dataclass
class Cohere2MoeLayer(Cohere2Layer):
    rope: bool = True  # a window layer or a leading dense one: Q and K rotate
    moe: MoE | None = None  # past the leading dense layers: the experts (w_gate, w_up, w_down None)


class Cohere2MoeModel(Cohere2Model):
    archs = ("cohere2moe",)
    #: the metadata llama.cpp requires
    required_keys = ("attention.sliding_window", "logit_scale", "leading_dense_block_count", "expert_feed_forward_length")

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        rms_eps, ln_eps = g.arch_get("attention.layer_norm_rms_epsilon"), g.arch_get("attention.layer_norm_epsilon")
        if rms_eps is None and ln_eps is None:
            raise GGUFError(f"{g.path}: metadata {g.architecture}.attention.layer_norm_epsilon (or _rms_epsilon) is missing; "
                            "the file is not a complete model")  # fmt: skip
        self.rms = bool(rms_eps)  # (llama.cpp: an RMS epsilon of 0 is none, LayerNorms then)
        if not self.rms:
            cfg = dataclasses.replace(cfg, norm_eps=float(ln_eps or 0.0))
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        self.gating = gating_func(g, GATING)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count"))
        self.n_shared = int(g.arch_get("expert_shared_count", 0) or 0)
        self.weights_scale = weights_scale(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        output = WeightLoader(g, backend).matrix("output", required=False)
        if output is not None:  # (else the token embeddings, as Command R7B's always)
            self.output = output

    def load_layer(self, w: WeightLoader, i: int) -> Cohere2MoeLayer:
        c = self.cfg
        dense, moe = i < self.n_dense_lead, None
        if not dense:  # (read before the attention: the parent's loader reads the dense FFN)
            if w.g.tensors.get(f"blk.{i}.ffn_gate_up_exps.weight") is not None:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
            moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating,
                           shared="plain" if self.n_shared > 0 else None)  # fmt: skip
            moe.bias = None  # (llama.cpp's graph hands build_moe_ffn no exp_probs_b)
            moe.shared = moe.shared if self.n_shared > 0 else None  # (nor a shared expert the file does not count)
            moe.weights_scale = self.weights_scale
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))
        ffn = [w.matrix(r, i) for r in ("w_gate", "w_up", "w_down")] if dense else [None] * 3
        return Cohere2MoeLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wo=w.matrix("wo", i),
            w_gate=ffn[0], w_up=ffn[1], w_down=ffn[2], rope=dense or c.is_swa(i), moe=moe,
        )  # fmt: skip

    def block_norm(self, x: Any, w: Any, out: Any) -> None:
        if self.rms:
            self.be.rms_norm(x, w, self.cfg.norm_eps, out)
        else:
            self.be.layer_norm(x, w, None, self.cfg.norm_eps, out)

    def final_norm(self, x: Any, out: Any) -> None:
        self.block_norm(x, self.output_norm, out)

    def qk_rope(self, il: int, L: Cohere2MoeLayer, q3: Any, k3: Any, pos: Any) -> None:
        if L.rope:  # (the window layers and the leading dense ones; the other global layers attend without positions)
            self.be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, self.cfg.rope_neox)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        be, buf = self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, self.cfg.n_embd)  # the experts' output

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            self.block_norm(x, L.attn_norm, xn)  # read by attention and the FFN both
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            self.qk_rope(il, L, q3, k3, pos)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)  # the residual stream takes attention's output...
            if L.moe is None:  # ... and the FFN's, of the same normed input
                be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
                be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            else:
                moe_add(be, L.moe, xn, o, buf, accumulate=False)  # (the shared expert's added in)
                if L.moe.shared is not None:
                    be.scale(o, SHARED_AVERAGE)
                be.add(x, o)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
