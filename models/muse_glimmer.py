"""Muse Glimmer (Muse-Glimmer-30B's text model), as llama.cpp's ``muse-glimmer`` graph: AFMoE's attention block
(``afmoe.py``: sandwich norms, a sigmoid attention gate of the attention's input before ``attn_output``, per-head QK
RMS norms, windows on some layers) with a dense SwiGLU FFN in every layer, and what sets it apart from AFMoE:

* the input embeddings RMS-normalised without a weight (the file's epsilon), where AFMoE multiplies by sqrt(n_embd);
* the two post-norms (after the attention and after the FFN) at a fixed epsilon of 1e-8, not the file's;
* the file's ``sliding_window`` required and its ``sliding_window_pattern`` (the converter's per-layer array; a number,
  or 3 window layers then 1 global unstated) decides both which layers attend within the window and which rotate:
  rope (consecutive pairs, not neox) on the window layers only, at ``rope.freq_base_swa`` where stated, unscaled
  (llama.cpp's ``rope_freq_scale_train_swa`` 1); the global layers NoPE;
* the logits times ``logit_scale`` (the checkpoint's ``output_multiplier``; required), then soft-capped where
  ``final_logit_softcapping`` is stated (Gemma's tanh);
* an output head of its own (llama.cpp requires ``output.weight``: no tied fallback).

The converter folds the norms' ``weight + 1`` and the ``qk_scale_factor`` (into ``attn_q_norm``) into the file, so
nothing of them is left to the runtime.  On ``--device gpu`` it runs as AFMoE does (``sigmoid_mul``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .afmoe import AfmoeLayer, AfmoeModel
from .common import WeightLoader, make_rope

#: the post-norms' epsilon, fixed in llama.cpp's graph (``post_norm_eps``)
POST_NORM_EPS = 1e-8


class MuseGlimmerModel(AfmoeModel):
    archs = ("muse-glimmer",)
    takes_images = True  # its forward reads Model.input_embd (the picture rows: runtime/vision_muse_glimmer.py)
    required_keys = ("attention.sliding_window", "logit_scale")  # (llama.cpp's get_key without a default)
    post_norm_eps = POST_NORM_EPS

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if "output.weight" not in g.tensors:
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; muse-glimmer has an output head of its own")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.input_norm = backend.vector(np.ones(cfg.n_embd, np.float32))  # (a weightless RMSNorm: times ones, exact)
        # (the window layers rotate unscaled, at their own base where stated: llama.cpp's *_train_swa)
        self.rope_local = make_rope(dataclasses.replace(cfg, rope_scaling_type="none"), n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> AfmoeLayer:
        self.n_dense_lead = self.cfg.n_layer  # (set before the layers load: AfmoeModel's __init__ reads the file's)
        L = super().load_layer(w, i)
        L.rope = self.cfg.is_swa(i)  # (rope on the window layers, whichever the pattern says; NoPE on the others)
        return L

    def embed(self, tokens: np.ndarray, x: Any, xn: Any) -> None:
        """The embeddings, or a picture's rows (Engine.eval_embd, attended causally as llama.cpp), RMS-normalised
        without a weight (llama.cpp's ``embd_norm`` follows ``build_inp_embd``, whichever it gave)."""
        if self.input_embd is not None:
            xn[...] = self.be.vector(self.input_embd)
        else:
            self.be.get_rows(self.tok_embd, tokens, xn)
        self.be.rms_norm(xn, self.input_norm, self.cfg.norm_eps, x)

    def logit_multiplier(self) -> float:
        """The logits times the file's ``logit_scale`` (Muse Glimmer's ``output_multiplier``)."""
        return self.cfg.logit_scale
