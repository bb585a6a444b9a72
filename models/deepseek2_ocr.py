"""DeepSeek-OCR language model (``deepseek2-ocr``: DeepSeek-V2's 3B mixture of experts), text only, as llama.cpp's
DEEPSEEK2OCR graph.

DeepSeek-V2's trunk (``deepseek2.py``) *without* its latent attention: the attention is the Llama block's plain
multi-head one (``attn_q``, ``attn_k``, ``attn_v``, each ``[n_embd, n_embd]``, rope over whole heads in neox
layout, scores by ``1/sqrt(head_dim)``); the FFN is DeepSeek's: the first ``leading_dense_block_count`` layers dense
SwiGLU, the others a mixture of experts by softmax (``expert_gating_func``; llama.cpp's default here), the chosen
weights renormalised where ``expert_weights_norm`` says and times ``expert_weights_scale``, a selection bias
``exp_probs_b`` where the file has one, plus ``expert_shared_count`` shared experts as one plain SwiGLU FFN.

Refused: a sliding window (``attention.sliding_window``: Unlimited-OCR's
reference-window attention, which llama.cpp runs as its own mask).  Pictures come as rows of its deepseekocr mmproj
(models/deepseekocr_image.py, runtime/vision_deepseekocr.py), read by LlamaModel's forward (``takes_images``).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .deepseek2 import GATING
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, expert_groups, gating_func, load_moe, weights_scale


class Deepseek2OCRModel(LlamaModel):
    archs = ("deepseek2-ocr",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if int(g.arch_get("attention.sliding_window", 0) or 0) > 0:
            raise UnsupportedModelError(f"{g.path}: deepseek2-ocr with attention.sliding_window (Unlimited-OCR's reference window) is not supported yet")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, cfg.n_expert)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        L = LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i),
            wo=w.matrix("wo", i), bq=None, bk=None, bv=None, q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=None, w_up=None, w_down=None,
        )  # fmt: skip
        if i < self.n_dense_lead:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            return L
        L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating, shared="plain")
        L.moe.weights_scale = self.weights_scale
        L.moe.n_group, L.moe.n_group_used = self.groups
        return L
