"""NeoBERT (``neo-bert``: chandar-lab/NeoBERT), a text encoder for embeddings, as llama.cpp's
``llm_build_neo_bert``.

Unlike BERT's post-norm block (models/bert.py) it is a modern decoder block turned to look both ways:
pre-norm RMSNorms without biases (x = x + attn(RMSNorm(x)); x = x + ffn(RMSNorm(x))), one fused QKV
product and an output product without biases, rotary positions over consecutive pairs (llama.cpp's
"normal" rope, not NeoX's halves), a SwiGLU FFN whose gate and up rows are fused in one ``ffn_up``
(silu(first half) * second half; the converter states two thirds of the checkpoint's intermediate
size as feed_forward_length), and a final RMSNorm (``enc.output_norm``).  No token-type embeddings,
no embedding norm.  Its vocabulary is BERT's WordPiece; the converter sets CLS pooling.

Activations are numpy arrays on the host (prefill-only work); CPU only, as BERT's.
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import POOLING, BertModel
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .rank import RankHead

TENSOR_NAMES.update({"enc_output_norm": "enc.output_norm.weight"})  # (llama.cpp's LLM_TENSOR_ENC_OUTPUT_NORM)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (float32 in and out, the mean square in float64, as ggml sums it)."""
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)).astype(np.float32) * w


class NeoBertModel(BertModel):
    """(A BertModel for its products, rope and attention; its own weights and block.)"""

    archs = ("neo-bert",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        Model.__init__(self, g, cfg, backend, n_ctx, n_batch)  # (not BertModel's: none of BERT's embedding tensors)
        if backend.name != "cpu":
            raise UnsupportedModelError(f"{g.path}: {cfg.arch} embedding models run on the CPU; drop --device gpu")
        ld = WeightLoader(g, backend)
        self.eps = cfg.norm_eps  # (attention.layer_norm_rms_epsilon)
        self.pooling = POOLING.get(int(g.arch_get("pooling_type", 2) or 0), "mean")
        self.rank_head = RankHead.load(g, cfg.arch)
        self.rope = True
        self.cos, self.sin = make_rope(cfg, cfg.n_ctx_train, cfg.rope_theta)
        self.tok_embd = ld.matrix("tok_embd")
        self.output_norm = ld.host_vector("enc_output_norm")
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {"attn_norm": ld.host_vector("attn_norm", i), "ffn_norm": ld.host_vector("ffn_norm", i)}
            L["wq"], L["wk"], L["wv"] = ld.matrix_rows("wqkv", i, (q_dim, kv_dim, kv_dim))
            L["wo"] = ld.matrix("wo", i)
            L["w_up"] = ld.matrix_rows("w_up", i, (2 * cfg.n_ff,))[0]  # (SwiGLU: gate's rows, then up's)
            L["w_down"] = ld.matrix("w_down", i)
            self.layers.append(L)

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Every token's final-normed state of ``tokens`` [T]: float32 [T, n_embd]."""
        c = self.cfg
        T = len(tokens)
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        x = np.empty((T, c.n_embd), np.float32)
        self.be.get_rows(self.tok_embd, np.asarray(tokens, np.int32), x)
        for il, L in enumerate(self.layers):
            xn = rms_norm(x, L["attn_norm"], self.eps)
            q = self._linear(L["wq"], xn, None).reshape(T, H, D)
            k = self._linear(L["wk"], xn, None).reshape(T, Hkv, D)
            v = self._linear(L["wv"], xn, None).reshape(T, Hkv, D)
            q, k = self._qk(q, k, L)
            x = x + self._linear(L["wo"], self._attend(q, k, v, None), None)
            self.trace("ffn_inp", il, x)
            gu = self._linear(L["w_up"], rms_norm(x, L["ffn_norm"], self.eps), None)
            gate, up = gu[:, : c.n_ff], gu[:, c.n_ff :]
            x = x + self._linear(L["w_down"], gate / (1.0 + np.exp(-gate)) * up, None)
        return rms_norm(x, self.output_norm, self.eps)
