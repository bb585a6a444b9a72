"""Talkie (talkie-1930-13b: a 13B model trained on text from before 1931), as llama.cpp's ``talkie`` graph: a pre-norm
decoder with grouped-query attention (neox rope over the whole head, scores by ``1/sqrt(head_dim)``) and a SwiGLU FFN,
and what sets it apart:

* no norm has a weight: the input embeddings, each block's input, the final hidden state all RMS-normed plain (the
  checkpoint's ``F.rms_norm``, at the file's epsilon: the converter states float32's machine epsilon);
* Q and K RMS-normalised per head *after* the rope (the reference's order), K without a weight, each of Q's heads times
  a gain of its own (``attn_q_norm``, ``[n_head]`` values, one a head: the backend's ``mul`` by each repeated over
  its head, ggml_mul's broadcast);
* the attention's and the FFN's outputs each times a gain (``attn_output.scale``, ``ffn_down.scale``: the checkpoint's
  ``attn_gain``/``mlp_gain``, 1 where a file has none, as llama.cpp's optional scale tensors) before their residual adds;
* every layer adds the normed embeddings again, times its ``layer_output_scale``, to its output (a skip from the input);
* the logits times ``logit_scale`` (the checkpoint's ``lm_head_gain``; required), from an output head of its own
  (``output.weight`` required: no tied fallback).

On ``--device gpu`` every step is a kernel (the heads' gains ``mul``, the embedding skip's copies the backend's
``copy``): a decode step brings nothing to the host and is captured as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope

for _role, _name in (("wo_s", "blk.{i}.attn_output.scale"), ("w_down_s", "blk.{i}.ffn_down.scale"),
                     ("layer_out_scale", "blk.{i}.layer_output_scale.weight")):  # fmt: skip
    TENSOR_NAMES.setdefault(_role, _name)  # (llama.cpp's scale tensors and LLM_TENSOR_LAYER_OUT_SCALE; bitnet.py, gemma4.py name them too)


@dataclass
class TalkieLayer:
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    wo: Weight  # [n_embd, n_head*head_dim]
    bq: Any  # (optional biases, as llama.cpp's create_tensor_qkv reads them)
    bk: Any
    bv: Any
    head_gain: Any  # [n_head * head_dim] (a backend vector): each query head's gain after its norm (attn_q_norm), over its head
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    attn_gain: float  # the attention's output times this (attn_output.scale)
    ffn_gain: float  # the FFN's output times this (ffn_down.scale)
    skip_scale: float  # the normed embeddings times this, added to the layer's output (layer_output_scale)


class TalkieModel(Model):
    archs = ("talkie",)
    required_keys = ("attention.layer_norm_rms_epsilon", "logit_scale")  # (llama.cpp's get_key without a default)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata talkie.{key} is missing; the file is not a complete model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output = w.matrix("output")  # (required: no tied fallback)
        self.ones = backend.vector(np.ones(cfg.n_embd, np.float32))  # (the weightless RMSNorms: times ones, exact)
        self.ones_head = backend.vector(np.ones(cfg.head_dim, np.float32))
        self.output_norm = self.ones  # (Model.final_norm's: the final norm weightless too)
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> TalkieLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        gain = w.host_vector("q_norm", i)
        if gain.size != c.n_head:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm has {gain.size} values, expected one a head ({c.n_head}); "
                            "the file is not a supported model")  # fmt: skip
        head_gain = self.be.vector(np.repeat(gain.astype(np.float32), c.head_dim))  # (one value a query value: be.mul's layout)
        return TalkieLayer(
            wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv, head_gain=head_gain,
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
            attn_gain=self._scalar(w, "wo_s", i, required=False), ffn_gain=self._scalar(w, "w_down_s", i, required=False),
            skip_scale=self._scalar(w, "layer_out_scale", i, required=True),
        )  # fmt: skip

    @staticmethod
    def _scalar(w: WeightLoader, role: str, i: int, required: bool) -> float:
        """Layer i's one-value tensor ``role`` (1 where it is optional and absent)."""
        v = w.host_vector(role, i, required=required)
        if v is None:
            return 1.0
        if v.size != 1:
            raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected 1; the file is not a supported model")
        return float(v[0])

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim))] * c.n_layer

    def logit_multiplier(self) -> float:
        """The logits times the file's ``logit_scale`` (Talkie's ``lm_head_gain``)."""
        return self.cfg.logit_scale

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)  # a block's output, before its gain
        skip = buf.get("skip", T, c.n_embd)  # the normed embeddings every layer adds again

        self.embed(tokens, xn, skip)
        be.copy(skip, x)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, self.ones, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            self.qk_norm(L, q3, k3)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            self._add_scaled(o, L.attn_gain, x)
            be.norm_linear_many(x, self.ones, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, o, "silu")
            self._add_scaled(o, L.ffn_gain, x)
            be.copy(skip, o)
            self._add_scaled(o, L.skip_scale, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def embed(self, tokens: np.ndarray, e: Any, skip: Any) -> None:
        """The tokens' embeddings into ``e``, RMS-normed without a weight into ``skip`` (the layers' input, and what each
        adds again)."""
        self.be.get_rows(self.tok_embd, tokens, e)
        self.be.rms_norm(e, self.ones, self.cfg.norm_eps, skip)

    def qk_norm(self, L: TalkieLayer, q3: Any, k3: Any) -> None:
        """Each head of Q and K RMS-normed in place (after the rope, as the reference), Q's heads times their gains."""
        eps = self.cfg.norm_eps
        self.be.rms_norm_heads(q3, self.ones_head, eps)
        self.be.mul(q3, L.head_gain)
        self.be.rms_norm_heads(k3, self.ones_head, eps)

    def _add_scaled(self, o: Any, s: float, x: Any) -> None:
        """``x += o * s`` (``o`` overwritten)."""
        if s != 1.0:
            self.be.scale(o, s)
        self.be.add(x, o)
