"""IBM Granite Switch (GraniteSwitchForCausalLM, granite-switch-4.1-3b-preview), as llama.cpp 0.3.36's ``graniteswitch``
graph: a dense, all-attention Granite (``granite.py``'s four multipliers; Q, K and V fused in ``attn_qkv``) carrying N
LoRA adapters that control tokens switch on, token by token, inside the forward:

* the router: one attention layer more, after the trunk (the KV cache's last layer: one head of ``head_dim`` channels,
  no rope, scores unscaled), whose query is 1, whose key is +``router_gain`` for a control token and -``router_gain``
  for any other, whose value is the token's slot (the i-th of ``adapters.token_ids_activate`` is slot i + 1; other
  tokens 0), channel 0 alone carrying them.  A token's attention over its sequence so far, clamped to [0, N] and
  rounded (half away from zero), is its slot: 0 before any control token, that token's slot after one (with two seen,
  the mean of their slots: the arithmetic llama.cpp and the checkpoint's own switch share, kept);
* each control token embedded as its ``adapters.token_ids_substitute`` (the logits are the model's, whatever it read);
* every projection (Q, K, V, the attention output, the FFN's gate, up and down) plus ``B[s] (A[s] x)`` for the token's
  slot s, from the stacked ``blk.N.<proj>.lora_a`` ``[N + 1, rank, in]`` and ``.lora_b`` ``[N + 1, out, rank]`` (slot
  0: the base model's, zeros as the converter writes it, applied as the file has it, as llama.cpp does);
* rope on every layer unless ``rope.scaling.finetuned`` is false (Granite's switch: then none), without ``rope_freqs``
  (llama.cpp's loader reads none for it).

Required besides Granite's: ``logit_scale``, ``adapters.count`` and ``adapters.lora_rank`` (each at most 4096), both
token id arrays ``adapters.count`` long, the substitutes in the vocabulary; ``adapters.router_gain`` is 15 unstated.

On the CPU the control tokens' lookups, the router's rounding and the LoRA products are host numpy; on ``--device gpu``
they are lora.cu's kernels (``ops/gpu/lora.py``: the router's rows and the substitutes from vocabulary tables, the
slots rounded into an int32 buffer, each token's adapter product), reading the step's token ids where they lie, so a
decode step stays on the device and is captured as a CUDA graph.  (A compressed KV cache keeps the router's layer as
it keeps the others: a policy that evicts a control token there changes the slot, as it changes every layer's
attention.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel

#: the projections an adapter changes, by their GGUF names: (input, output) widths are read off the layer's weights
LORA_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
#: llama.cpp's bound on the counts that size tensors
MAX_COUNT = 4096
#: the router's gain where the file states none (llama.cpp's, and the checkpoint's control_token_gain default)
ROUTER_GAIN = 15.0


@dataclass
class SwitchLayer(LlamaLayer):
    #: per projection of LORA_PROJECTIONS: its adapters' ``(A [n_slots, rank, in], B [n_slots, out, rank])``, float32
    #: (on the GPU's backend device arrays)
    lora: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def lora_add(lora: tuple[np.ndarray, np.ndarray], x: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
    """``out[t] += B[s] (A[s] x[t])`` for each token t of slot ``s = slots[t]`` (llama.cpp's two mul_mat_id: the
    adapter's down projection to its rank, then up), the tokens of one slot in one product."""
    a, b = lora
    for s in np.unique(slots):
        rows = np.flatnonzero(slots == s)
        out[rows] += (x[rows] @ a[s].T) @ b[s].T


def round_half_away(x: np.ndarray) -> np.ndarray:
    """ggml_round's roundf for x >= 0 (a half goes up), exact: numpy's own rounds a half to even."""
    r = np.floor(x)
    return r + (x - r >= 0.5)


class GraniteSwitchModel(LlamaModel):
    archs = ("graniteswitch",)

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        return None if g.arch_get("rope.scaling.finetuned", True) else "the file says so: rope.scaling.finetuned false"

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """The trunk's, and the router's layer after it: one head's K and V a token."""
        return (*cfg.kv_values_by_layer(), 2 * cfg.head_dim)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in ("logit_scale", "adapters.count", "adapters.lora_rank"):  # (llama.cpp's get_key without a default)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        if cfg.head_dim != cfg.head_dim_v or cfg.rope_dim != cfg.head_dim:
            raise GGUFError(f"{g.path}: graniteswitch's heads are {cfg.head_dim} wide for K, {cfg.head_dim_v} for V, rope "
                            f"over {cfg.rope_dim}; llama.cpp requires all three equal")  # fmt: skip
        self.n_adapters, self.rank = int(g.arch_get("adapters.count")), int(g.arch_get("adapters.lora_rank"))
        if self.n_adapters > MAX_COUNT or self.rank > MAX_COUNT:
            raise GGUFError(f"{g.path}: graniteswitch states {self.n_adapters} adapters of rank {self.rank}; "
                            f"at most {MAX_COUNT} each")  # fmt: skip
        self.router_gain = float(g.arch_get("adapters.router_gain", ROUTER_GAIN))
        self.slot_of, self.substitute_of = self.control_tokens(g, cfg.n_vocab)
        self.rope = bool(g.arch_get("rope.scaling.finetuned", True))
        self.switch_dev = None  # the device's lookups, rounding and products (ops/gpu/lora.py); the CPU's are host numpy
        if backend.name != "cpu":
            from ..ops.gpu.lora import TokenSwitch  # (only here: the CPU's runs never load the GPU's modules)

            self.switch_dev = TokenSwitch(self.slot_of, self.substitute_of, cfg.n_vocab, self.n_adapters, self.router_gain)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def control_tokens(self, g: GGUFFile, n_vocab: int) -> tuple[dict[int, int], dict[int, int]]:
        """Each control token's slot (the i-th adapter's: i + 1) and the token it is embedded as; a token named twice
        takes its last entry, as llama.cpp's maps fill."""
        ids = []
        for key in ("adapters.token_ids_activate", "adapters.token_ids_substitute"):
            v = g.arch_get(key)
            if v is None or not hasattr(v, "__len__"):
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing or not an array; "
                                "the file is not a complete model")  # fmt: skip
            ids.append([int(t) for t in np.asarray(v).reshape(-1)])
        act, sub = ids
        if len(act) != self.n_adapters or len(sub) != self.n_adapters:
            raise GGUFError(f"{g.path}: graniteswitch's adapter token id arrays ({len(act)} activate, {len(sub)} substitute) "
                            f"do not match adapter count {self.n_adapters}")  # fmt: skip
        bad = [t for t in sub if not 0 <= t < n_vocab]
        if bad:
            raise GGUFError(f"{g.path}: graniteswitch's substitute token id {bad[0]} is out of range [0, {n_vocab})")
        return {t: i + 1 for i, t in enumerate(act)}, dict(zip(act, sub))

    def load_layer(self, w: WeightLoader, i: int) -> SwitchLayer:  # type: ignore[override]
        c = self.cfg
        n_q, n_kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        wq, wk, wv = w.matrix_rows("wqkv", i, (n_q, n_kv, n_kv))
        L = SwitchLayer(
            attn_norm=w.vector("attn_norm", i),
            wq=wq, wk=wk, wv=wv,
            wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=None, k_norm=None,
            ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i),
            w_up=w.matrix("w_up", i),
            w_down=w.matrix("w_down", i),
            rope=self.rope,
        )  # fmt: skip
        widths = {"attn_q": (c.n_embd, n_q), "attn_k": (c.n_embd, n_kv), "attn_v": (c.n_embd, n_kv), "attn_output": (n_q, c.n_embd),
                  "ffn_gate": (c.n_embd, c.n_ff), "ffn_up": (c.n_embd, c.n_ff), "ffn_down": (c.n_ff, c.n_embd)}  # fmt: skip
        for proj in LORA_PROJECTIONS:
            n_in, n_out = widths[proj]
            ab = (self.lora_tensor(w.g, f"blk.{i}.{proj}.lora_a", (self.rank, n_in)),
                  self.lora_tensor(w.g, f"blk.{i}.{proj}.lora_b", (n_out, self.rank)))  # fmt: skip
            L.lora[proj] = ab if self.switch_dev is None else (self.switch_dev.upload(ab[0]), self.switch_dev.upload(ab[1]))
        return L

    def lora_tensor(self, g: GGUFFile, name: str, shape: tuple[int, int]) -> np.ndarray:
        """An adapter tensor ``[n_slots, *shape]`` (slot 0 the base model's) as float32 on the host."""
        t = g.tensors.get(name)
        want = (self.n_adapters + 1, *shape)
        if t is None:
            raise GGUFError(f"{g.path}: tensor {name!r} is missing; the file is incomplete or not a supported model")
        if tuple(t.shape) != want:
            raise GGUFError(f"{g.path}: tensor {name!r} has shape {t.shape}, expected {want}; the file is not a supported model")
        return np.ascontiguousarray(dequantize(t.data, t.qtype, t.shape).reshape(want), np.float32)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        return None  # (llama.cpp's loader reads no rope_freqs for it)

    def layer_specs(self) -> list[LayerSpec]:
        """The trunk's layers, then the router's: one head, scores unscaled."""
        c = self.cfg
        return [*super().layer_specs(), LayerSpec(1, 1, c.head_dim, c.head_dim, 0, 1.0)]

    def route(self, tokens: Any, pos: np.ndarray, cache: KVCache) -> Any:
        """Each token's adapter slot: the router layer's attention over the sequence so far (its K and V stored in the
        cache's last layer), clamped to [0, n_adapters] and rounded (on the GPU an int32 device buffer)."""
        T, hd = len(tokens), self.cfg.head_dim
        if self.switch_dev is not None:
            q, k, v, out = (self.buf.get(f"router_{n}", T, 1, hd) for n in "qkvo")
            slots = self.buf.get("slots", T, dtype=np.int32)
            self.switch_dev.router_qkv(tokens, q, k, v)
            cache[self.cfg.n_layer].update_and_attend(q, k, v, pos, out)
            self.switch_dev.route(out, slots)
            return slots
        slot = np.array([self.slot_of.get(int(t), 0) for t in tokens], np.float32)
        q, k, v, out = (np.zeros((T, 1, hd), np.float32) for _ in range(4))
        q[:, 0, 0] = 1.0
        k[:, 0, 0] = np.where(slot > 0, self.router_gain, -self.router_gain)
        v[:, 0, 0] = slot
        cache[self.cfg.n_layer].update_and_attend(q, k, v, pos, out)
        return round_half_away(np.clip(out[:, 0, 0], 0.0, float(self.n_adapters))).astype(np.int64)

    def shown(self, tokens: Any) -> Any:
        """The ids the tokens are embedded as: a control token's substitute, any other itself."""
        if self.switch_dev is not None:
            shown = self.buf.get("shown", len(tokens), dtype=np.int32)
            self.switch_dev.substitute(tokens, shown)
            return shown
        return np.array([self.substitute_of.get(int(t), int(t)) for t in tokens], np.asarray(tokens).dtype)

    def lora_add(self, L: SwitchLayer, proj: str, x: Any, slots: Any, out: Any) -> None:
        """``out += B[s] (A[s] x)`` of ``proj``'s adapters, each token its slot's."""
        if self.switch_dev is not None:
            self.switch_dev.lora_add(L.lora[proj], x, slots, out)
        else:
            lora_add(L.lora[proj], x, slots, out)

    def residual_add(self, x: Any, o: Any) -> None:
        """``x += o`` (a block's output), times Granite's residual_scale first."""
        if self.cfg.residual_scale != 1.0:
            self.be.scale(o, self.cfg.residual_scale)
        self.be.add(x, o)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o = self.buf.get("o", T, c.n_embd)
        slots = self.route(tokens, pos, cache)
        be.get_rows(self.tok_embd, self.shown(tokens), x)
        if c.embedding_scale != 1.0:
            be.scale(x, c.embedding_scale)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            for proj, out in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
                self.lora_add(L, proj, xn, slots, out)
            if L.rope:
                be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            self.lora_add(L, "attn_output", att, slots, o)
            self.residual_add(x, o)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            self.lora_add(L, "ffn_gate", xn, slots, gate)
            self.lora_add(L, "ffn_up", xn, slots, up)
            be.silu_mul(gate, up, gate)
            be.linear(L.w_down, gate, o)
            self.lora_add(L, "ffn_down", gate, slots, o)
            self.residual_add(x, o)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
