"""CogVLM (THUDM's CogVLM, CogVLM2, CogAgent) language model (``cogvlm``), text only, as llama.cpp's COGVLM graph.

The Llama block (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU FFN -> residual), multi-head, with Q, K and V
fused in one ``attn_qkv`` (``3 * n_embd`` rows, Q's then K's then V's, no biases) and neox rope over whole heads.

What sets the architecture apart is its *visual expert*: every layer holds a second set of attention and FFN weights
(``vis_attn_qkv``, ``vis_attn_output``, ``vis_gate``, ``vis_up``, ``vis_down``) that image positions run through
instead of the language ones.  llama.cpp picks the set per batch: a batch of tokens (text) takes the language
weights, a batch of embeddings (the image rows of CogVLM's mmproj) the visual ones.  kvrun runs text alone, so the
visual expert's weights are never read (and not required); images are refused (``takes_images``).
"""

from __future__ import annotations

from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class CogVLMModel(LlamaModel):
    archs = ("cogvlm",)
    takes_images = False  # (image rows would take the visual expert's weights, which kvrun does not run)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        d = c.n_head * c.head_dim
        wq, wk, wv = w.matrix_rows("wqkv", i, (d, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=None, bk=None, bv=None,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
