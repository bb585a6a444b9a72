"""Multi-head latent attention in its absorbed form, llama.cpp's (``build_deepseek2``'s ``is_mla`` path): the cache holds
per token only the normed latent and the rope key every head shares, not every head's decompressed K and V.

A head's score against a key is ``q_nope . k_nope + q_rope . k_rope`` with ``k_nope = Wk_h c`` (``c`` the token's normed
latent, ``kv_lora_rank`` wide; ``Wk_h`` ``[qk_nope, kv_lora_rank]``), which is ``(Wk_h^T q_nope) . c + q_rope . k_rope``:
the query absorbs the key's expansion.  Its output is ``sum_s p_s Wv_h c_s = Wv_h (sum_s p_s c_s)``: the expansion of V
moves past the attention.  So every head attends over the same keys ``[k_rope, c]`` (``n_rot + kv_lora_rank`` wide) and
values ``c`` (``kv_lora_rank``): one KV head, an MQA cache (``LayerSpec(n_head, 1, n_rot + rank, rank, v_in_k=True)``:
:func:`latent_layer_spec`), and any cache kind (the fp16 one, the compressed ``--kv-bits``, eviction) holds it as any MQA
model's.  V is K's last ``kv_lora_rank`` channels, so the plain caches (fp16, CPU and GPU) store K alone and read V
through K's rows (``LayerSpec.v_in_k``), as llama.cpp's ``is_mla`` cache makes V a view of K: DeepSeek-V2-Lite 576 values
a token a layer against the expanded form's 16 * (192 + 128) = 5120, 8.9x fewer bytes; V3 (128 heads): 576 against
40960.  (The compressed cache keeps V apart, 576 + 512: it quantizes K per channel and V per token, so a value's codes
are not its key's.)  The scale stays the original head's, ``mscale^2 / sqrt(qk_nope + n_rot)``.

Layouts, as the expanded form's: the rope parts lead the heads (the rope kernels turn a head's leading dimensions; the
scores are the same as llama.cpp's ``[latent, rope]``), so a key is ``[k_rope, c]`` and a query ``[q_rope, Wk_h^T q_nope]``.
The two per-head products run in float32 on weights held float32 (``Backend.mla_absorb_q`` / ``mla_heads_out``, kernels
of ``ops/gpu/mla_latent.cu`` on the GPU, so a decode step is still one captured graph): ``n_head * kv_lora_rank *
(qk_nope + v_head_dim)`` values a layer (V2-Lite: 4 MiB a layer each).  Files with the newer converters' split
``attn_k_b`` / ``attn_v_b`` give them directly; files with only ``attn_kv_b`` are split once at load, as llama.cpp's
converter does.

``KVRUN_MLA=expanded`` keeps the decompressed form (models/deepseek2.py's ``mla_project``), where every head's K and V
are cached: the GPU's compressed cache decodes heads up to 256 wide, so DeepSeek's latent keys (576) take it there.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader


def latent_enabled(model_cls: type, base_forward: Any) -> bool:
    """Whether a deepseek2-family model caches the latent: unless ``KVRUN_MLA=expanded`` says otherwise, and only where
    its forward is deepseek2's (Kimi Linear's own forward reads the expanded weights)."""
    return os.environ.get("KVRUN_MLA", "latent") != "expanded" and model_cls.forward is base_forward


class LatentCache:
    """The cache's widths of a deepseek2-family class (models/common.py's ``Model.cache_widths``, `kvrun info`'s KV cost),
    mixed into deepseek2's class: where :func:`latent_enabled` says the forward caches the latent, a token keeps per layer
    K ``[k_rope, c]`` and V ``c`` read through K's rows (``v_in_k``), ``n_rot + kv_lora_rank`` values, as the default fp16
    cache holds them (the compressed ``--kv-bits`` cache keeps V apart, ``n_rot + 2 * kv_lora_rank`` values at its
    bits); else every head's K and V, the file's geometry."""

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        base = next(k for k in cls.__mro__ if LatentCache in k.__bases__)  # (deepseek2's class: its forward caches the latent)
        rank = int(g.arch_get("attention.kv_lora_rank", 0) or 0)
        if rank > 0 and latent_enabled(cls, base.forward):
            return (cfg.rope_dim + (rank if bits >= 16 else 2 * rank),) * cfg.n_layer  # (compressed: V apart)
        return super().cache_widths(cfg, g, bits)  # type: ignore[misc]


def latent_layer_spec(n_head: int, n_rot: int, rank: int, scale: float) -> LayerSpec:
    """A layer's cache in the absorbed form: one KV head, keys ``[k_rope, c]`` (``n_rot + rank``), values ``c`` (``rank``)
    read from the keys' last ``rank`` channels (``v_in_k``: the plain caches store 576 values a token, not 1088), the
    original heads' ``scale``."""
    return LayerSpec(n_head, 1, n_rot + rank, rank, 0, scale, v_in_k=True)


