"""Tencent Hunyuan dense (Hunyuan-0.5B/1.8B/4B/7B-Instruct): the Llama block with two differences,
as llama.cpp's graph (``hunyuan-dense`` reuses ``hunyuan-vl``'s hparams, tensors and graph):

* Q and K are RMS-normalised per head (``attn_q_norm``/``attn_k_norm``, ``[head_dim]``) *after* the
  rope, not before it as Qwen3's; NeoX rope layout.
* NTK-alpha rope scaling: where the file states ``rope.scaling.alpha`` the rope base is
  ``freq_base * alpha^(head_dim / (head_dim - 2))`` (``ModelConfig.rope_theta`` holds the result; the
  dense converter bakes it into ``rope.freq_base`` and states no alpha).
"""

from __future__ import annotations

from typing import Any

from ..loaders.errors import GGUFError
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class HunyuanDenseModel(LlamaModel):
    archs = ("hunyuan-dense",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.q_norm is None or L.qk_norm_full:  # (llama.cpp requires both, one head wide)
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm of {self.cfg.head_dim} weights are missing; "
                            "the file is not a complete Hunyuan model")  # fmt: skip
        return L

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        c, be = self.cfg, self.be
        be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)
        be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
        be.rms_norm_heads(k3, L.k_norm, c.norm_eps)
