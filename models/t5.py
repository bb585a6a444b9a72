"""T5 text generation (``t5``: T5, T5 v1.1, Flan-T5, MADLAD-400): the encoder-decoder, as llama.cpp runs it
(``llm_build_t5_enc`` over the prompt once in ``llama_encode``, then ``llm_build_t5_dec`` a ``llama_decode`` at a time).

* The encoder is models/t5encoder.py's (``enc.*`` tensors, bidirectional relative position buckets, final
  ``enc.output_norm``); its output, every prompt token's state, is what the decoder's cross-attention reads.
* The decoder (``dec.*``) starts from ``decoder_start_token_id`` (T5's pad, 0) and attends causally to its own
  tokens with a learned bias per *causal* relative position bucket (``dec.blk.0.attn_rel_b``: all the buckets for
  distances into the past, |d| below half of them exactly, beyond that log-spaced to 128), then to the encoder's
  output without mask or bias (cross-attention: ``cross_attn_{q,k,v,o}``), then its FFN (gated GELU where the file
  has ``ffn_gate``, else ReLU), each pre-normed by an RMSNorm; ``dec.output_norm`` and ``output`` (else the token
  embeddings) make the logits.  Scores are never scaled (T5 folds 1/sqrt(d_kv) into its Q weights).

How it meets the engine (runtime/engine.py): the model says ``encoder_decoder``; a prompt fed on an empty cache
goes to :meth:`T5Model.encode_prompt` instead, which runs the encoder, keeps every decoder layer's cross-attention
K and V of it (computed once a prompt, as llama.cpp keeps the encoder's output) in the model's own state, keyed
by the cache (one per sequence), and hands back the one token the decoder is fed in its place, the start token.
From there every forward is the decoder's, tokens after what the cache holds, as any causal model's.

Self-attention keeps its K and V in kvrun's cache (cache/ as every model: fp16, truncation, sessions).  The
relative-position bias is not a product of something of the query and something of the key (as ALiBi's is,
models/bloom.py), so the kernels cannot carry it; this small model class attends on the host instead: the new
K/V are stored in the plain cache's fp16 rows without its kernel's attention (:meth:`PlainLayerCache.store`: an
unbiased result would only be thrown away), and the attention is computed once, from those rows with the bias
added, every head in one pass.  Hence the plain cache only (no --kv-* compression), and one sequence a forward.  On
the GPU the states stay on the device and every op is a kernel: the rows go to its plain fp16 ring by its kernel,
ops/gpu/encoder.cu attends over the ring with each layer's bias by query-minus-key distance (a table uploaded once, the
positions read on the device) and, its kernel on a float32 batch, to the encoded prompt, and the residual adds ride in the
output products; the host decides nothing from device data, so a decode step is captured as a CUDA graph and replayed
(runtime/graphs.py), keyed by the encoded prompt it reads (:meth:`T5Model.decode_graph_key`).
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..cache.plain import PlainLayerCache
from ..loaders.config import ModelConfig
from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .t5encoder import MAX_DISTANCE, T5EncoderModel

TENSOR_NAMES.update({  # (llama.cpp's LLM_TENSOR_DEC_*)
    "dec_attn_norm": "dec.blk.{i}.attn_norm.weight",
    "dec_attn_rel_b": "dec.blk.{i}.attn_rel_b.weight",
    "dec_wq": "dec.blk.{i}.attn_q.weight",
    "dec_wk": "dec.blk.{i}.attn_k.weight",
    "dec_wv": "dec.blk.{i}.attn_v.weight",
    "dec_wo": "dec.blk.{i}.attn_o.weight",
    "dec_cross_norm": "dec.blk.{i}.cross_attn_norm.weight",
    "dec_cross_wq": "dec.blk.{i}.cross_attn_q.weight",
    "dec_cross_wk": "dec.blk.{i}.cross_attn_k.weight",
    "dec_cross_wv": "dec.blk.{i}.cross_attn_v.weight",
    "dec_cross_wo": "dec.blk.{i}.cross_attn_o.weight",
    "dec_ffn_norm": "dec.blk.{i}.ffn_norm.weight",
    "dec_w_gate": "dec.blk.{i}.ffn_gate.weight",
    "dec_w_up": "dec.blk.{i}.ffn_up.weight",
    "dec_w_down": "dec.blk.{i}.ffn_down.weight",
    "dec_output_norm": "dec.output_norm.weight",
})  # fmt: skip


def causal_position_bucket(rel: np.ndarray, n_buckets: int, max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """T5's decoder bucket of each key-minus-query distance in ``rel`` (keys after the query: bucket 0, masked
    anyway), as llama.cpp's llama_relative_position_bucket(..., bidirectional=false) computes it, rounding and
    all: d = query - key; d < n_buckets / 2 exactly, beyond that log-spaced up to max_distance.  The C code's
    ``logf`` times an integer is a float product, divided by a double, floored as a float: at the distances
    where the exact value is a whole number (16, 32, 64 with 16 buckets) that order decides the bucket."""
    max_exact = n_buckets // 2
    d = np.maximum(-np.asarray(rel, np.int64), 0)
    lf = np.log((np.maximum(d, 1) / max_exact).astype(np.float32))  # (float32: logf; d = 0 takes the exact branch)
    prod = (lf * np.float32(n_buckets - max_exact)).astype(np.float32)
    large = np.floor((max_exact + prod.astype(np.float64) / math.log(max_distance / max_exact)).astype(np.float32))
    large = np.minimum(large.astype(np.int64), n_buckets - 1)
    return np.where(d < max_exact, d, large).astype(np.int64)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


class T5Model(T5EncoderModel):
    """T5's encoder (T5EncoderModel's weights and :meth:`encode`) and its decoder (this class's)."""

    archs = ("t5",)
    ROPE_ABSENCE = "relative position buckets: a learned bias per distance"  # (the decoder's self-attention)
    encoder = False  # (it writes text: Engine.eval, not Engine.embed)
    encoder_decoder = True
    cuda_graphs = True  # (on the GPU a decode step is kernels reading device buffers: models/t5.py's docstring)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        ld = WeightLoader(g, backend)
        #: the decoder's depth: decoder_block_count where the file states it (llama.cpp's dec_n_layer), else the encoder's
        self.n_dec = int(g.arch_get("decoder_block_count", cfg.n_layer) or cfg.n_layer)
        start = g.arch_get("decoder_start_token_id")
        if start is None:  # (llama-cli's fallback: BOS; T5's vocabulary has none, and its start token is its pad, 0)
            start = g.metadata.get("tokenizer.ggml.bos_token_id", 0)
        self.dec_start = int(start)
        if not 0 <= self.dec_start < cfg.n_vocab:
            raise UnsupportedModelError(f"{g.path}: decoder_start_token_id {self.dec_start} is outside the vocabulary of {cfg.n_vocab}")
        self.dec_output_norm = ld.host_vector("dec_output_norm")
        output = ld.matrix("output", required=False)
        self.output = output if output is not None else self.tok_embd  # (tied: T5 v1.0's; Flan-T5 has its own)
        roles = ("wq", "wk", "wv", "wo", "cross_wq", "cross_wk", "cross_wv", "cross_wo", "w_up", "w_down")
        self.dec_layers = []
        for i in range(self.n_dec):
            L: dict = {r: ld.matrix("dec_" + r, i) for r in roles}
            L["w_gate"] = ld.matrix("dec_w_gate", i, required=False)
            for r in ("attn_norm", "cross_norm", "ffn_norm"):
                L[r] = ld.host_vector("dec_" + r, i)
            L["rel_b"] = ld.host_vector("dec_attn_rel_b", i, required=i == 0)  # (layer 0's serves where a layer has none)
            self.dec_layers.append(L)
        #: per sequence (its cache), each decoder layer's cross-attention K and V [T_enc, n_head_kv, head_dim] of the prompt
        self._cross: weakref.WeakKeyDictionary[KVCache, list[tuple[np.ndarray, np.ndarray]]] = weakref.WeakKeyDictionary()
        #: per sequence, which encoded prompt its cross K/V are (a captured decode step holds their device pointers)
        self._cross_serial: weakref.WeakKeyDictionary[KVCache, int] = weakref.WeakKeyDictionary()
        self._n_encoded = 0
        self._bias_d: dict[tuple, object] = {}  # the GPU's bias by distance of each layer's table (_distance_bias)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg  # (the decoder's self-attention; scale 1: T5 folds it into Q)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim, 0, 1.0, 0.0)] * self.n_dec

    # ------------------------------------------------------------------ encoder
    def encode_prompt(self, cache: KVCache, tokens: np.ndarray) -> int:
        """Run the encoder over the prompt ``tokens`` [T] for the sequence of ``cache`` (empty): keep every decoder
        layer's cross-attention K and V of its output, and return the token the decoder starts from."""
        c = self.cfg
        enc = self.encode(np.asarray(tokens, np.int32))
        T = len(enc)
        # (on the GPU the products are device arrays already: made once a prompt, read by every step)
        keep = self.be.vector if self.be.name == "gpu" and not self._gpu else (lambda a: a)
        self._n_encoded += 1
        self._cross_serial[cache] = self._n_encoded
        self._cross[cache] = [
            (keep(self._linear(L["cross_wk"], enc, None).reshape(T, c.n_head_kv, c.head_dim)),
             keep(self._linear(L["cross_wv"], enc, None).reshape(T, c.n_head_kv, c.head_dim)))
            for L in self.dec_layers
        ]  # fmt: skip
        return self.dec_start

    def decode_graph_key(self, cache: KVCache, pos: int) -> int:
        """What a captured decode step bakes in besides the cache's layers (runtime/graphs.py): which encoded prompt's
        cross-attention K/V it reads (a new prompt on the same cache makes new ones)."""
        return self._cross_serial.get(cache, 0)

    # ------------------------------------------------------------------ decoder
    def _self_attend(self, layer: object, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Store ``k``/``v`` [T, H_kv, D] at ``pos`` in the layer's cache, then the causal attention of ``q`` [T, H, D]
        over what it holds, with the relative position bias of ``table`` [buckets, H]: [T, H*D]."""
        if type(layer).__name__ == "GPUPlainLayerCache":
            return self._self_attend_gpu(layer, q, k, v, pos, table)
        if type(layer) is not PlainLayerCache:
            raise KvrunError("t5 runs on the plain fp16 KV cache only: drop the --kv-* flags")
        T, H, D = q.shape
        layer.store(k, v, pos)  # (without the kernel's attention: an unbiased result this pass would only overwrite)
        slots = np.flatnonzero((layer.pos >= 0) & (layer.pos <= pos[-1]))
        kpos = layer.pos[slots].astype(np.int64)
        rel = kpos[None, :] - pos.astype(np.int64)[:, None]  # [T, n] key minus query
        bias = table[causal_position_bucket(rel, self.n_buckets)].transpose(2, 0, 1)  # [H, T, n]
        Hkv, n = layer.spec.n_head_kv, len(slots)
        kk = layer.k[:, slots].view(np.float16).astype(np.float32)  # [H_kv, n, D]: every head's rows in one pass
        vv = layer.v[:, slots].view(np.float16).astype(np.float32)
        qg = q.transpose(1, 0, 2).reshape(Hkv, -1, D)  # [H_kv, g*T, D]: the query heads sharing a K/V head together
        s = (qg @ kk.transpose(0, 2, 1)).reshape(H, T, n) + bias
        p = _softmax_rows(np.where(rel > 0, -np.inf, s))
        return (p.reshape(Hkv, -1, n) @ vv).reshape(H, T, D).transpose(1, 0, 2).reshape(T, H * D)

    def _self_attend_gpu(self, layer: object, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, table: np.ndarray) -> np.ndarray:
        """:meth:`_self_attend` on the GPU's plain fp16 cache: the rows stored by its kernel, then ops/gpu/encoder.cu's attention
        over the ring's decode slots (a decode step's the same launches for 128 positions at a time, as the plain cache's),
        the causal mask and the bias by distance applied on the device from the positions the ring and the step hold."""
        from ..ops.gpu import attention as attn
        from ..ops.gpu import encoder as E
        from ..ops.gpu.arrays import positions, to_device

        T, H, D = q.shape
        pos_h = np.asarray(pos)
        layer.note_positions(pos_h)  # type: ignore[attr-defined]
        pd = positions(pos_h)  # (a captured step's: the graph's input buffer, runtime/graphs.py)
        attn.kv_store(to_device(k), to_device(v), pd, layer.k, layer.v, layer.pos)  # type: ignore[attr-defined]
        n_slots = layer.decode_slots()  # type: ignore[attr-defined]
        if not E.fits(n_slots, D):
            raise KvrunError(f"t5 on the GPU attends over at most {E.SHARED_FLOATS - D - 32} of its tokens: load it with a smaller context")
        out = self.be.zeros((T, H, D), np.float32)
        E.attend_relative_ring(to_device(q), layer.k, layer.v, layer.pos, pd, n_slots, self._distance_bias(table), out)  # type: ignore[attr-defined]
        return out.reshape(T, H * D)

    def _distance_bias(self, table: np.ndarray) -> object:
        """The device table [H, MAX_DISTANCE + 1] of ``table``'s [buckets, H] bias at each query-minus-key distance (the
        causal buckets saturate at MAX_DISTANCE: the last entry serves every longer one), made once a layer."""
        key = (table.ctypes.data, table.shape)
        d = self._bias_d.get(key)
        if d is None:
            rel = -np.arange(MAX_DISTANCE + 1)  # (key minus query)
            d = self._bias_d[key] = self.be.vector(np.ascontiguousarray(table[causal_position_bucket(rel, self.n_buckets)].T))
        return d

    def _cross_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Every query [T, H, D] over the whole encoded prompt's k, v [T_enc, H_kv, D], unscaled, unmasked: [T, H*D]."""
        T, H, D = q.shape
        if self.be.name == "gpu":
            from ..ops.gpu import encoder as E

            if E.fits(k.shape[0], D):
                out = self.be.zeros((T, H, D), np.float32) if self._gpu else np.empty((T, H, D), np.float32)
                E.attend_full(q, k, v, None, 1.0, out)
                return out.reshape(T, H * D)
            k, v = self.be.to_host(k), self.be.to_host(v)  # (a prompt too long for the kernel's shared memory: on the host)
        g = H // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        p = _softmax_rows(np.einsum("thd,shd->hts", q, k))
        return np.einsum("hts,shd->thd", p, v).reshape(T, H * D)

    def forward(self, tokens: np.ndarray, pos: np.ndarray, cache: KVCache, out_rows: np.ndarray, logits: np.ndarray) -> None:
        """The decoder over ``tokens`` [T] at ``pos`` after what ``cache`` holds, reading the prompt :meth:`encode_prompt`
        encoded for this cache; the logits of the rows ``out_rows`` into ``logits``."""
        if self.embedding:  # (Engine.embed: a decoder's states are no text's embedding)
            raise KvrunError("t5 writes text; kvrun embeds with T5's encoder from a t5encoder file (convert_hf_to_gguf of T5EncoderModel)")
        cross = self._cross.get(cache) if isinstance(cache, KVCache) else None
        if cross is None:
            raise KvrunError("t5 decodes after its encoder has read a prompt: feed the prompt on an empty cache first")
        c = self.cfg
        T = len(tokens)
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        x = self._token_rows(tokens)
        table0 = self.dec_layers[0]["rel_b"].reshape(self.n_buckets, H)
        for il, L in enumerate(self.dec_layers):
            table = table0 if L["rel_b"] is None else L["rel_b"].reshape(self.n_buckets, H)
            xn = self._norm(x, L["attn_norm"])
            q = self._linear(L["wq"], xn, None).reshape(T, H, D)
            k = self._linear(L["wk"], xn, None).reshape(T, Hkv, D)
            v = self._linear(L["wv"], xn, None).reshape(T, Hkv, D)
            x = self._add(x, L["wo"], self._self_attend(cache[il], q, k, v, pos, table))
            self.trace("cross_inp", il, x)
            xn = self._norm(x, L["cross_norm"])
            qc = self._linear(L["cross_wq"], xn, None).reshape(T, H, D)
            x = self._add(x, L["cross_wo"], self._cross_attend(qc, *cross[il]))
            self.trace("ffn_inp", il, x)
            x = self._add(x, None, self._ffn(self._norm(x, L["ffn_norm"]), L, il))  # (the encoder's FFN, the decoder layer's weights)
            self.trace("l_out", il, x)
        if len(out_rows) == 0:
            return
        rows = np.asarray(out_rows)
        if self._gpu:  # (the engine's rows are a run: a slice, no index array to upload in a captured step)
            run = bool((np.diff(rows) == 1).all())
            xo = self._norm(x[int(rows[0]) : int(rows[0]) + len(rows)] if run else x[self.be.xp.asarray(rows)], self.dec_output_norm)
        else:
            xo = self._norm(x[rows], self.dec_output_norm)
        if self.embedding:
            logits[...] = xo
            return
        self.be.linear(self.output, xo if self._gpu else np.ascontiguousarray(xo), logits)

    def _add(self, x: np.ndarray, w: object, y: np.ndarray) -> np.ndarray:
        """The residual stream ``x`` plus ``y`` (``w``: through that product first); on the GPU in place, in kernels
        (the add riding in a decode step's output matvec)."""
        if not self._gpu:
            return x + (y if w is None else self._linear(w, y, None))
        if w is None:
            self.be.add(x, y)
        else:
            self.be.linear_add(w, y, x)
        return x
