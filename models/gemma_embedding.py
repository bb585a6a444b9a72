"""EmbeddingGemma (``gemma-embedding``): a Gemma 3 text encoder for embeddings, as llama.cpp's
``llm_build_gemma_embedding`` and its pooling and dense-projection stages.

The block is Gemma 3's (models/gemma3.py): embeddings times sqrt(n_embd); RMSNorm before attention,
per-head RMSNorm of Q and K, rope (NeoX layout), queries scaled by 1/sqrt(head_dim), RMSNorm after
attention and after the GELU-gated FFN ("sandwich" norms); a final RMSNorm.  What makes it an encoder:

* attention both ways, the whole text at once, no KV cache (as BERT's, models/bert.py);
* the sliding-window layers (five of every six, the sixth global, unless the file's
  ``attention.sliding_window_pattern`` says otherwise) see a *symmetric* window: token i sees token j
  where |i - j| <= sliding_window // 2 (llama.cpp's LLAMA_SWA_TYPE_SYMMETRIC); their rope base is
  ``rope.freq_base_swa`` (10k unless stated), the global layers' ``rope.freq_base``;
* after the final norm, where the file has them (converted with the sentence-transformers dense
  modules), two bias-free projections ``dense_2`` [n_embd -> dense_2_feat_out] then ``dense_3``
  [-> n_embd].  llama.cpp applies them to the pooled vector (or, pooling none, to every token's
  state); being linear they commute with mean, first- and last-token pooling, so :meth:`encode`
  applies them to every token's state and :meth:`runtime.api.Model.embed` pools and L2-normalises
  those as it does BERT's (what llama.cpp's per-token output with pooling none is, too).

Activations are numpy arrays on the host (prefill-only work); the weight products and norms run on
the backend's kernels, in the file's quant format.  On the GPU the states stay on the device (every op a kernel, the
GELU t5.cu's float16-table one), so a text goes up once and its states come down once.  The FFN's GELU rounds as
ggml's CPU GEGLU does (:func:`models.bert.gelu`: a float16 table): measured on the tiny model of
tests/tinygemmaembed.py, 1.9e-3 of states ~9 off llama.cpp's with the exact GELU, 1.2e-3 (worst)
with the rounding, and its pooled unit vectors 4e-5 and 7e-6 off.
"""

from __future__ import annotations

import math

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bert import POOLING, gelu
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope

TENSOR_NAMES.update({  # (llama.cpp's LLM_TENSOR_DENSE_2_OUT, LLM_TENSOR_DENSE_3_OUT)
    "dense_2": "dense_2.weight",
    "dense_3": "dense_3.weight",
})  # fmt: skip


