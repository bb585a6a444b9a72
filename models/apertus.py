"""Swiss AI Apertus (Apertus-8B/70B, -Instruct-2509): https://huggingface.co/swiss-ai/Apertus-8B-Instruct-2509

As llama.cpp's APERTUS graph, Arcee's block (the Llama block with an *ungated* FFN: ``ffn_up`` ->
activation -> ``ffn_down``, no ``ffn_gate``) with

* the xIELU activation, whose four parameters each layer learned and the file states as metadata
  arrays (``xielu.alpha_n``, ``xielu.alpha_p``, ``xielu.beta``, ``xielu.eps``, one value a layer, or one
  for all), as HF's parameters: the constraints (softplus) are applied at run time, as ggml's ``ggml_xielu``::

      a_p = softplus(alpha_p),  a_n = beta + softplus(alpha_n)
      xielu(x) = a_p x^2 + beta x                        (x > 0)
               = a_n (expm1(min(x, eps)) - x) + beta x    (x <= 0)

* Q and K RMS-normalised per head (``attn_q_norm``/``attn_k_norm``, ``[head_dim]``) before the rope, as
  Qwen3's (their optional biases, which llama.cpp loads but its graph does not add, are not read either);
* rope over halves (NeoX layout) with Llama 3's per-frequency factors (``rope_freqs.weight``);
* a separate output head (llama.cpp requires ``output.weight``).

xIELU is an element-wise kernel on either backend (``ops/cpu/nn.xielu``, ``xielu_f32`` in ``ops/gpu/nn.cu``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .arcee import ArceeModel
from .common import WeightLoader
from .llama import LlamaLayer

#: the xIELU parameters' metadata keys (no architecture prefix: gguf's Keys.xIELU), in ggml_xielu's order
XIELU_KEYS = ("xielu.alpha_n", "xielu.alpha_p", "xielu.beta", "xielu.eps")


def xielu_params(g: GGUFFile, n_layer: int) -> np.ndarray:
    """Each layer's xIELU parameters ``[n_layer, 4]`` (alpha_n, alpha_p, beta, eps, as stored: before the
    softplus constraints); a key may hold one value for every layer (llama.cpp's ``get_key_or_arr``)."""
    cols = []
    for key in XIELU_KEYS:
        v = g.get(key)
        if v is None:
            raise GGUFError(f"{g.path}: metadata {key} is missing; the file is not a complete Apertus model")
        a = np.atleast_1d(np.asarray(v, np.float32))
        if a.size == 1:
            a = np.repeat(a, n_layer)
        if a.size != n_layer:
            raise GGUFError(f"{g.path}: metadata {key} has {a.size} values for {n_layer} layers")
        cols.append(a)
    return np.stack(cols, axis=1)


class ApertusModel(ArceeModel):
    archs = ("apertus",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.xielu = xielu_params(g, cfg.n_layer)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if self.output is self.tok_embd:  # (llama.cpp requires it: WeightLoader's message)
            WeightLoader(g, backend).matrix("output")

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        L.q_norm, L.k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:  # (one head's width, as llama.cpp requires)
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm has {L.q_norm.shape[0]} weights, expected {self.cfg.head_dim} "
                            "(one head's); the file is not an Apertus model")  # fmt: skip
        if w.has("bo", i):  # (llama.cpp adds it where a file has it; Apertus's converter writes none)
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.attn_output.bias is not supported for {self.cfg.arch}")
        return L

    def ffn_activation(self, il: int, up: Any) -> None:
        alpha_n, alpha_p, beta, eps = (float(p) for p in self.xielu[il])
        self.be.xielu(up, up, alpha_n, alpha_p, beta, eps)
