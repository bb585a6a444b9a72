"""BERT-family text encoders, for embeddings: ``bert`` (all-MiniLM, bge, mxbai-embed,
snowflake-arctic-embed) and ``nomic-bert`` (nomic-embed-text), as llama.cpp's ``llm_build_bert``.

An encoder reads the whole text at once, every token seeing every other (no causal mask, no KV
cache), and gives a hidden state per token, which :meth:`runtime.api.Model.embed` pools (the
file's ``pooling_type``: mean, the [CLS] token's, or the last) into one vector.  It writes no text:
generation is refused in one line.

The block is post-norm: x = LN(x + attn(x)); x = LN(x + ffn(x)), LayerNorms with biases.  BERT adds
learned position and token-type embeddings and normalises them; its FFN is GELU(up) -> down, with
biases.  Nomic-BERT has rotary positions instead, one fused QKV product and a SwiGLU FFN without
biases.  Activations are numpy arrays on the host (prefill-only work, BLAS-sized); the weight
products run on the backend's kernels, in the file's quant format.  On ``--device gpu`` the weights live on the device
and the attention both ways (with its bias or mask) runs in ops/gpu/encoder.cu; the states stay on the device too
(``device_states``, every encoder of the family's), the norms, rope, biases and activations kernels (ops/gpu/nn.cu,
t5.cu's float16-table GELU, the CPU's), so a text's states come down once, at the end.

The block's parts are hooks (``_load_ffn``, ``_qk``, ``_attn_bias``, ``_attention``, ``_attn_residual``, ``_ffn``)
that the family's other encoders override: models/jina_bert.py (jina-bert-v2's ALiBi and GEGLU, jina-bert-v3),
models/nomic_bert_moe.py, and the pre-norm ones on models/neo_bert.py's PreNormEncoder.
"""

from __future__ import annotations

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .rank import RankHead

TENSOR_NAMES.update({  # BERT's names beside the decoders' (llama.cpp's LLM_TENSOR_* for bert)
    "type_embd": "token_types.weight",
    "pos_embd": "position_embd.weight",
    "tok_norm": "token_embd_norm.weight",
    "tok_norm_b": "token_embd_norm.bias",
    "bqkv": "blk.{i}.attn_qkv.bias",
    "bo": "blk.{i}.attn_output.bias",
    "attn_out_norm": "blk.{i}.attn_output_norm.weight",
    "attn_out_norm_b": "blk.{i}.attn_output_norm.bias",
    "b_up": "blk.{i}.ffn_up.bias",
    "b_down": "blk.{i}.ffn_down.bias",
    "layer_out_norm": "blk.{i}.layer_output_norm.weight",
    "layer_out_norm_b": "blk.{i}.layer_output_norm.bias",
})  # fmt: skip