def window_mask(T: int, window: int) -> np.ndarray:
    """The additive mask [T, T] of a symmetric sliding window of ``window`` tokens (llama.cpp's
    LLAMA_SWA_TYPE_SYMMETRIC): 0 where |i - j| <= window // 2, -inf elsewhere; all 0 for window 0."""
    mask = np.zeros((T, T), np.float32)
    if window > 0:
        i = np.arange(T)
        mask[np.abs(i[:, None] - i[None, :]) > window // 2] = -np.inf
    return mask


class GemmaEmbeddingModel(Model):
    archs = ("gemma-embedding",)
    encoder = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if backend.name not in ("cpu", "gpu"):
            raise UnsupportedModelError(f"{g.path}: {cfg.arch} embedding models run on the CPU or the GPU; drop --device {backend.name}")
        ld = WeightLoader(g, backend)
        self._gpu = backend.name == "gpu"  # (the states on the device: models/bert.py's device_states)
        self.pooling = POOLING.get(int(g.arch_get("pooling_type", 1) or 0), "mean")
        self.tok_embd = ld.matrix("tok_embd")
        self.output_norm = ld.vector("output_norm")
        self.layers = []
        for i in range(cfg.n_layer):
            L = {r: ld.matrix(r, i) for r in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
            for r in ("attn_norm", "q_norm", "k_norm", "attn_post_norm", "ffn_norm", "ffn_post_norm"):
                L[r] = ld.vector(r, i)
            self.layers.append(L)
        self.dense_2 = ld.matrix("dense_2", required=False)
        self.dense_3 = ld.matrix("dense_3", required=False)
        # (llama.cpp asserts the same: the projections start and end at n_embd)
        if self.dense_2 is not None and self.dense_2.shape[1] != cfg.n_embd:
            raise GGUFError(f"{g.path}: dense_2 takes {self.dense_2.shape[1]} features, not n_embd {cfg.n_embd}")
        if self.dense_3 is not None and self.dense_3.shape[0] != cfg.n_embd:
            raise GGUFError(f"{g.path}: dense_3 gives {self.dense_3.shape[0]} features, not n_embd {cfg.n_embd}")
        n_pos = max(cfg.n_ctx_train, 1)
        self.rope_global = make_rope(cfg, n_pos, cfg.rope_theta)
        self.rope_local = make_rope(cfg, n_pos, cfg.rope_theta_swa or cfg.rope_theta)

    def layer_specs(self) -> list[LayerSpec]:
        raise KvrunError(f"{self.cfg.name} is an embedding model ({self.cfg.arch}): it makes embeddings "
                         "(kvrun embed, /v1/embeddings), not text")  # fmt: skip

    def _linear(self, w, x: np.ndarray) -> np.ndarray:
        if self._gpu:
            out = self.be.zeros((x.shape[0], w.n_rows), np.float32)
            self.be.linear(w, x, out)
            return out
        out = np.empty((x.shape[0], w.n_rows), np.float32)
        self.be.linear(w, np.ascontiguousarray(x), out)
        return out

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """softmax(q k^T + mask) v by head, q already scaled: q [T, H, D], k and v [T, H_kv, D] -> [T, H*D]."""
        T, H, D = q.shape
        if self.be.name == "gpu":
            from ..ops.gpu import encoder as E  # (BertModel._attend's kernel: ops/gpu/encoder.cu)

            if E.fits(T, D):
                out = self.be.zeros((T, H, D), np.float32)
                E.attend_full(q, k, v, mask, 1.0, out)
                return out.reshape(T, H * D)
            q, k, v = (self.be.to_host(a) for a in (q, k, v))  # (a text too long for the kernel: on the host, and back up)
        g = H // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.matmul(q.transpose(1, 0, 2), k.transpose(1, 2, 0))  # [H, T, T]
        if mask is not None:
            s += mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = np.ascontiguousarray(np.matmul(s, v.transpose(1, 0, 2)).transpose(1, 0, 2)).reshape(T, H * D)
        return self.be.vector(o) if self._gpu else o

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Every token's final-normed state of ``tokens`` [T], through dense_2 and dense_3 where the file
        has them: float32 [T, n_embd]."""
        c, be = self.cfg, self.be
        T = len(tokens)
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        x = be.zeros((T, c.n_embd), np.float32) if self._gpu else np.empty((T, c.n_embd), np.float32)
        be.get_rows(self.tok_embd, np.asarray(tokens, np.int32), x)
        be.scale(x, math.sqrt(c.n_embd))
        pos = np.arange(T, dtype=np.int32)
        # (the window layers' mask; none where the text fits inside the window: every token sees every token)
        masks = {False: None, True: window_mask(T, c.sliding_window) if c.sliding_window and T - 1 > c.sliding_window // 2 else None}
        scale = np.float32(1.0 / math.sqrt(D))  # (llama.cpp fixes it so for the arch: f_attention_scale)
        xn = be.zeros(x.shape, np.float32) if self._gpu else np.empty_like(x)
        for il, L in enumerate(self.layers):
            swa = c.is_swa(il)
            cos, sin = self.rope_local if swa else self.rope_global
            be.rms_norm(x, L["attn_norm"], c.norm_eps, xn)
            self.trace("attn_norm", il, xn)
            q = self._linear(L["wq"], xn).reshape(T, H, D)
            k = self._linear(L["wk"], xn).reshape(T, Hkv, D)
            v = self._linear(L["wv"], xn).reshape(T, Hkv, D)
            be.norm_rope_qk(q, k, L["q_norm"], L["k_norm"], c.norm_eps, pos, cos, sin, c.rope_neox)
            q *= scale
            att = self._attend(q, k, v, masks[swa])
            self.trace("kqv_out", il, att)
            o = self._linear(L["wo"], att)
            be.rms_norm_add(o, L["attn_post_norm"], c.norm_eps, x)
            be.rms_norm(x, L["ffn_norm"], c.norm_eps, xn)
            gate, up = self._linear(L["w_gate"], xn), self._linear(L["w_up"], xn)
            if self._gpu:  # (t5.cu's: the same float16 table)
                from ..ops.gpu import encoder as E

                E.gelu_f16_glu(gate, up, gate)
            else:
                np.multiply(gelu(gate), up, out=gate)  # (ggml's GEGLU on the CPU: GELU read from its float16 table)
            o = self._linear(L["w_down"], gate)
            be.rms_norm_add(o, L["ffn_post_norm"], c.norm_eps, x)
            self.trace("l_out", il, x)
        be.rms_norm(x, self.output_norm, c.norm_eps, xn)
        self.trace("result_norm", -1, xn)
        if self.dense_2 is not None:
            xn = self._linear(self.dense_2, xn)
        if self.dense_3 is not None:
            xn = self._linear(self.dense_3, xn)
        return be.to_host(xn) if self._gpu else xn
