"""What every architecture file shares: weight lookup by GGUF name, buffers, rope tables.

Tensor names are data (``TENSOR_NAMES``), as in llama.cpp's name tables; an
architecture with other names overrides entries in its own file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile, TensorInfo
from ..loaders.quants import QUANT_TYPES, SUPPORTED_TYPES, is_supported
from ..ops.backend import Backend, Weight

# GGUF tensor name patterns ({i}: layer index)
TENSOR_NAMES: dict[str, str] = {
    "tok_embd": "token_embd.weight",
    "rope_freqs": "rope_freqs.weight",
    "output": "output.weight",
    "output_norm": "output_norm.weight",
    "attn_norm": "blk.{i}.attn_norm.weight",
    "wq": "blk.{i}.attn_q.weight",
    "wk": "blk.{i}.attn_k.weight",
    "wv": "blk.{i}.attn_v.weight",
    "wo": "blk.{i}.attn_output.weight",
    "wqkv": "blk.{i}.attn_qkv.weight",
    "rope_factors_long": "rope_factors_long.weight",
    "rope_factors_short": "rope_factors_short.weight",
    "bq": "blk.{i}.attn_q.bias",
    "bk": "blk.{i}.attn_k.bias",
    "bv": "blk.{i}.attn_v.bias",
    "q_norm": "blk.{i}.attn_q_norm.weight",
    "k_norm": "blk.{i}.attn_k_norm.weight",
    "attn_post_norm": "blk.{i}.post_attention_norm.weight",
    "ffn_norm": "blk.{i}.ffn_norm.weight",
    "w_gate": "blk.{i}.ffn_gate.weight",
    "w_up": "blk.{i}.ffn_up.weight",
    "w_down": "blk.{i}.ffn_down.weight",
    "ffn_post_norm": "blk.{i}.post_ffw_norm.weight",
    "ffn_gate_inp": "blk.{i}.ffn_gate_inp.weight",
    "ffn_gate_exps": "blk.{i}.ffn_gate_exps.weight",
    "ffn_up_exps": "blk.{i}.ffn_up_exps.weight",
    "ffn_down_exps": "blk.{i}.ffn_down_exps.weight",
    "ffn_gate_shexp": "blk.{i}.ffn_gate_shexp.weight",
    "ffn_up_shexp": "blk.{i}.ffn_up_shexp.weight",
    "ffn_down_shexp": "blk.{i}.ffn_down_shexp.weight",
    "ffn_gate_inp_shexp": "blk.{i}.ffn_gate_inp_shexp.weight",  # (Qwen2-MoE: the shared expert's sigmoid gate)
    "exp_probs_b": "blk.{i}.exp_probs_b.bias",
    # gpt-oss: learned attention sinks, and biases on the router and every expert
    "attn_sinks": "blk.{i}.attn_sinks.weight",
    "attn_gate": "blk.{i}.attn_gate.weight",  # (LLM_TENSOR_ATTN_GATE: an attention output gate, AFMoE's, Step-3.5's, Laguna's, ...)
    "ffn_gate_inp_b": "blk.{i}.ffn_gate_inp.bias",
    "ffn_gate_exps_b": "blk.{i}.ffn_gate_exps.bias",
    "ffn_up_exps_b": "blk.{i}.ffn_up_exps.bias",
    "ffn_down_exps_b": "blk.{i}.ffn_down_exps.bias",
    # biases (Phi-2, StableLM: LayerNorms with a bias, biased projections)
    "output_norm_b": "output_norm.bias",
    "output_b": "output.bias",
    "attn_norm_b": "blk.{i}.attn_norm.bias",
    "bqkv": "blk.{i}.attn_qkv.bias",
    "bo": "blk.{i}.attn_output.bias",
    "ffn_norm_b": "blk.{i}.ffn_norm.bias",
    "b_up": "blk.{i}.ffn_up.bias",
    "b_down": "blk.{i}.ffn_down.bias",
}


class WeightLoader:
    """Fetches tensors by role name, checking types and shapes as it goes."""

    def __init__(self, g: GGUFFile, backend: Backend) -> None:
        self.g = g
        self.be = backend

    def _info(self, role: str, i: int | None, required: bool) -> TensorInfo | None:
        name = TENSOR_NAMES[role].format(i=i)
        t = self.g.tensors.get(name)
        if t is None and required:
            raise GGUFError(f"{self.g.path}: tensor {name!r} is missing; the file is incomplete or not a supported model")
        if t is not None and not is_supported(t.qtype):
            raise UnsupportedModelError(
                f"{self.g.path}: tensor {name!r} has type {t.type_name}, which kvrun cannot run yet; "
                f"use a model quantized to {'/'.join(QUANT_TYPES[q].name for q in SUPPORTED_TYPES)}"
            )
        return t

    def matrix(self, role: str, i: int | None = None, required: bool = True) -> Weight | None:
        """A 2-D weight ``[n_rows, n_cols]`` in its block format."""
        t = self._info(role, i, required)
        if t is None:
            return None
        return self._upload(t, t.rows(), t.n_elements // t.shape[-1])

    def _upload(self, t: TensorInfo, rows: Any, n_rows: int) -> Weight:
        """``n_rows`` rows of tensor t (a view of its blocks) onto the backend."""
        try:
            return self.be.upload(rows, t.qtype, (n_rows, t.shape[-1]))
        except ValueError as e:  # a type this backend has no kernel for (the GPU's list is shorter)
            raise UnsupportedModelError(f"{self.g.path}: tensor {t.name!r}: {e}") from None

    def has(self, role: str, i: int | None = None) -> bool:
        return TENSOR_NAMES[role].format(i=i) in self.g.tensors

    def matrix_rows(self, role: str, i: int | None, sizes: tuple[int, ...]) -> list[Weight]:
        """A fused 2-D weight (Phi-3's ``attn_qkv``, its gate-and-up ``ffn_up``) cut into consecutive
        row ranges of ``sizes`` rows, each a Weight of its own (views of the file's rows on the CPU)."""
        t = self._info(role, i, True)
        if t.n_elements // t.shape[-1] != sum(sizes):
            raise GGUFError(f"{self.g.path}: tensor {t.name!r} has shape {t.shape}, expected {sum(sizes)} rows; the file is not a supported model")
        rows, out, r0 = t.rows(), [], 0
        for n in sizes:
            out.append(self._upload(t, rows[r0 : r0 + n], n))
            r0 += n
        return out

    def qkv(self, i: int, sizes: tuple[int, int, int]) -> tuple[Weight, Weight, Weight, Any, Any, Any]:
        """Layer i's Q, K and V projections (``sizes`` rows each) and their biases (None where the file has
        none), as llama.cpp's ``create_tensor_qkv``: one fused ``attn_qkv`` (and ``attn_qkv.bias``) cut
        into row ranges where the file has it, else ``attn_q``/``attn_k``/``attn_v``."""
        if self.has("wqkv", i):
            wq, wk, wv = self.matrix_rows("wqkv", i, sizes)
            b = self.host_vector("bqkv", i, required=False)
            if b is None:
                return wq, wk, wv, None, None, None
            if b.shape[0] != sum(sizes):
                raise GGUFError(f"{self.g.path}: blk.{i}.attn_qkv.bias has {b.shape[0]} values, expected {sum(sizes)}; "
                                "the file is not a supported model")  # fmt: skip
            bq, bk, bv = np.split(b, np.cumsum(sizes)[:2])
            return wq, wk, wv, self.be.vector(bq), self.be.vector(bk), self.be.vector(bv)
        ws = [self.matrix(r, i) for r in ("wq", "wk", "wv")]
        bs = [self.vector(r, i, required=False) for r in ("bq", "bk", "bv")]
        return (*ws, *bs)

    def experts(self, role: str, i: int, n_expert: int, n_rows: int, n_cols: int) -> Weight:
        """A 3-D expert tensor ``[n_expert, n_rows, n_cols]`` as one stacked Weight ``[n_expert * n_rows, n_cols]``."""
        t = self._info(role, i, True)
        if tuple(t.shape) != (n_expert, n_rows, n_cols):
            raise GGUFError(f"{self.g.path}: tensor {t.name!r} has shape {t.shape}, expected {(n_expert, n_rows, n_cols)}; "
                            "the file is not a supported model")  # fmt: skip
        return self.matrix_rows(role, i, (n_expert * n_rows,))[0]

    def vector(self, role: str, i: int | None = None, required: bool = True) -> Any:
        """A 1-D float32 tensor (norm weights, biases), dequantized (it is tiny), on the backend."""
        v = self.host_vector(role, i, required)
        return None if v is None else self.be.vector(v)

    def host_vector(self, role: str, i: int | None = None, required: bool = True) -> np.ndarray | None:
        """A 1-D float32 tensor as a numpy array (for tables built on the host, as rope's)."""
        from ..loaders.quants import dequantize

        t = self._info(role, i, required)
        if t is None:
            return None
        return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)


@dataclass
class Buffers:
    """Activations for up to ``n_batch`` tokens, allocated once per model with ``zeros``.

    ``zeros`` is the backend's: on the GPU the activations live on the device, so
    a forward pass moves no activation between host and device (a host buffer
    there would cost an upload and a synchronising copy down per kernel).
    """

    n_batch: int
    zeros: Callable[..., Any] = np.zeros
    arrays: dict[tuple[str, tuple[int, ...], Any], Any] = field(default_factory=dict)

    def get(self, name: str, T: int, *dims: int, dtype: Any = np.float32) -> Any:
        """A ``[T, *dims]`` view of a buffer shaped ``[n_batch, *dims]`` (float32 unless ``dtype`` says otherwise), one
        a name, shape and type, kept for the model's life: layers of two shapes asking one name (a dense layer's
        one-expert router and the experts', two kinds of latent attention) each keep theirs, so no step after the
        first allocates, and a captured CUDA graph never points at a buffer another shape's call dropped."""
        key = (name, dims, np.dtype(dtype))
        a = self.arrays.get(key)
        if a is None:
            a = self.arrays[key] = self.zeros((self.n_batch, *dims), dtype)
        return a[:T]


def make_rope(cfg: ModelConfig, n_ctx: int, theta: float, freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables for positions ``[0, n_ctx)`` with the model's scaling (and the per-frequency
    factors of a ``rope_freqs`` tensor, where the file has one)."""
    from ..ops.cpu.nn import rope_tables  # (here, not at the top: `kvrun info` asks a class its hooks without the kernels)

    return rope_tables(
        n_ctx,
        cfg.rope_dim,
        theta,
        scaling=cfg.rope_scaling_type,
        factor=cfg.rope_scaling_factor,
        orig_ctx=cfg.rope_orig_ctx or cfg.n_ctx_train,
        beta_fast=cfg.yarn_beta_fast,
        beta_slow=cfg.yarn_beta_slow,
        attn_factor=cfg.yarn_attn_factor,
        freq_factors=freq_factors,
    )


class Model:
    """Base of the architecture classes: holds config, backend, buffers and hooks.

    Subclasses implement ``layer_specs()`` and ``forward(tokens, pos, cache, out_rows)``.
    """

    archs: tuple[str, ...] = ()
    #: an encoder (BERT) makes embeddings, not text: ``encode(tokens)`` instead of ``forward``
    encoder: bool = False
    #: an encoder-decoder (T5) writes text: Engine.eval hands a prompt fed on an empty cache to
    #: ``encode_prompt(cache, tokens)``, which returns the one token the decoder is fed in its place (models/t5.py)
    encoder_decoder: bool = False
    #: True while Engine.embed runs: output_head writes the final-normed hidden states ``[n, n_embd]``
    #: into its ``logits`` argument instead of the logits
    embedding: bool = False
    #: set while Engine.eval_embd runs: rows [T, n_embd] the forward takes in place of the token embeddings (an
    #: image's, models/siglip.py), unscaled, attending to one another both ways (cache/bidirectional.py)
    input_embd: Any = None
    #: what carries position where the attention rotates nothing, as `kvrun info` says it ("ALiBi"); None: rope, on
    #: every attention layer or on some (Llama 4's, SmolLM3's NoPE layers), or no attention to say it of (Mamba, RWKV)
    ROPE_ABSENCE: str | None = None
    #: called by :meth:`output_head` with the rows it final-normed, ``(rows, out_rows, pos, cache)``: ``rows``
    #: ``[len(out_rows), n_embd]`` (a backend array, valid during the call only: copy what you keep), ``out_rows`` the
    #: batch indices they are, ``pos`` and ``cache`` the forward's (a batch's ``BatchedKVCache``: cache/batch.py's
    #: ``caches``/``bounds`` say whose each row is), None where the model's forward does not hand them on (Gemma 4's
    #: does); a reader of the target's hidden state sets it (Gemma 4's MTP draft head, models/gemma4_assistant.py)
    hidden_sink: Callable[[Any, np.ndarray, np.ndarray | None, KVCache | None], None] | None = None
    #: a reader of some layers' outputs (EAGLE-3's draft, models/eagle3.py's ``Eagle3Draft``), with ``layers``, the
    #: indices it reads: a forward that hands them on (Llama's and its kin's) calls ``begin(pos, cache)`` first, the
    #: forward's positions and cache (a batch's ``BatchedKVCache``), then :meth:`trace` hands it ``take(il, x)``, the
    #: residual stream ``x`` [T, n_embd] after each layer ``il`` of ``layers`` (``l_out``) for every token of the forward
    #: (a backend array, valid during the call only)
    layer_tap: Any = None

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        """:attr:`ROPE_ABSENCE`, or what the file says (its config ``cfg``, the open file ``g``) where it decides."""
        return cls.ROPE_ABSENCE

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """K+V values one token stores in each layer's cache (0: a layer that keeps none) at ``bits`` (16: the plain
        cache; fewer: the compressed one), told before the model loads (its config ``cfg``, the open file ``g``: `kvrun
        info`'s KV cost) as :meth:`layer_specs` will lay the cache out: the file's geometry
        (``ModelConfig.kv_values_by_layer``); a class whose cache holds another form says its own (MLA's latent,
        models/mla.py's ``LatentCache``)."""
        return cfg.kv_values_by_layer()

    @classmethod
    def layer_passes(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        """`kvrun info`'s layers line where a token runs the file's blocks more than once (Nanbeige's loops, HRM-Text's
        cycles); None: the file's ``block_count`` says it."""
        return None

    @classmethod
    def rope_window(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        """`kvrun info`'s words for how the window layers rotate where the class sets them apart from the file's
        ``rope.freq_base_swa`` (Mellum's: the global base, unscaled); None: as the file says."""
        return None

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.cfg = cfg
        self.be = backend
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.buf = Buffers(n_batch, backend.zeros)
        self.debug_hook: Callable[[str, np.ndarray], None] | None = None

    def trace(self, name: str, il: int, x: np.ndarray) -> None:
        """Debug hook: names intermediates like llama.cpp (``attn_norm-12``)."""
        if self.debug_hook is not None:
            self.debug_hook(f"{name}-{il}" if il >= 0 else name, self.be.to_host(x))
        if self.layer_tap is not None and name == "l_out" and il in self.layer_tap.layers:
            self.layer_tap.take(il, x)

    def layer_specs(self) -> list[LayerSpec]:
        raise NotImplementedError

    def step_buffers(self, T: int) -> tuple[Any, ...]:
        """A forward step's activations for ``T`` tokens (views of the buffers): ``x`` (the residual
        stream) and ``xn`` [T, n_embd], ``q`` [T, n_head*head_dim], ``k`` [T, n_head_kv*head_dim],
        ``v`` [T, n_head_kv*head_dim_v], ``att`` [T, n_head*head_dim_v], ``gate``/``up`` [T, n_ff], then
        ``q3``, ``k3``, ``v3``, ``att3``: q, k, v, att by head."""
        c, buf = self.cfg, self.buf
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        q, k = buf.get("q", T, c.n_head * c.head_dim), buf.get("k", T, c.n_head_kv * c.head_dim)
        v, att = buf.get("v", T, c.n_head_kv * c.head_dim_v), buf.get("att", T, c.n_head * c.head_dim_v)
        gate, up = buf.get("gate", T, c.n_ff), buf.get("up", T, c.n_ff)
        heads = (q.reshape(T, c.n_head, c.head_dim), k.reshape(T, c.n_head_kv, c.head_dim),
                 v.reshape(T, c.n_head_kv, c.head_dim_v), att.reshape(T, c.n_head, c.head_dim_v))  # fmt: skip
        return (x, xn, q, k, v, att, gate, up, *heads)

    def forward(self, tokens: np.ndarray, pos: np.ndarray, cache: KVCache, out_rows: np.ndarray, logits: np.ndarray) -> None:
        """Run ``tokens`` [T] at positions ``pos`` [T] through the model.

        Writes the logits of the rows ``out_rows`` (increasing indices into
        the batch) to ``logits`` ``[len(out_rows), n_vocab]``.
        """
        raise NotImplementedError

    def final_norm(self, x: Any, out: Any) -> None:
        """The output norm of the rows ``x`` into ``out``: RMSNorm (Phi-2 and StableLM: LayerNorm)."""
        self.be.rms_norm(x, self.output_norm, self.cfg.norm_eps, out)

    def logit_multiplier(self) -> float:
        """What the logits are multiplied by: Granite divides them by the file's ``logit_scale`` (Cohere multiplies)."""
        return 1.0 / self.cfg.logit_scale

    def output_head(self, x: Any, out_rows: np.ndarray, logits: np.ndarray, pos: np.ndarray | None = None,
                    cache: KVCache | None = None) -> None:  # fmt: skip
        """Final norm, output projection (and soft-cap) of the rows ``out_rows`` of the residual stream ``x``; the
        normed rows go to :attr:`hidden_sink` where one is set, with the forward's ``pos`` and ``cache`` where given.

        Consecutive rows (one sequence's) are taken as a slice, which every array type (device ones too) takes
        without an index upload; others (a batch of sequences, each wanting its last row) are gathered first.
        """
        n = len(out_rows)
        if n == 0:
            return
        lo = int(out_rows[0])
        if np.all(np.asarray(out_rows) == np.arange(lo, lo + n)):
            rows = x[lo : lo + n]
        else:
            rows = self.buf.get("xg", n, self.cfg.n_embd)
            rows[...] = x[np.asarray(out_rows)]
        c, be = self.cfg, self.be
        # (Engine.embed: the final-normed hidden states themselves, no projection)
        xo = logits if self.embedding else self.buf.get("xo", n, c.n_embd)
        self.final_norm(rows, xo)
        if self.hidden_sink is not None:
            self.hidden_sink(xo, out_rows, pos, cache)
        if self.embedding:
            return
        be.linear(self.output, xo, logits)
        if self.logit_multiplier() != 1.0:
            be.scale(logits, self.logit_multiplier())
        if c.final_logit_softcap > 0:
            be.softcap(logits, c.final_logit_softcap)