POOLING = {1: "mean", 2: "cls", 3: "last"}  #: GGUF pooling_type -> how Model.embed pools (0, none: mean)
#: the encoders whose Q and K rotate (llama.cpp's llm_build_bert; bert has learned positions, jina-bert-v2 ALiBi)
ROPE_ARCHS = ("nomic-bert", "nomic-bert-moe", "jina-bert-v3")


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (float32 in and out, statistics in float64)."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=-1, keepdims=True)
    y = ((x64 - mu) / np.sqrt(var + eps)).astype(np.float32) * w
    return y + b if b is not None else y


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form, as ggml's CPU computes it: looked up in a table over float16 inputs, the
    result rounded to float16 (GGML_GELU_FP16), x past +-10 passed or zeroed (measured: 1.3e-3 off
    llama.cpp's hidden states without the rounding, 1e-5 with it)."""
    xh = x.astype(np.float16).astype(np.float32)
    y = 0.5 * xh * (1.0 + np.tanh(np.float32(0.7978845608028654) * (xh + np.float32(0.044715) * xh * xh * xh)))
    y = y.astype(np.float16).astype(np.float32)
    return np.where(x >= 10.0, x, np.where(x <= -10.0, np.float32(0.0), y))


class BertModel(Model):
    archs = ("bert", "nomic-bert")
    encoder = True
    #: on the GPU the states stay on the device, every op a kernel (a subclass whose own hooks are numpy work says False)
    device_states = True

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        ld = self._start(g, cfg, backend, n_ctx, n_batch)
        self.rope = cfg.arch in ROPE_ARCHS
        self.eps = float(g.arch_get("attention.layer_norm_epsilon", 1e-12))
        self.tok_embd = ld.matrix("tok_embd")
        types = ld.host_vector("type_embd", required=False)
        self.type_row = None if types is None else types[: cfg.n_embd]  # every token is "sentence A" (type 0), as llama.cpp
        self.pos_embd = ld.matrix("pos_embd") if cfg.arch == "bert" else None
        self.tok_norm, self.tok_norm_b = ld.host_vector("tok_norm"), ld.host_vector("tok_norm_b")
        if self.rope:
            self.cos, self.sin = make_rope(cfg, cfg.n_ctx_train, cfg.rope_theta)
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict = {}
            if ld.has("wqkv", i):
                L["wq"], L["wk"], L["wv"] = ld.matrix_rows("wqkv", i, (q_dim, kv_dim, kv_dim))
                bqkv = ld.host_vector("bqkv", i, required=False)
                L["bq"], L["bk"], L["bv"] = (None,) * 3 if bqkv is None else np.split(bqkv, [q_dim, q_dim + kv_dim])
            else:
                for w in ("q", "k", "v"):
                    L[f"w{w}"], L[f"b{w}"] = ld.matrix(f"w{w}", i), ld.host_vector(f"b{w}", i, required=False)
            L["wo"], L["bo"] = ld.matrix("wo", i), ld.host_vector("bo", i, required=False)
            L["n1"], L["n1_b"] = ld.host_vector("attn_out_norm", i), ld.host_vector("attn_out_norm_b", i, required=False)
            self._load_ffn(ld, i, L)
            L["n2"], L["n2_b"] = ld.host_vector("layer_out_norm", i), ld.host_vector("layer_out_norm_b", i, required=False)
            self.layers.append(L)

    def _start(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int, pooling: int = 1) -> WeightLoader:
        """What every encoder's __init__ starts with (the family's others too: not BertModel's weights): Model's, the
        CPU-only refusal, the file's pooling (``pooling`` where it states none) and a cross-encoder's rank head
        (pooling type rank: models/rank.py; else None); the loader for the rest."""
        Model.__init__(self, g, cfg, backend, n_ctx, n_batch)
        self._gpu = backend.name == "gpu" and self.device_states  # (the device helpers below: _dev, _host, _layer_norm)
        self._consts: dict[int, tuple[np.ndarray, object]] = {}
        if backend.name not in ("cpu", "gpu"):
            raise UnsupportedModelError(f"{g.path}: {cfg.arch} embedding models run on the CPU or the GPU; drop --device {backend.name}")
        self.pooling = POOLING.get(int(g.arch_get("pooling_type", pooling) or 0), "mean")
        self.rank_head = RankHead.load(g, cfg.arch)
        return WeightLoader(g, backend)

    def _load_ffn(self, ld: WeightLoader, i: int, L: dict) -> None:
        """Layer i's FFN weights into L (a subclass's MoE or gated FFN loads its own)."""
        L["w_up"], L["b_up"] = ld.matrix("w_up", i), ld.host_vector("b_up", i, required=False)
        L["w_gate"] = ld.matrix("w_gate", i, required=False)
        L["w_down"], L["b_down"] = ld.matrix("w_down", i), ld.host_vector("b_down", i, required=False)

    def layer_specs(self) -> list[LayerSpec]:
        raise KvrunError(f"{self.cfg.name} is an embedding model ({self.cfg.arch}): it makes embeddings "
                         "(kvrun embed, /v1/embeddings), not text")  # fmt: skip

    def _dev(self, a: np.ndarray) -> object:
        """The device copy of the host constant ``a`` (a norm's weights, a bias, a table), uploaded once."""
        hit = self._consts.get(id(a))
        if hit is None or hit[0] is not a:
            hit = self._consts[id(a)] = (a, self.be.vector(a))
        return hit[1]

    def _host(self, x: object) -> np.ndarray:
        """The states a caller reads on the host: the one copy down of a forward on the device."""
        return self.be.to_host(x) if self._gpu else x

    def _layer_norm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """:func:`layer_norm` with the model's eps, on the device where the states are (nn.cu's layer_norm_f32)."""
        if not self._gpu:
            return layer_norm(x, w, b, self.eps)
        out = self.be.zeros(x.shape, np.float32)
        self.be.layer_norm(x, self._dev(w), None if b is None else self._dev(b), self.eps, out)
        return out

    def _linear(self, w, x: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        if self._gpu:  # (the product, then its bias, on the device)
            out = self.be.zeros((x.shape[0], w.n_rows), np.float32)
            self.be.linear(w, x, out)
            if b is not None:
                self.be.add_bias(out, self._dev(b))
            return out
        out = np.empty((x.shape[0], w.n_rows), np.float32)
        self.be.linear(w, np.ascontiguousarray(x), out)
        return out + b if b is not None else out

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """Rotary positions 0..T-1 on x [T, H, head_dim]: NeoX layout (halves paired), or consecutive pairs
        where the architecture's rope is llama.cpp's "normal" one (cfg.rope_neox False: neo-bert)."""
        T, half = x.shape[0], self.cos.shape[1]
        if self._gpu:  # (nn.cu's rope_f32, in place; the tables uploaded once)
            self.be.rope(x, np.arange(T, dtype=np.int32), self.cos, self.sin, self.cfg.rope_neox)
            return x
        c, s = self.cos[:T, None, :], self.sin[:T, None, :]
        if self.cfg.rope_neox:
            a, b = x[..., :half].copy(), x[..., half : 2 * half].copy()
            x[..., :half], x[..., half : 2 * half] = a * c - b * s, a * s + b * c
        else:
            a, b = x[..., 0 : 2 * half : 2].copy(), x[..., 1 : 2 * half : 2].copy()
            x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2] = a * c - b * s, a * s + b * c
        return x

    def _qk(self, q: np.ndarray, k: np.ndarray, L: dict) -> tuple[np.ndarray, np.ndarray]:
        """Q and K [T, H, D] as attention reads them: rotated where the architecture rotates."""
        return (self._rope(q), self._rope(k)) if self.rope else (q, k)

    def _attn_bias(self, T: int) -> np.ndarray | None:
        """What is added to the scaled scores [H, T, T] before the softmax (None: nothing; ALiBi's, jina-bert-v2)."""
        return None

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """softmax(q k^T / sqrt(D) + bias) v, every token seeing every token: q [T, H, D], k and v [T, H_kv, D] -> [T, H*D]."""
        T, H, D = q.shape
        if self.be.name == "gpu":
            from ..ops.gpu import encoder as E  # (imported only here: the CPU's runs never load the GPU's modules)

            if E.fits(T, D):
                out = self.be.zeros((T, H, v.shape[2]), np.float32) if self._gpu else np.empty((T, H, v.shape[2]), np.float32)
                E.attend_full(q, k, v, bias, float(np.float32(1.0 / np.sqrt(D))), out)
                return out.reshape(T, H * v.shape[2])
            if self._gpu:  # (a text too long for the kernel's shared memory: on the host, and back up)
                return self.be.vector(self._attend_host(*(self.be.to_host(a) for a in (q, k, v)), bias))
        return self._attend_host(q, k, v, bias)

    def _attend_host(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """:meth:`_attend` in numpy."""
        T, H, D = q.shape
        g = H // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("thd,shd->hts", q, k) * np.float32(1.0 / np.sqrt(D))  # [H, T, T]
        if bias is not None:
            s += bias
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return np.einsum("hts,shd->thd", s, v).reshape(T, H * D)

    def _attention(self, x: np.ndarray, L: dict, bias: np.ndarray | None) -> np.ndarray:
        """Self-attention's output for x [T, n_embd] (before the residual add): the Q, K and V products (biased where L
        has biases), :meth:`_qk`, :meth:`_attend` with ``bias``, the output product."""
        c, T = self.cfg, x.shape[0]
        q = self._linear(L["wq"], x, L.get("bq")).reshape(T, c.n_head, c.head_dim)
        k = self._linear(L["wk"], x, L.get("bk")).reshape(T, c.n_head_kv, c.head_dim)
        v = self._linear(L["wv"], x, L.get("bv")).reshape(T, c.n_head_kv, c.head_dim)
        q, k = self._qk(q, k, L)
        return self._linear(L["wo"], self._attend(q, k, v, bias), L.get("bo"))

    def _attn_residual(self, x: np.ndarray, o: np.ndarray, L: dict) -> np.ndarray:
        """The stream after attention: the post-norm LN(x + attn(x))."""
        return self._layer_norm(x + o, L["n1"], L["n1_b"])

    def _ffn(self, x: np.ndarray, L: dict, il: int) -> np.ndarray:
        """The FFN's output for x [T, n_embd] (before the residual add): GELU(up) -> down, or nomic-bert's SwiGLU."""
        up = self._linear(L["w_up"], x, L.get("b_up"))
        if self._gpu:  # (nn.cu's SwiGLU, t5.cu's float16-table GELU, in place)
            from ..ops.gpu import encoder as E

            if L["w_gate"] is None:
                E.gelu_f16(up, up)
                return self._linear(L["w_down"], up, L.get("b_down"))
            gate = self._linear(L["w_gate"], x, None)
            self.be.silu_mul(gate, up, gate)
            return self._linear(L["w_down"], gate, L.get("b_down"))
        if L["w_gate"] is not None:  # SwiGLU (nomic-bert)
            gate = self._linear(L["w_gate"], x, None)
            h = gate / (1.0 + np.exp(-gate)) * up
        else:
            h = gelu(up)
        return self._linear(L["w_down"], h, L.get("b_down"))

    def _token_rows(self, tokens: np.ndarray) -> np.ndarray:
        """The token embeddings' rows of ``tokens`` [T]: float32 [T, n_embd]."""
        shape = (len(tokens), self.cfg.n_embd)
        x = self.be.zeros(shape, np.float32) if self._gpu else np.empty(shape, np.float32)
        self.be.get_rows(self.tok_embd, tokens if self._gpu else np.asarray(tokens, np.int32), x)
        return x

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """The last layer's hidden state of every token of ``tokens`` [T]: float32 [T, n_embd]."""
        T = len(tokens)
        x = self._token_rows(tokens)
        if self.type_row is not None:
            x += self._dev(self.type_row) if self._gpu else self.type_row
        if self.pos_embd is not None:
            p = self.be.zeros(x.shape, np.float32) if self._gpu else np.empty_like(x)
            self.be.get_rows(self.pos_embd, np.arange(T, dtype=np.int32), p)
            x += p
        x = self._layer_norm(x, self.tok_norm, self.tok_norm_b)
        bias = self._attn_bias(T)
        for il, L in enumerate(self.layers):
            x = self._attn_residual(x, self._attention(x, L, bias), L)
            self.trace("ffn_inp", il, x)
            x = self._layer_norm(x + self._ffn(x, L, il), L["n2"], L["n2_b"])
        return self._host(x)
