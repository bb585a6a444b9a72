"""BitNet b1.58 (microsoft/bitnet-b1.58-2B-4T, as llama.cpp's converter writes it: architecture ``bitnet``).

The Llama block (RMSNorm -> GQA attention with rope over halves (NeoX) -> residual -> RMSNorm -> gated FFN ->
residual, the output head tied to ``token_embd``) with what BitNet adds, as llama.cpp's graph
(``src/models/bitnet.cpp``):

* ``attn_sub_norm``: the attention's output is RMS-normalised (``[n_embd]`` weights) before ``attn_output``;
* ``ffn_sub_norm``: the gated activation is RMS-normalised (``[n_ff]``) before ``ffn_down``;
* optional per-tensor scales ``blk.N.<matrix>.scale`` (``[1]``), each product multiplied by its own where the
  file has one (llama.cpp 0.3.36 reads them; its converter folds the scales into the weights and writes none);
* the gated FFN's activation: SiLU, as llama.cpp runs every BitNet file that does not state
  ``bitnet.hidden_activation`` (0.3.36 reads no such key; newer llama.cpp takes ``relu2``, the model's trained
  squared ReLU, from it, and so does kvrun).

The projections are ternary (``scale * {-1, 0, 1}``): real files store them as TQ1_0 or TQ2_0 (1.69 and 2.06 bits
a weight), which the CPU kernels dot on their blocks (``ops/cpu/qmatmul.py``) and the GPU's decode in their product
kernels as every other block type (``ops/gpu/quants.cuh``); the sub-norms and scales are backend ops on both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_ATTN_SUB_NORM, _FFN_SUB_NORM and the projections' "scale" tensors
    "attn_sub_norm": "blk.{i}.attn_sub_norm.weight",
    "ffn_sub_norm": "blk.{i}.ffn_sub_norm.weight",
    "wq_s": "blk.{i}.attn_q.scale",
    "wk_s": "blk.{i}.attn_k.scale",
    "wv_s": "blk.{i}.attn_v.scale",
    "wo_s": "blk.{i}.attn_output.scale",
    "w_gate_s": "blk.{i}.ffn_gate.scale",
    "w_up_s": "blk.{i}.ffn_up.scale",
    "w_down_s": "blk.{i}.ffn_down.scale",
})  # fmt: skip

#: bitnet.hidden_activation values that mean the squared ReLU (HF's ``relu2``; ggml's name for it)
_RELU_SQR = ("relu2", "relu_sqr", "relu-squared")


@dataclass
class BitnetLayer(LlamaLayer):
    attn_sub_norm: Any = None  # [n_embd]: RMSNorm of the attention's output, before wo
    ffn_sub_norm: Any = None  # [n_ff]: RMSNorm of the gated activation, before w_down
    scales: dict[str, float] | None = None  # projection role -> its [1] scale tensor's value, where the file has one


class BitnetModel(LlamaModel):
    archs = ("bitnet",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        act = str(g.arch_get("hidden_activation", "silu") or "silu")
        if act not in ("silu", *_RELU_SQR):
            raise UnsupportedModelError(f"{g.path}: bitnet.hidden_activation {act!r} is not supported (silu, relu2 are)")
        self.relu_sqr = act in _RELU_SQR
        if cfg.n_head * cfg.head_dim_v != cfg.n_embd:  # (llama.cpp's attn_sub_norm and wo shapes)
            raise GGUFError(f"{g.path}: n_head * value_length {cfg.n_head * cfg.head_dim_v} is not n_embd {cfg.n_embd}; "
                            "the file is not a BitNet model")  # fmt: skip
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.output = self.tok_embd  # (llama.cpp's graph takes token_embd for the logits, an output.weight or not)

    def load_layer(self, w: WeightLoader, i: int) -> BitnetLayer:
        L = super().load_layer(w, i)
        if L.moe is not None or L.w_gate is None:
            raise GGUFError(f"{w.g.path}: blk.{i}: BitNet has a dense gated FFN (ffn_gate, ffn_up, ffn_down)")
        scales = {}
        for role in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            s = w.host_vector(role + "_s", i, required=False)
            if s is not None:
                scales[role] = float(s[0])
        base = {f.name: getattr(L, f.name) for f in fields(LlamaLayer)}
        return BitnetLayer(**base, attn_sub_norm=w.vector("attn_sub_norm", i), ffn_sub_norm=w.vector("ffn_sub_norm", i), scales=scales)

    def scaled(self, L: BitnetLayer, roles: tuple[str, ...], outs: tuple[Any, ...]) -> None:
        """Each product ``outs[j]`` of ``roles[j]`` times that matrix's scale tensor, where the file has one."""
        for role, out in zip(roles, outs):
            s = L.scales.get(role)
            if s is not None:
                self.be.scale(out, s)

    def project_add(self, L: BitnetLayer, role: str, xin: Any, x: Any, o: Any) -> None:
        """``x += (xin @ W.T) * scale`` for the output projections (wo, w_down); through ``o`` only where scaled."""
        w: Weight = getattr(L, role)
        if role not in L.scales:
            self.be.linear_add(w, xin, x)
            return
        self.be.linear(w, xin, o)
        self.be.scale(o, L.scales[role])
        self.be.add(x, o)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            self.scaled(L, ("wq", "wk", "wv"), (q, k, v))
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.rms_norm(att, L.attn_sub_norm, c.norm_eps, xn)  # (xn is free: q, k, v are made)
            self.trace("attn_sub_norm", il, xn)
            self.project_add(L, "wo", xn, x, o)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            self.scaled(L, ("w_gate", "w_up"), (gate, up))
            if self.relu_sqr:
                be.relu_sqr(gate, gate)
                if be.name == "gpu":  # (a kernel, which every runtime's captured decode graph records)
                    be.mul_vec(gate.reshape(-1), up.reshape(-1), gate.reshape(-1))
                else:
                    gate *= up
            else:
                be.silu_mul(gate, up, gate)
            be.rms_norm(gate, L.ffn_sub_norm, c.norm_eps, up)
            self.trace("ffn_sub_norm", il, up)
            self.project_add(L, "w_down", up, x, o)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
