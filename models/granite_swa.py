"""IBM Granite with interleaved sliding-window attention (GraniteSWAForCausalLM; GraniteMoeSWAForCausalLM, its mixture of
experts), as llama.cpp 0.3.36's ``granite_swa`` graph: Granite's block with its four multipliers and its DeepStack mapping
(``granite.py``), and what sets it apart:

* windows on the layers the file's ``attention.sliding_window_pattern`` array marks (required, as an array: llama.cpp
  reads no period here; layers past its end are global), ``attention.sliding_window`` tokens wide (required);
* a learned sink logit per head in every layer (``attn_sinks``, required: gpt-oss's, joining each head's softmax sum and
  adding no value);
* rope where the optional ``attention.rope_pattern`` array marks (the checkpoint's ``no_rope_layers``, 1 rotating; past its
  end, or unstated, every layer rotates), not Granite's ``rope.scaling.finetuned`` switch;
* Q, K, V apart or fused (``attn_qkv``, Q's rows first), each with an optional bias, and an optional ``attn_output`` bias
  (added before the residual multiplier: kvrun scales it by ``residual_scale`` as it loads);
* the mixture of experts wherever ``expert_count`` is stated (every layer: the router is then required): softmax routing,
  the chosen weights always renormalised (llama.cpp passes ``norm_w`` true whatever ``expert_weights_norm`` says), the
  experts as wide as ``feed_forward_length``, their gate and up apart or fused (``ffn_gate_up_exps``: each expert's gate
  rows, then its up rows); a shared expert where ``expert_shared_feed_forward_length`` is stated, its gate and up fused in
  ``ffn_up_shexp`` (SwiGLU over halves, the gate first), its output added to the experts' before ``residual_scale``.

Optional FFN biases (``ffn_{gate,up,down}.bias``), which llama.cpp adds and the Llama forward has no place for, are
refused in one line.  On ``--device gpu`` it runs as Granite does (the sinks are the GPU attention's, as gpt-oss's).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .granite import GraniteModel
from .llama import LlamaLayer
from .moe import MoE, SharedExpert

TENSOR_NAMES.setdefault("ffn_gate_up_exps", "blk.{i}.ffn_gate_up_exps.weight")  # (llama.cpp's LLM_TENSOR_FFN_GATE_UP_EXPS)
TENSOR_NAMES.setdefault("ffn_gate_b", "blk.{i}.ffn_gate.bias")


def layer_flags(g: GGUFFile, key: str, n_layer: int, unstated: bool) -> tuple[bool, ...]:
    """``{arch}.<key>`` (a per-layer array, of bools or integers) as llama.cpp's ``get_arr`` fills its per-layer table:
    the array's entries, ``unstated`` for the layers past its end or for all where there is none (or a number: not an
    array, which get_arr passes over)."""
    v = g.arch_get(key)
    flags = [bool(x) for x in np.asarray(v).reshape(-1)][:n_layer] if hasattr(v, "__len__") else []
    return tuple(flags) + (unstated,) * (n_layer - len(flags))


class GraniteSwaModel(GraniteModel):
    archs = ("granite_swa",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in ("attention.sliding_window", "logit_scale"):  # (llama.cpp's get_key without a default)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        if not hasattr(g.arch_get("attention.sliding_window_pattern"), "__len__"):  # (get_arr: an array, required)
            raise GGUFError(f"{g.path}: metadata {g.architecture}.attention.sliding_window_pattern is missing or not an array "
                            "(one flag a layer); the file is not a complete model")  # fmt: skip
        swa = layer_flags(g, "attention.sliding_window_pattern", cfg.n_layer, False) if cfg.sliding_window else ()
        # (the experts as wide as the dense FFN and renormalised, whatever the file says of either: llama.cpp's graph)
        cfg = dataclasses.replace(cfg, swa_layers=swa, n_ff_exp=cfg.n_ff, expert_weights_norm=True)
        self.rope_layers = layer_flags(g, "attention.rope_pattern", cfg.n_layer, True)
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0)
        self.sinks: list[np.ndarray] = []  # per layer [n_head] (host: they go into the layer's cache spec)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        for role in ("ffn_gate_b", "b_up", "b_down"):
            if w.has(role, i):
                raise UnsupportedModelError(f"{w.g.path}: blk.{i} has FFN biases, which kvrun's granite_swa does not run yet")
        sinks = w.host_vector("attn_sinks", i)
        if sinks.size != c.n_head:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_sinks has {sinks.size} values, expected one per head ({c.n_head})")
        self.sinks.append(sinks)
        wq, wk, wv, bq, bk, bv = self.load_qkv(w, i)
        bo = w.host_vector("bo", i, required=False)
        moe = self.load_experts(w, i) if c.n_expert > 0 else None
        dense = moe is None
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i),
            wq=wq, wk=wk, wv=wv,
            wo=w.matrix("wo", i),
            bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None,
            ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i) if dense else None,
            w_up=w.matrix("w_up", i) if dense else None,
            w_down=w.matrix("w_down", i) if dense else None,
            rope=self.rope_layers[i],
            moe=moe,
            # (llama.cpp adds it inside the attention, before residual_scale; the Llama forward after: scaled here)
            bo=None if bo is None else self.be.vector(bo * np.float32(c.residual_scale)),
        )  # fmt: skip

    def load_qkv(self, w: WeightLoader, i: int) -> tuple:
        """Layer i's Q, K, V projections and their biases (None where the file has none): apart, or cut from a fused
        ``attn_qkv`` (and ``attn_qkv.bias``) by rows, Q's first (llama.cpp's create_tensor_qkv)."""
        c = self.cfg
        sizes = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v)
        if not w.has("wqkv", i):
            b = [w.host_vector(r, i, required=False) for r in ("bq", "bk", "bv")]
            if any(x is not None for x in b):  # (llama.cpp adds each it finds; the Llama forward all three or none)
                b = [np.zeros(n, np.float32) if x is None else x for x, n in zip(b, sizes)]
            return (w.matrix("wq", i), w.matrix("wk", i), w.matrix("wv", i), *(None if x is None else self.be.vector(x) for x in b))
        wq, wk, wv = w.matrix_rows("wqkv", i, sizes)
        b = w.host_vector("bqkv", i, required=False)
        if b is None:
            return wq, wk, wv, None, None, None
        if b.size != sum(sizes):
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_qkv.bias has {b.size} values, expected {sum(sizes)}")
        cuts = np.cumsum(sizes)[:-1]
        return (wq, wk, wv, *(self.be.vector(np.ascontiguousarray(p)) for p in np.split(b, cuts)))

    def load_experts(self, w: WeightLoader, i: int) -> MoE:
        """Layer i's router and experts (gate and up fused or apart) and, where the file states its width, the shared
        expert with its gate and up fused in ``ffn_up_shexp``."""
        c = self.cfg
        n, f, d = c.n_expert, c.n_ff, c.n_embd
        if not 0 < c.n_expert_used <= n:
            raise GGUFError(f"{w.g.path}: expert_used_count {c.n_expert_used} is not in 1..{n} (expert_count)")
        if w.has("ffn_gate_up_exps", i):
            gate, up = self.split_gate_up(w, i)
        else:
            gate, up = w.experts("ffn_gate_exps", i, n, f, d), w.experts("ffn_up_exps", i, n, f, d)
        moe = MoE(router=w.matrix("ffn_gate_inp", i), gate=gate, up=up, down=w.experts("ffn_down_exps", i, n, d, f),
                  n_expert=n, n_used=c.n_expert_used, norm_weights=True)  # fmt: skip
        if self.n_ff_shexp > 0:
            n, d = self.n_ff_shexp, c.n_embd
            gate_s, up_s = w.matrix_rows("ffn_up_shexp", i, (n, n))
            down = w.matrix("ffn_down_shexp", i)
            if tuple(down.shape) != (d, n) or gate_s.shape[1] != d:
                raise GGUFError(f"{w.g.path}: blk.{i}.ffn_*_shexp are not {n} wide (expert_shared_feed_forward_length)")
            moe.shared = SharedExpert(gate_s, up_s, down)
        return moe

    def split_gate_up(self, w: WeightLoader, i: int) -> tuple[Weight, Weight]:
        """The fused ``ffn_gate_up_exps`` ``[n_expert, 2 * n_ff, n_embd]`` as two stacked expert weights (each expert's
        first n_ff rows its gate, the rest its up), cut from the file's rows before they are uploaded."""
        c = self.cfg
        n, f, d = c.n_expert, c.n_ff, c.n_embd
        t = w._info("ffn_gate_up_exps", i, True)
        if tuple(t.shape) != (n, 2 * f, d):
            raise GGUFError(f"{w.g.path}: tensor {t.name!r} has shape {t.shape}, expected {(n, 2 * f, d)}; "
                            "the file is not a supported model")  # fmt: skip
        rows = t.rows().reshape(n, 2 * f, -1)
        gate, up = (np.ascontiguousarray(rows[:, h * f : (h + 1) * f]).reshape(n * f, -1) for h in (0, 1))
        return w._upload(t, gate, n * f), w._upload(t, up, n * f)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = c.attention_scale or 1.0 / np.sqrt(c.head_dim)
        return [
            LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale,
                      sink_logits=tuple(float(s) for s in sinks))  # fmt: skip
            for il, sinks in enumerate(self.sinks)
        ]
