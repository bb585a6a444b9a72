"""rednote's dots.note text model as llama.cpp 0.3.36's ``dots3note`` graph (src/models/dots3note.cpp: "adapted from
deepseek32.cpp (DSA indexer + absorbed MLA) and step35.cpp (head-wise output gate)"), its dense path.

GLM-5's trunk (``glm_dsa.py``, itself DeepSeek-V3's, ``deepseek2.py``): latent attention (MLA) on every layer in the
absorbed form (``mla.py``: the cache holds the normed latent and the shared rope key), a query LoRA, rope over
consecutive pairs of the heads' rope parts; a leading dense layer, then a mixture of experts routed by
``expert_gating_func`` (sigmoid) with ``exp_probs_b``, renormalised where ``expert_weights_norm`` says, times
``expert_weights_scale``, beside the shared experts; the MTP layer past the trunk loaded by llama.cpp and never run (kvrun
reads none of it).  What dots.note adds, all of it per layer:

* sliding-window layers (``attention.sliding_window_pattern``, a bool a layer; the window ``attention.sliding_window``,
  llama.cpp's standard kind: a query sees the keys less than the window behind it) with a geometry of their own: their
  head count (``head_count`` a per-layer array), latent (``attention.kv_lora_rank_swa``), head widths
  (``attention.key_length_mla_swa``, ``value_length_mla_swa``) and rope base (``rope.freq_base_swa``); so each layer's
  cache holds ``n_rot + its latent`` values a token, the window layers' in a ring (cache/plain.py);
* an RMSNorm of the shared rope key before its rope (``attn_k_norm``, ``n_rot`` weights);
* a head-wise output gate (step35's): ``sigmoid(attn_gate x)`` (``[n_head, n_embd]``, ``x`` the attention's normed
  input) times each head's output before ``attn_output``;
* the scores scaled by ``1/sqrt(key_length_mla)`` of the layer's kind (no DeepSeek YaRN magnitude: llama.cpp's graph
  takes the plain scale).

The DSA lightning indexer (``indexer.*``) sits on the full layers (``attention.indexer.types``); as glm-dsa, llama.cpp
takes ``min(top_k, n_kv)`` keys, so up to ``top_k`` cached cells every key is chosen whatever the indexer scores, and
kvrun runs that dense path only: a context past ``attention.indexer.top_k`` is refused in one line (``glm_dsa.py``), and
the indexer's weights are never read.  The window layers have no indexer in either.

On ``--device gpu`` the trunk runs on glm-dsa's kernels (the absorbed latent attention at each kind's sizes and rope
tables, the experts), the head gate is the backend's ``sigmoid_mul`` on both devices (one value a head), and the rope
key's norm, numpy slices of ``attn_kv_a_mqa``'s rows on the CPU, is one kernel normalising it where it lies
(``ops/gpu/mla.py``'s ``rope_key_norm``); a picture's or a clip's rows go in through the backend's ``copy``.  So a decode
step launches only kernels and is captured as a CUDA graph.  ``KVRUN_MLA=expanded`` is not honoured: the latent form
only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader, make_rope
from .deepseek2 import Deepseek2Layer
from .glm_dsa import GlmDsaModel
from .mimo2 import per_layer
from .mla import latent_attend, latent_layer_spec, mla_query


@dataclass
class LayerGeometry:
    """A layer's attention sizes, of its kind (full or sliding-window), and what dots.note adds to deepseek2's layer."""

    swa: bool
    n_head: int
    qk_nope: int
    head_dim_v: int
    kv_rank: int
    k_norm: Any = None  # [n_rot]: the shared rope key's RMSNorm
    attn_gate: Weight | None = None  # [n_head, n_embd]: one gate a head


def _geometry(g: GGUFFile, cfg: ModelConfig) -> list[LayerGeometry]:
    """Each trunk layer's geometry from the file's metadata, the keys llama.cpp requires (one-line errors)."""

    def req(key: str) -> int:
        v = g.arch_get(key)
        if v is None:
            raise GGUFError(f"{g.path}: metadata dots3note.{key} is missing; the file is not a complete model")
        return int(v)

    if not cfg.swa_layers or g.arch_get("rope.freq_base_swa") is None:
        raise GGUFError(f"{g.path}: metadata dots3note.attention.sliding_window, .sliding_window_pattern (an array) or "
                        "rope.freq_base_swa is missing; the file is not a complete model")  # fmt: skip
    for key in ("expert_gating_func", "expert_feed_forward_length", "expert_shared_count", "leading_dense_block_count", "attention.q_lora_rank"):
        req(key)
    full = (req("attention.key_length_mla"), req("attention.value_length_mla"), req("attention.kv_lora_rank"))
    swa = (req("attention.key_length_mla_swa"), req("attention.value_length_mla_swa"), req("attention.kv_lora_rank_swa"))
    heads = per_layer(g, "attention.head_count", cfg.n_layer, cfg.n_head)
    out = []
    for il in range(cfg.n_layer):
        k_mla, dv, rank = swa if cfg.is_swa(il) else full
        if k_mla <= cfg.rope_dim:
            raise GGUFError(f"{g.path}: dots3note heads of {k_mla} with rope.dimension_count {cfg.rope_dim}: no room for the non-rope part")
        out.append(LayerGeometry(cfg.is_swa(il), heads[il], k_mla - cfg.rope_dim, dv, rank))
    return out


class Dots3NoteModel(GlmDsaModel):
    archs = ("dots3note",)
    takes_images = True  # (the forward reads Model.input_embd: dots.note's audio rows, models/dots3note_audio.py, and its
    # pictures' rows, models/dots3note_image.py, as libmtmd feeds them: one position a row, causally)

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """A token's values a layer: the rope key and the latent of the layer's kind (the compressed cache: V apart)."""
        ranks = [int(g.arch_get("attention.kv_lora_rank_swa" if cfg.is_swa(il) else "attention.kv_lora_rank", 0) or 0) for il in range(cfg.n_layer)]
        return tuple(cfg.rope_dim + (r if bits >= 16 else 2 * r) for r in ranks)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.geom = _geometry(g, cfg)
        self.mla_dev = None  # the device's norm of the rope key in place (ops/gpu/mla.py); the CPU's: numpy slices
        if backend.name != "cpu":
            from ..ops.gpu import mla as gpu_mla  # (only here: the CPU's runs never load the GPU's modules)

            self.mla_dev = gpu_mla
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        c = cfg
        # llama.cpp's generic rope (no DeepSeek YaRN magnitude), each kind at its base
        self.rope_cos, self.rope_sin = make_rope(c, n_ctx, c.rope_theta)
        self.rope_swa = make_rope(c, n_ctx, c.rope_theta_swa)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        """deepseek2's layer (and glm-dsa's router) at layer i's own geometry, then the rope key's norm and the gate."""
        G, c, rank, nope = self.geom[i], self.cfg, self.kv_rank, self.qk_nope
        self.latent = True  # (Deepseek2Model's __init__ decided by the forward, which is this class's own)
        self.cfg = dataclasses.replace(c, n_head=G.n_head, head_dim=G.qk_nope + c.rope_dim, head_dim_v=G.head_dim_v)
        self.kv_rank, self.qk_nope = G.kv_rank, G.qk_nope
        try:
            L = super().load_layer(w, i)
        finally:
            self.cfg, self.kv_rank, self.qk_nope = c, rank, nope
        G.k_norm = w.vector("k_norm", i)
        G.attn_gate = self._shape(w, "attn_gate", i, w.matrix("attn_gate", i), (G.n_head, c.n_embd))
        if G.k_norm.shape[0] != c.rope_dim:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_k_norm.weight has {G.k_norm.shape[0]} weights, expected n_rot's ({c.rope_dim})")
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [dataclasses.replace(latent_layer_spec(G.n_head, c.rope_dim, G.kv_rank, 1.0 / math.sqrt(G.qk_nope + c.rope_dim)),
                                    window=c.sliding_window if G.swa else 0) for G in self.geom]  # fmt: skip

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, R = len(tokens), self.n_rot
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        if self.input_embd is not None:  # a clip's rows (Engine.eval_embd) in place of the tokens'
            be.copy(be.vector(self.input_embd), x)
        for il, (L, G) in enumerate(zip(self.layers, self.geom)):
            H, rank, kind = G.n_head, G.kv_rank, "swa" if G.swa else "full"  # (a buffer of each kind's sizes)
            q_raw, kva = buf.get("q_raw_" + kind, T, H * (G.qk_nope + R)), buf.get("kv_a_" + kind, T, rank + R)
            att, gate = buf.get("att_" + kind, T, H * G.head_dim_v), buf.get("attn_gate_" + kind, T, H)
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            self.trace("attn_norm", il, xn)
            mla_query(be, L, xn, buf, c.norm_eps, q_raw)
            be.linear(L.wkv_a, xn, kva)
            self.norm_rope_key(kva, G.k_norm, rank)  # the shared rope key RMS-normed before its rope (attn_k_norm)
            att3 = att.reshape(T, H, G.head_dim_v)
            latent_attend(self, L, q_raw.reshape(T, H, -1), kva, pos, cache[il], att3, rank, self.rope_swa if G.swa else None)
            be.linear(G.attn_gate, xn, gate)  # one gate a head, of the attention's input
            be.sigmoid_mul(att3, gate)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            self.add_ffn(L, x, xn, None)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

    def norm_rope_key(self, kva: Any, w: Any, rank: int) -> None:
        """``kva[:, rank:]`` (``attn_kv_a_mqa``'s rope key, past the latent) RMS-normed by ``w`` in place: numpy slices
        through a scratch row on the CPU, one kernel on a device (a host slice of a device array would not be captured)."""
        if self.mla_dev is not None:
            self.mla_dev.rope_key_norm(kva, w, self.cfg.norm_eps)
            return
        k_rope = self.buf.get("k_rope", kva.shape[0], kva.shape[1] - rank)
        k_rope[...] = kva[:, rank:]
        self.be.rms_norm(k_rope, w, self.cfg.norm_eps, k_rope)
        kva[:, rank:] = k_rope
