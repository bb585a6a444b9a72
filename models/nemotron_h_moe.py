"""NVIDIA Nemotron 3 Nano (30B-A3B) and Super (latent experts), as llama.cpp's ``nemotron_h_moe`` graph: Nemotron-H's
hybrid (models/nemotron_h.py: each layer one operator, a Mamba-2 mixer, rope-less attention or an FFN, after its
``attn_norm`` and before a residual add) whose FFN layers are mixtures of experts::

    h = rms_norm(x) * attn_norm
    x = x + latent_up MoE(latent_down h; routed by h) + W_down_shexp relu(W_up_shexp h)^2

What sets it apart from Nemotron-H:

* the experts are *ungated* squared-ReLU MLPs (``ffn_up_exps``, ``ffn_down_exps``: ``down relu(up h)^2``), as wide as
  ``expert_feed_forward_length`` (else the layer's ``feed_forward_length`` over ``expert_used_count``);
* sigmoid routing whatever the file's ``expert_gating_func`` says: each expert's ``sigmoid(logit)``, the top
  ``expert_used_count`` (6 of 128) chosen by it plus ``exp_probs_b`` (required), weighted by the sigmoid alone,
  renormalised where ``expert_weights_norm`` says and times ``expert_weights_scale`` (Nano's: yes, 2.5);
* beside the experts a squared-ReLU *shared expert* (``ffn_up_shexp``/``ffn_down_shexp``,
  ``expert_shared_feed_forward_length`` wide) reading the same normed input;
* where the file states ``moe_latent_size`` (Nemotron 3 Super) the experts work in a narrower latent space:
  ``ffn_latent_down`` in, ``ffn_latent_up`` out, while the router and the shared expert read the full width.

Which layer is which is Nemotron-H's rule (head_count_kv and feed_forward_length per layer, both 0: Mamba-2).  On
``--device gpu`` the routing and the ungated experts are kernels too (ops/gpu/moe.cu's router, moe3.cu's experts), so
a decode step stays in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .moe import MoE, check_expert_counts, expert_groups, moe_add, weights_scale
from .nemotron_h import NemotronHLayer, NemotronHModel

TENSOR_NAMES.setdefault("ffn_latent_down", "blk.{i}.ffn_latent_down.weight")  # (llama.cpp's LLM_TENSOR_FFN_LATENT_DOWN)
TENSOR_NAMES.setdefault("ffn_latent_up", "blk.{i}.ffn_latent_up.weight")


@dataclass
class NemotronHMoeLayer(NemotronHLayer):
    moe: MoE | None = None  # an FFN layer's experts (up and down only, act "relu_sqr")
    shexp_up: Weight | None = None  # [n_ff_shexp, n_embd]
    shexp_down: Weight | None = None  # [n_embd, n_ff_shexp]
    latent_down: Weight | None = None  # [moe_latent_size, n_embd] (Super)
    latent_up: Weight | None = None  # [n_embd, moe_latent_size]


class NemotronHMoeModel(NemotronHModel):
    archs = ("nemotron_h_moe",)
    takes_experts = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if int(g.arch_get("nextn_predict_layers", 0) or 0) > 0:  # (llama.cpp's multi-token-prediction blocks after the trunk)
            raise UnsupportedModelError(f"{g.path}: Nemotron-H MoE with multi-token-prediction blocks (nextn_predict_layers) is not supported yet")
        self.n_ff_exp = int(g.arch_get("expert_feed_forward_length", 0) or 0)
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0)
        self.latent = int(g.arch_get("moe_latent_size", 0) or 0)
        self.n_group, self.n_group_used = expert_groups(g, cfg.n_expert)
        self.weights_scale = weights_scale(g)
        ff = g.arch_get("feed_forward_length")
        self.ff_per_layer = [int(n) for n in ff] if hasattr(ff, "__len__") else [int(ff)] * cfg.n_layer
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> NemotronHMoeLayer:
        c = self.cfg
        base = super().load_layer(w, i) if not c.ffn_layers[i] else NemotronHLayer(attn_norm=w.vector("attn_norm", i))
        L = NemotronHMoeLayer(**vars(base))
        if not c.ffn_layers[i]:
            return L
        width = self.latent or c.n_embd  # the experts' input and output width
        n_ff = self.n_ff_exp or self.ff_per_layer[i] // c.n_expert_used
        if self.latent:  # (llama.cpp loads them as optional, but the experts cannot run in the latent space without them)
            L.latent_down, L.latent_up = w.matrix("ffn_latent_down", i), w.matrix("ffn_latent_up", i)
            for role, m, shape in (("ffn_latent_down", L.latent_down, (width, c.n_embd)), ("ffn_latent_up", L.latent_up, (c.n_embd, width))):
                if tuple(m.shape) != shape:
                    raise GGUFError(f"{w.g.path}: blk.{i}.{role}.weight has shape {tuple(m.shape)}, expected {shape}; the file is not a supported model")
        bias = w.host_vector("exp_probs_b", i)  # (required: the routing's selection bias)
        if bias.size != c.n_expert:
            raise GGUFError(f"{w.g.path}: blk.{i}.exp_probs_b.bias has {bias.size} values, expected {c.n_expert}; the file is not a supported model")
        L.moe = MoE(
            router=w.matrix("ffn_gate_inp", i), gate=None, up=w.experts("ffn_up_exps", i, c.n_expert, n_ff, width),
            down=w.experts("ffn_down_exps", i, c.n_expert, width, n_ff), n_expert=c.n_expert, n_used=c.n_expert_used,
            norm_weights=c.expert_weights_norm, gating="sigmoid", bias=bias, act="relu_sqr", weights_scale=self.weights_scale,
            n_group=self.n_group, n_group_used=self.n_group_used,
        )  # fmt: skip
        if self.n_ff_shexp > 0 or w.has("ffn_up_shexp", i):  # (llama.cpp: where expert_shared_feed_forward_length states one)
            L.shexp_up, L.shexp_down = w.matrix("ffn_up_shexp", i), w.matrix("ffn_down_shexp", i)
        return L

    def ffn_layer(self, L: NemotronHMoeLayer, x: Any, xn: Any) -> None:
        if L.moe is None:  # (an MLP layer)
            super().ffn_layer(L, x, xn)
            return
        c, be, buf = self.cfg, self.be, self.buf
        T = x.shape[0]
        be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
        if L.latent_down is not None:  # (the experts in the latent space; the router reads the full width)
            lat, out = buf.get("moe_latent", T, self.latent), buf.get("moe_latent_out", T, self.latent)
            be.linear(L.latent_down, xn, lat)
            L.moe.router_in = xn
            moe_add(be, L.moe, lat, out, buf, accumulate=False)
            be.linear_add(L.latent_up, out, x)
        else:
            moe_add(be, L.moe, xn, x, buf)
        if L.shexp_up is not None:
            n = L.shexp_up.shape[0]
            up = buf.get(f"shexp_up{n}", T, n)
            be.linear(L.shexp_up, xn, up)
            be.relu_sqr(up, up)
            be.linear_add(L.shexp_down, up, x)