def load_latent_weights(w: WeightLoader, be: Backend, i: int, H: int, nope: int, dv: int, rank: int) -> tuple[Any, Any]:
    """Layer i's per-head products of the absorbed form, float32 on the backend: ``wk`` ``[H, nope, rank]`` (the query's
    absorption, ``q_lat = wk[h].T @ q_nope``) and ``wv`` ``[H, rank, dv]`` (a head's output, ``wv[h].T @ att_lat``); from
    ``attn_kv_b`` (per head ``nope`` K rows then ``dv`` V rows, split here), else the split ``attn_k_b`` ``[H, rank,
    nope]`` and ``attn_v_b`` ``[H, dv, rank]``."""
    if w.has("wkv_b", i):
        t = w._info("wkv_b", i, True)
        if tuple(t.shape) != (H * (nope + dv), rank):
            raise GGUFError(f"{w.g.path}: {t.name} has shape {t.shape}, expected {(H * (nope + dv), rank)}; the file is not a supported model")
        rows = dequantize(t.data, t.qtype, t.shape).reshape(H, nope + dv, rank).astype(np.float32)
        wk, wv = rows[:, :nope], rows[:, nope:].transpose(0, 2, 1)
    else:
        tk, tv = w._info("wk_b", i, True), w._info("wv_b", i, True)
        if tuple(tk.shape) != (H, rank, nope) or tuple(tv.shape) != (H, dv, rank):
            raise GGUFError(f"{w.g.path}: {tk.name}/{tv.name} have shapes {tk.shape}/{tv.shape}, expected "
                            f"{(H, rank, nope)}/{(H, dv, rank)}; the file is not a supported model")  # fmt: skip
        wk = dequantize(tk.data, tk.qtype, tk.shape).reshape(H, rank, nope).astype(np.float32).transpose(0, 2, 1)
        wv = dequantize(tv.data, tv.qtype, tv.shape).reshape(H, dv, rank).astype(np.float32).transpose(0, 2, 1)
    return be.vector(np.ascontiguousarray(wk)), be.vector(np.ascontiguousarray(wv))


def latent_attend(model: Any, L: Any, q_raw: Any, kva: Any, pos: Any, layer_cache: Any, att: Any,
                  rank: int = 0, rope: tuple[Any, Any] | None = None) -> None:  # fmt: skip
    """One layer's attention in the absorbed form: from the heads' queries ``q_raw`` ``[T, H, nope + n_rot]`` and
    ``attn_kv_a_mqa``'s output ``kva`` ``[T, rank + n_rot]`` to the heads' outputs ``att`` ``[T, H, dv]`` (``wo``'s
    input), the latent and its rope key stored in ``layer_cache``.  ``rank``, ``rope``: this layer's latent width and
    (cos, sin) tables where they are not the model's (dots.note's window layers, models/dots3note.py)."""
    be, buf, c = model.be, model.buf, model.cfg
    T, H = q_raw.shape[0], q_raw.shape[1]
    R, sfx = model.n_rot, str(rank or "")  # (a buffer a latent width: layers of two widths reuse theirs)
    rank = rank or model.kv_rank
    k, v = buf.get("lat_k" + sfx, T, 1, R + rank), buf.get("lat_v" + sfx, T, 1, rank)
    q, att_lat = buf.get("lat_q" + sfx, T, H, R + rank), buf.get("lat_att" + sfx, T, H, rank)
    be.mla_latent_kv(kva, L.kv_a_norm, c.norm_eps, k, v)  # the cache's rows: [k_rope, c] and c
    be.mla_absorb_q(q_raw, L.wk_lat, q)  # [q_rope, Wk_h^T q_nope]
    be.rope_qk(q, k, pos, *(rope or (model.rope_cos, model.rope_sin)), c.rope_neox)
    layer_cache.update_and_attend(q, k, v, pos, att_lat)
    be.mla_heads_out(att_lat, L.wv_lat, att)


def mla_query(be: Backend, L: Any, xn: Any, buf: Any, eps: float, q_raw: Any) -> None:
    """The heads' queries ``q_raw`` ``[T, n_head * (qk_nope + n_rot)]`` of ``xn``: whole (``attn_q``), or through the
    normed low-rank ``attn_q_a`` -> ``attn_q_a_norm`` -> ``attn_q_b``."""
    if L.wq is not None:
        be.linear(L.wq, xn, q_raw)
    else:
        qa = buf.get("q_a", xn.shape[0], L.wq_a.shape[0])
        be.linear(L.wq_a, xn, qa)
        be.rms_norm(qa, L.q_a_norm, eps, qa)
        be.linear(L.wq_b, qa, q_raw)
