"""EXAONE 4.0 (LG AI Research): EXAONE-4.0-1.2B and -32B: https://arxiv.org/abs/2507.11407

As llama.cpp's EXAONE4 graph, the OLMo 2 block with Qwen3's QK-norm:

* no norm before attention or the FFN (no ``attn_norm``, ``ffn_norm``); each block's output
  RMS-normalised before its residual add (``post_attention_norm``, ``post_ffw_norm``);
* Q and K RMS-normalised head by head (``attn_q_norm``/``attn_k_norm`` of ``head_dim`` weights),
  then rotated, NeoX layout, with Llama 3's rope factors where the file has them;
* the 32B mixes window and global layers: of every ``sliding_window_pattern`` layers (4 unless
  the file says) all but the last attend within the window (4096 tokens unless the file says).
  Only the window layers rotate Q and K (at the one rope base: llama.cpp's graph reads no other);
  the global layers attend without positional encoding, their Q and K normalised all the same.
  llama.cpp decides this by the depth, 64 layers: the 1.2B (30) has no window whatever its
  file states, and rotates in every layer (``loaders/config.py``);
* a tied or separate output head.
"""

from __future__ import annotations

from typing import Any

from ..loaders.errors import GGUFError
from .common import WeightLoader
from .olmo2 import Olmo2Layer, Olmo2Model


class Exaone4Model(Olmo2Model):
    """OLMo 2's forward; the QK-norm head by head, the rope only where the layer rotates, at one base."""

    archs = ("exaone4",)
    local_rope = False
    takes_images = True  # OLMo 2's forward reads Model.input_embd (EXAONE 4.5's image rows: runtime/vision_exaone45.py)

    def load_layer(self, w: WeightLoader, i: int) -> Olmo2Layer:
        c = self.cfg
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm spans all heads, where EXAONE 4.0 normalises each head alone; "
                            "the file is not a supported model")  # fmt: skip
        return Olmo2Layer(
            attn_norm=None, wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i), wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=q_norm, k_norm=k_norm,
            ffn_norm=None, w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
            rope=not c.sliding_window or c.is_swa(i),  # the window layers, or every layer of a model without (the 1.2B)
            attn_post_norm=w.vector("attn_post_norm", i), ffn_post_norm=w.vector("ffn_post_norm", i),
        )  # fmt: skip

    def norm_rope_qk(self, L: Olmo2Layer, il: int, q: Any, k: Any, q3: Any, k3: Any, pos: Any) -> None:
        """Layer il's QK-norm (head by head), and the rope in the layers that rotate."""
        c, be = self.cfg, self.be
        if L.rope:
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, self.rope_cos, self.rope_sin, c.rope_neox)
        else:  # a global layer of the 32B: normalised, not rotated
            be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            be.rms_norm_heads(k3, L.k_norm, c.norm_eps)
