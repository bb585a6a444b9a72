"""HRM-Text (``HrmTextForCausalLM``: the Danish Foundation Models' DFM-Mimir), as llama.cpp's ``hrm_text`` graph.

A hierarchical recurrent model over the token stream: two stacks of ``hrm.layers_per_stack`` decoder layers, a low one
(blocks ``[0, lps)``) and a high one (blocks ``[lps, 2 lps)``), run in cycles::

    zH = embeddings * embedding_scale;  zL = hrm.z_l_init (one learned row, every token's)
    for each of hrm.h_cycles:
        for each of hrm.l_cycles:  zL = low(zH + zL)
        zH = high(zH + zL)
    logits = output . zH

Each stack is ``lps`` pre-norm layers and then an RMSNorm; every norm is weightless (RMS-normalised, times nothing).  A
layer: sigmoid-gated attention, ``sigmoid(attn_gate x)`` (as wide as the heads, of the normed input) times the
attention's output element by element before ``attn_output`` (Qwen3.5's gate, ``afmoe.py``), neox rope on every layer,
then a SwiGLU FFN.  No output norm but the last stack's own; a tied or separate output head.

Every pass of a stack attends over K/V of its own: ``block_count`` is the expanded count of cache slots, ``lps * h_cycles
* (l_cycles + 1)``, each slot's layer one of the ``2 lps`` the file holds (llama.cpp aliases them), so kvrun keeps a
cache layer per slot.  ``hrm.prefix_lm`` is not read: llama.cpp's graph attends causally whatever it says.  The CPU and
the GPU (the gate a kernel, ``sigmoid_mul``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .afmoe import _sigmoid  # (the exp form, as AFMoE)
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope

TENSOR_NAMES.update({"hrm_z_l_init": "hrm.z_l_init"})  # (llama.cpp's LLM_TENSOR_HRM_Z_L_INIT)

#: llama.cpp's get_key without a default for hrm_text (each > 0)
REQUIRED_KEYS = ("hrm.layers_per_stack", "hrm.h_cycles", "hrm.l_cycles")


@dataclass
class HrmLayer:
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim_v, n_embd]
    bq: Any  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any
    bv: Any
    attn_gate: Weight  # [n_head*head_dim_v, n_embd]: sigmoid(attn_gate x) times the attention's output
    wo: Weight  # [n_embd, n_head*head_dim_v]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]


class HrmTextModel(Model):
    archs = ("hrm_text",)

    @classmethod
    def layer_passes(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        """`kvrun info`'s layers line: the file's ``block_count`` counts cache slots (a layer pass each), not blocks, so
        the blocks, the stacks they make and the cycles that run them (None where the file lacks a cycle key: it will
        not load)."""
        lps, h, lc = (int(g.arch_get(key, 0) or 0) for key in REQUIRED_KEYS)
        if min(lps, h, lc) <= 0:
            return None
        return (f"{2 * lps}: a low and a high stack of {lps}, in {h} cycle{'s' if h > 1 else ''} of {lc} low "
                f"pass{'es' if lc > 1 else ''} then a high one ({lps * h * (lc + 1)} layer passes)")  # fmt: skip

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        for key in REQUIRED_KEYS:
            if int(g.arch_get(key, 0) or 0) <= 0:
                raise GGUFError(f"{g.path}: metadata hrm_text.{key} is missing or 0; the file is not a complete model")
        self.lps, self.h_cycles, self.l_cycles = (int(g.arch_get(key)) for key in REQUIRED_KEYS)
        n_slot = self.lps * self.h_cycles * (self.l_cycles + 1)
        if cfg.n_layer != n_slot:
            raise GGUFError(f"{g.path}: hrm_text.block_count is {cfg.n_layer}, expected {n_slot} cache slots (layers_per_stack "
                            f"{self.lps} x h_cycles {self.h_cycles} x (l_cycles {self.l_cycles} + 1))")  # fmt: skip
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output = w.matrix("output", required=False) or self.tok_embd  # tied when absent
        self.z_l_init = w.vector("hrm_z_l_init")  # [n_embd]
        if self.z_l_init.shape != (cfg.n_embd,):
            raise GGUFError(f"{g.path}: hrm.z_l_init has shape {tuple(self.z_l_init.shape)}, expected ({cfg.n_embd},)")
        # (every norm weightless: times ones, exact; the last high pass's closing norm is output_head's final_norm)
        self.output_norm = backend.vector(np.ones(cfg.n_embd, np.float32))
        blocks = [self.load_block(w, b) for b in range(2 * self.lps)]  # (the low stack's, then the high one's)
        self.layers = [blocks[self.block_of(s)] for s in range(n_slot)]  # (one a cache slot; the passes share them)
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)  # (no rope_freqs in llama.cpp's graph)

    def block_of(self, slot: int) -> int:
        """The file's block a cache slot runs: pass ``slot // lps`` is a high one where it is the last of its cycle."""
        high = (slot // self.lps) % (self.l_cycles + 1) == self.l_cycles
        return slot % self.lps + (self.lps if high else 0)

    def load_block(self, w: WeightLoader, b: int) -> HrmLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(b, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        L = HrmLayer(wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, attn_gate=w.matrix("attn_gate", b), wo=w.matrix("wo", b),
                     w_gate=w.matrix("w_gate", b), w_up=w.matrix("w_up", b), w_down=w.matrix("w_down", b))  # fmt: skip
        want = {"attn_q": (L.wq, c.n_head * c.head_dim, c.n_embd), "attn_k": (L.wk, c.n_head_kv * c.head_dim, c.n_embd),
                "attn_v": (L.wv, c.n_head_kv * c.head_dim_v, c.n_embd), "attn_gate": (L.attn_gate, c.n_head * c.head_dim_v, c.n_embd),
                "attn_output": (L.wo, c.n_embd, c.n_head * c.head_dim_v), "ffn_gate": (L.w_gate, c.n_ff, c.n_embd),
                "ffn_up": (L.w_up, c.n_ff, c.n_embd), "ffn_down": (L.w_down, c.n_embd, c.n_ff)}  # fmt: skip
        for role, (m, *shape) in want.items():
            if tuple(m.shape) != tuple(shape):
                raise GGUFError(f"{w.g.path}: blk.{b}.{role}.weight has shape {tuple(m.shape)}, expected {tuple(shape)}; "
                                "the file is not a supported model")  # fmt: skip
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim))] * c.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        zH, zL = buf.get("x", T, c.n_embd), buf.get("zL", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, zH)
        if c.embedding_scale != 1.0:
            be.scale(zH, c.embedding_scale)
        be.copy(zH, zL)  # (the first low pass's input, zH + z_l_init)
        be.add_bias(zL, self.z_l_init)
        for h in range(self.h_cycles):
            for lc in range(self.l_cycles):
                if h or lc:
                    be.add(zL, zH)
                self.stack(zL, (h * (self.l_cycles + 1) + lc) * self.lps, pos, cache)
            be.add(zH, zL)
            self.stack(zH, (h * (self.l_cycles + 1) + self.l_cycles) * self.lps, pos, cache, norm=h < self.h_cycles - 1)
        self.output_head(zH, out_rows, logits)

    def stack(self, z: Any, slot0: int, pos: Any, cache: KVCache, norm: bool = True) -> None:
        """One pass of a stack over ``z`` in place, its layers those of the cache slots ``slot0`` on: ``lps`` pre-norm
        layers, then the closing RMSNorm (``norm`` False: left to output_head, the last high pass's)."""
        c, be, buf = self.cfg, self.be, self.buf
        T = z.shape[0]
        _, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)  # (its x is zH's buffer: left alone)
        ag = buf.get("attn_gate", T, c.n_head * c.head_dim_v)
        ones = self.output_norm
        for s in range(slot0, slot0 + self.lps):
            L = self.layers[s]
            be.norm_linear_many(z, ones, c.norm_eps, xn, (L.wq, L.wk, L.wv, L.attn_gate), (q, k, v, ag))
            self.trace("attn_norm", s, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[s].update_and_attend(q3, k3, v3, pos, att3)
            if be.name == "cpu":
                att *= _sigmoid(ag)
            else:  # (a kernel: a captured decode step brings nothing to the host)
                be.sigmoid_mul(att, ag)
            self.trace("attn_gated", s, att)
            be.linear_add(L.wo, att, z)
            be.norm_linear_many(z, ones, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, z, "silu", accumulate=True)
            self.trace("l_out", s, z)
        if norm:
            be.rms_norm(z, ones, c.norm_eps, z)
