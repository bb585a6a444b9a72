"""Cohere Command R (``command-r``): Command-R 35B (c4ai-command-r-v01, -08-2024), Command R+ (104B),
Aya 23 (8B/35B), Aya Expanse (8B/32B).

As llama.cpp's COMMAND_R graph, Command R7B's parallel block (models/cohere2.py: one LayerNorm without a
bias per layer, read by attention and the SwiGLU FFN both, ``x = x + attn(h) + ffn(h)``; the output
LayerNorm without a bias; the output head the token embeddings, the logits *multiplied* by
``logit_scale``) without its windows:

* every layer attends globally and rotates Q and K (consecutive pairs, as Llama's);
* Command R+ (HF's ``use_qk_norm``): Q and K LayerNormed per head before the rope, without a bias, each
  head with its own weights (``attn_q_norm`` ``[n_head, head_dim]``, ``attn_k_norm`` ``[n_head_kv,
  head_dim]``), as StableLM 2 12B's.  llama.cpp reads them by the depth (64 layers and more: Command R+'s);
  kvrun where the file has them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..loaders.errors import GGUFError
from .cohere2 import Cohere2Layer, Cohere2Model
from .common import WeightLoader


@dataclass
class CommandRLayer(Cohere2Layer):
    q_norm: Any = None  # [n_head, head_dim] or None (Command R+)
    k_norm: Any = None  # [n_head_kv, head_dim]


class CommandRModel(Cohere2Model):
    archs = ("command-r",)
    windowed = False

    def load_layer(self, w: WeightLoader, i: int) -> CommandRLayer:
        c = self.cfg
        L = super().load_layer(w, i)
        L = CommandRLayer(**{f.name: getattr(L, f.name) for f in fields(L)})
        q_norm = w.host_vector("q_norm", i, required=False)
        if q_norm is not None:
            k_norm = w.host_vector("k_norm", i)
            if (q_norm.size, k_norm.size) != (c.n_head * c.head_dim, c.n_head_kv * c.head_dim):
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm have {q_norm.size}/{k_norm.size} weights, "
                                f"expected {c.n_head * c.head_dim}/{c.n_head_kv * c.head_dim} (one set per head); "
                                "the file is not a supported model")  # fmt: skip
            L.q_norm = w.be.vector(q_norm.reshape(c.n_head, c.head_dim))
            L.k_norm = w.be.vector(k_norm.reshape(c.n_head_kv, c.head_dim))
        return L

    def qk_rope(self, il: int, L: CommandRLayer, q3: Any, k3: Any, pos: Any) -> None:
        c, be = self.cfg, self.be
        if L.q_norm is not None:
            be.layer_norm_heads(q3, L.q_norm, c.norm_eps)
            be.layer_norm_heads(k3, L.k_norm, c.norm_eps)
        be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
