"""An independent float64 numpy forward pass, the specification the kernels are tested against.

Written for clarity, not speed: whole-sequence causal attention, weights
dequantized with gguf's own reference, rope computed from its formula.

``quantize_x=True``: every product with a block-quantized weight meets its
activations quantized per 32 to int8 first (scale amax/127, round half to even),
as llama.cpp's and kvrun's integer kernels do; the rest stays float64.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize


@functools.lru_cache(maxsize=2)
def shared_reader(path) -> GGUFReader:
    """One ``gguf.GGUFReader`` per real model for the whole run: it parses Gemma 3's 262k-token
    vocabulary item by item (~20 s), and three test files read each real model."""
    return GGUFReader(str(path))


_FLOAT_TYPES = {int(GGMLQuantizationType.F32), int(GGMLQuantizationType.F16), int(GGMLQuantizationType.BF16)}


def quantize_x8(x: np.ndarray) -> np.ndarray:
    """x [.., n] quantized per 32 to int8 codes times their scale, as float64 (the int8 kernels' activations)."""
    b = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(b * inv) * (amax / np.float32(127.0))).astype(np.float64).reshape(x.shape)


class Reference:
    def __init__(self, path, reader: GGUFReader | None = None, quantize_x: bool = False) -> None:
        r = reader if reader is not None else GGUFReader(str(path))
        self.t = {}
        self.quantized = {t.name for t in r.tensors if int(t.tensor_type) not in _FLOAT_TYPES} if quantize_x else set()
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.t[t.name] = a.reshape([int(x) for x in reversed(t.shape.tolist())]) if a.ndim > 1 or len(t.shape) > 1 else a.reshape(-1)
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
        self.arch = arch = f["general.architecture"]
        self.n_layer = f[f"{arch}.block_count"]
        self.n_head = f[f"{arch}.attention.head_count"]
        self.n_head_kv = f[f"{arch}.attention.head_count_kv"]
        self.n_embd = f[f"{arch}.embedding_length"]
        self.head_dim = f.get(f"{arch}.attention.key_length", self.n_embd // self.n_head)
        self.eps = f[f"{arch}.attention.layer_norm_rms_epsilon"]
        self.theta = f.get(f"{arch}.rope.freq_base", 10000.0)
        self.window = f.get(f"{arch}.attention.sliding_window", 0)
        self.n_expert_used = f.get(f"{arch}.expert_used_count", 0)
        self.attn_cap = f.get(f"{arch}.attn_logit_softcapping", 0.0)  # Gemma 2
        self.final_cap = f.get(f"{arch}.final_logit_softcapping", 0.0)
        self.scales = {k: f.get(f"{arch}.{k}", d) for k, d in (("embedding_scale", 1.0), ("residual_scale", 1.0), ("attention.scale", 0.0), ("logit_scale", 1.0))}  # Granite
        self.rope_freqs = self.t.get("rope_freqs.weight", self.t.get("rope_factors_short.weight"))  # Llama 3.1+, Phi-3 (short contexts)

    def lin(self, x, name):
        """x @ W.T, x quantized first where the weight is block-quantized and ``quantize_x`` asked."""
        return (quantize_x8(x) if name in self.quantized else x) @ self.t[name].T

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, theta, neox):  # x [T, H, D]
        D = x.shape[-1]
        inv = theta ** (-np.arange(0, D, 2) / D)
        if self.rope_freqs is not None:
            inv = inv / self.rope_freqs
        ang = pos[:, None] * inv[None, :]  # [T, D/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if neox:
            a, b = x[..., : D // 2], x[..., D // 2 :]
            return np.concatenate([a * c - b * s, a * s + b * c], -1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def hidden(self, tokens) -> np.ndarray:
        """The final-normed hidden states ``[T, n_embd]`` (what embeddings pool)."""
        return self.logits(tokens, hidden=True)

    def logits(self, tokens, hidden: bool = False) -> np.ndarray:
        t, arch = self.t, self.arch
        gemma = arch in ("gemma2", "gemma3")
        T = len(tokens)
        pos = np.arange(T, dtype=np.float64)
        x = t["token_embd.weight"][tokens]
        if gemma:
            x = x * math.sqrt(self.n_embd)
        x = x * self.scales["embedding_scale"]
        rs = self.scales["residual_scale"]
        H, Hkv, D = self.n_head, self.n_head_kv, self.head_dim
        for il in range(self.n_layer):
            b = f"blk.{il}."
            swa = (arch == "gemma3" and il % 6 < 5) or (arch == "gemma2" and il % 2 == 0)
            theta = 10000.0 if swa and arch == "gemma3" else self.theta
            h = self.rms(x, t[b + "attn_norm.weight"])
            if b + "attn_qkv.weight" in t:  # Phi-3: Q, K, V rows in one matrix
                qkv = self.lin(h, b + "attn_qkv.weight")
                q, k, v = qkv[:, : H * D], qkv[:, H * D : (H + Hkv) * D], qkv[:, (H + Hkv) * D :]
            else:
                q = self.lin(h, b + "attn_q.weight")
                k = self.lin(h, b + "attn_k.weight")
                v = self.lin(h, b + "attn_v.weight")
            if b + "attn_q.bias" in t:
                q, k, v = q + t[b + "attn_q.bias"], k + t[b + "attn_k.bias"], v + t[b + "attn_v.bias"]
            q, k, v = q.reshape(T, H, D), k.reshape(T, Hkv, D), v.reshape(T, Hkv, D)
            if b + "attn_q_norm.weight" in t:  # QK-norm: Gemma 3, Qwen3
                q, k = self.rms(q, t[b + "attn_q_norm.weight"]), self.rms(k, t[b + "attn_k_norm.weight"])
            neox = arch in ("qwen2", "qwen3", "qwen3moe", "phi3", "gemma2", "gemma3")
            if not (arch == "smollm3" and (il + 1) % 4 == 0):  # SmolLM3's NoPE layers
                q, k = self.rope(q, pos, theta, neox), self.rope(k, pos, theta, neox)
            out = np.zeros((T, H, D))
            mask = np.tril(np.ones((T, T), bool))
            if swa and self.window:
                mask &= (pos[:, None] - pos[None, :]) < self.window
            for hh in range(H):
                kh = hh // (H // Hkv)
                s = q[:, hh] @ k[:, kh].T * (self.scales["attention.scale"] or 1 / math.sqrt(D))
                if self.attn_cap:
                    s = self.attn_cap * np.tanh(s / self.attn_cap)
                s = np.where(mask, s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[:, hh] = p @ v[:, kh]
            o = self.lin(out.reshape(T, H * D), b + "attn_output.weight")
            if gemma:
                o = self.rms(o, t[b + "post_attention_norm.weight"])
            x = x + rs * o
            h = self.rms(x, t[b + "ffn_norm.weight"])
            if b + "ffn_gate_inp.weight" in t:  # mixture of experts: softmax router, top k, renormalised
                k_used = self.n_expert_used
                logits = h @ t[b + "ffn_gate_inp.weight"].T
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                top = np.argsort(-p, axis=1, kind="stable")[:, :k_used]
                wts = np.take_along_axis(p, top, 1)
                wts /= wts.sum(1, keepdims=True)
                d = np.zeros_like(h)
                for tok in range(T):
                    for e, wt in zip(top[tok], wts[tok]):
                        g = h[tok] @ t[b + "ffn_gate_exps.weight"][e].T
                        u = h[tok] @ t[b + "ffn_up_exps.weight"][e].T
                        d[tok] += wt * ((g / (1 + np.exp(-g)) * u) @ t[b + "ffn_down_exps.weight"][e].T)
                x = x + rs * d
                continue
            if b + "ffn_gate.weight" in t:
                g = self.lin(h, b + "ffn_gate.weight")
                u = self.lin(h, b + "ffn_up.weight")
            else:  # Phi-3: gate rows, then up rows
                g, u = np.split(self.lin(h, b + "ffn_up.weight"), 2, axis=1)
            if gemma:
                a = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
            else:
                a = g / (1 + np.exp(-g))
            d = self.lin(a * u, b + "ffn_down.weight")
            if gemma:
                d = self.rms(d, t[b + "post_ffw_norm.weight"])
            x = x + rs * d
        x = self.rms(x, t["output_norm.weight"])
        if hidden:
            return x
        out = self.lin(x, "output.weight" if "output.weight" in t else "token_embd.weight") / self.scales["logit_scale"]
        return self.final_cap * np.tanh(out / self.final_cap) if self.final_cap else out
