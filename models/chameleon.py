"""Chameleon (Meta FAIR: Chameleon-7B and -30B, and Anole built on them), text only, as llama.cpp's CHAMELEON graph: the
Llama block (models/llama.py: RMSNorm, GQA attention, rope over consecutive pairs, SwiGLU FFN) with

* QK-norm per head: Q and K LayerNormed over each head (llama.cpp's fixed eps 1e-5, not the file's RMS eps), every head
  with weights (and biases, where the file has them) of its own (``attn_q_norm`` ``[n_head, head_dim]``, ``attn_k_norm``
  ``[n_head_kv, head_dim]``), before the rope;
* ``swin_norm`` (Chameleon-30B's; 7B's is false): the Swin Transformer's norm order, each block's output RMSNormed
  before it joins the stream, in place of the pre-norms.  As llama.cpp's graph has it, the FFN reads the normed
  attention output alone, ``a = norm(attn(x));  x = x + a;  x = x + norm(ffn(a))`` (Hugging Face's reads the stream,
  ``ffn(x + a)``); kvrun follows llama.cpp, its fixture the arbiter;
* the image tokens (ids 4 to 8195 of Chameleon's vocabulary, llama.cpp's fixed range) never generated: their logits are
  ``-FLT_MAX`` in every row kvrun computes (llama.cpp overwrites the first output row of each batch; with one output
  a batch, as in generation, the same), so only text comes out;
* the output head ``output.weight``, the token embeddings where the file has none.

Images are refused: Chameleon reads them as VQ-VAE codes among its tokens, which no GGUF file carries a tokenizer for
(there is no projector to give ``--mmproj``), so the model takes no image rows (``takes_images`` False).
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
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel

TENSOR_NAMES.setdefault("q_norm_b", "blk.{i}.attn_q_norm.bias")
TENSOR_NAMES.setdefault("k_norm_b", "blk.{i}.attn_k_norm.bias")

#: the token ids llama.cpp never lets Chameleon generate (its image tokens: [start, end)), and the value it gives them
IMAGE_TOKENS = (4, 8196)
SUPPRESSED_LOGIT = float(np.finfo(np.float32).min)  # (-FLT_MAX)
#: llama.cpp's eps for the QK LayerNorms (hparams.f_norm_eps fixed in code: "torch default")
QK_NORM_EPS = 1e-5


@dataclass
class ChameleonLayer(LlamaLayer):
    q_norm_b: Any = None  # [n_head * head_dim] or None: the per-head QK LayerNorms' biases
    k_norm_b: Any = None  # [n_head_kv * head_dim]


class ChameleonModel(LlamaModel):
    archs = ("chameleon",)
    #: image-token logits set to -FLT_MAX (False: every logit as the output head gives it; the tests' view)
    suppress_image_tokens: bool = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        #: the Swin Transformer's norm order: each block's output normed (Chameleon-30B)
        self.swin_norm = bool(g.arch_get("swin_norm", False))
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        mask = np.zeros(cfg.n_vocab, np.float32)
        mask[IMAGE_TOKENS[0] : IMAGE_TOKENS[1]] = SUPPRESSED_LOGIT
        self.image_mask = backend.vector(mask)  # (added to each row: output_head)

    @property
    def takes_images(self) -> bool:
        return False  # (images are VQ codes among Chameleon's tokens: no projector, nothing to feed)

    def load_layer(self, w: WeightLoader, i: int) -> ChameleonLayer:
        L = super().load_layer(w, i)
        return ChameleonLayer(**vars(L), q_norm_b=w.vector("q_norm_b", i, required=False), k_norm_b=w.vector("k_norm_b", i, required=False))

    def load_qk_norm(self, w: WeightLoader, i: int, required: bool) -> tuple[Any, Any, bool]:
        """Layer i's QK LayerNorm weights, one set a head: ``[n_head, head_dim]`` and ``[n_head_kv, head_dim]`` (llama.cpp
        requires them)."""
        c = self.cfg
        q_norm, k_norm = w.host_vector("q_norm", i), w.host_vector("k_norm", i)
        if (q_norm.size, k_norm.size) != (c.n_head * c.head_dim, c.n_head_kv * c.head_dim):
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm have {q_norm.size}/{k_norm.size} weights, expected "
                            f"{c.n_head * c.head_dim}/{c.n_head_kv * c.head_dim} (one set per head); the file is not a supported model")  # fmt: skip
        return self.be.vector(q_norm.reshape(c.n_head, c.head_dim)), self.be.vector(k_norm.reshape(c.n_head_kv, c.head_dim)), False

    def qk_norm_rope(self, L: ChameleonLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        """Each head of Q and K LayerNormed with its own weights (and biases), then rope over consecutive pairs."""
        be = self.be
        be.layer_norm_heads(q3, L.q_norm, QK_NORM_EPS)
        be.layer_norm_heads(k3, L.k_norm, QK_NORM_EPS)
        if L.q_norm_b is not None:
            be.add_bias(q, L.q_norm_b)
        if L.k_norm_b is not None:
            be.add_bias(k, L.k_norm_b)
        be.rope_qk(q3, k3, pos, cos, sin, self.cfg.rope_neox)

    def output_head(self, x: Any, out_rows: np.ndarray, logits: Any) -> None:
        super().output_head(x, out_rows, logits)
        if self.suppress_image_tokens and not self.embedding and len(out_rows):
            # (text only) -FLT_MAX added, which leaves exactly -FLT_MAX (a logit is far below half its ulp, 2^103), rather
            # than assigned: one kernel on the GPU, which a captured decode graph replays (the emulator's records kernels only)
            self.be.add_bias(logits, self.image_mask)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        if not self.swin_norm:  # (Chameleon-7B: the Llama block's pre-norms)
            super().forward(tokens, pos, cache, out_rows, logits)
            return
        c, be = self.cfg, self.be
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(len(tokens))
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.linear_many((L.wq, L.wk, L.wv), x, (q, k, v))  # (no norm before attention...)
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, xn)
            be.rms_norm(xn, L.attn_norm, c.norm_eps, xn)  # (... but of its output, which joins the stream...)
            be.add(x, xn)
            be.linear_many((L.w_gate, L.w_up), xn, (gate, up))  # (... and is the FFN's input: llama.cpp's graph)
            be.linear_glu(L.w_down, gate, up, xn, "silu")
            be.rms_norm_add(xn, L.ffn_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
