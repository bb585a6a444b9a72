"""An independent float64 numpy forward pass, the specification the kernels are tested against.

Written for clarity, not speed: whole-sequence causal attention, weights
dequantized with gguf's own reference, rope computed from its formula.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


@functools.lru_cache(maxsize=2)
def shared_reader(path) -> GGUFReader:
    """One ``gguf.GGUFReader`` per real model for the whole run: it parses Gemma 3's 262k-token
    vocabulary item by item (~20 s), and three test files read each real model."""
    return GGUFReader(str(path))


class Reference:
    def __init__(self, path, reader: GGUFReader | None = None) -> None:
        r = reader if reader is not None else GGUFReader(str(path))
        self.t = {}
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

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, theta, neox):  # x [T, H, D]
        D = x.shape[-1]
        inv = theta ** (-np.arange(0, D, 2) / D)
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

    def logits(self, tokens) -> np.ndarray:
        t, arch = self.t, self.arch
        gemma = arch == "gemma3"
        T = len(tokens)
        pos = np.arange(T, dtype=np.float64)
        x = t["token_embd.weight"][tokens]
        if gemma:
            x = x * math.sqrt(self.n_embd)
        H, Hkv, D = self.n_head, self.n_head_kv, self.head_dim
        for il in range(self.n_layer):
            b = f"blk.{il}."
            swa = gemma and (il % 6) < 5
            theta = 10000.0 if swa else self.theta
            h = self.rms(x, t[b + "attn_norm.weight"])
            q = h @ t[b + "attn_q.weight"].T
            k = h @ t[b + "attn_k.weight"].T
            v = h @ t[b + "attn_v.weight"].T
            if b + "attn_q.bias" in t:
                q, k, v = q + t[b + "attn_q.bias"], k + t[b + "attn_k.bias"], v + t[b + "attn_v.bias"]
            q, k, v = q.reshape(T, H, D), k.reshape(T, Hkv, D), v.reshape(T, Hkv, D)
            if gemma:
                q, k = self.rms(q, t[b + "attn_q_norm.weight"]), self.rms(k, t[b + "attn_k_norm.weight"])
            neox = arch in ("qwen2", "gemma3")
            q, k = self.rope(q, pos, theta, neox), self.rope(k, pos, theta, neox)
            out = np.zeros((T, H, D))
            mask = np.tril(np.ones((T, T), bool))
            if swa and self.window:
                mask &= (pos[:, None] - pos[None, :]) < self.window
            for hh in range(H):
                kh = hh // (H // Hkv)
                s = q[:, hh] @ k[:, kh].T / math.sqrt(D)
                s = np.where(mask, s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[:, hh] = p @ v[:, kh]
            o = out.reshape(T, H * D) @ t[b + "attn_output.weight"].T
            if gemma:
                o = self.rms(o, t[b + "post_attention_norm.weight"])
            x = x + o
            h = self.rms(x, t[b + "ffn_norm.weight"])
            g = h @ t[b + "ffn_gate.weight"].T
            u = h @ t[b + "ffn_up.weight"].T
            if gemma:
                a = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
            else:
                a = g / (1 + np.exp(-g))
            d = (a * u) @ t[b + "ffn_down.weight"].T
            if gemma:
                d = self.rms(d, t[b + "post_ffw_norm.weight"])
            x = x + d
        x = self.rms(x, t["output_norm.weight"])
        out_w = t.get("output.weight", t["token_embd.weight"])
        return x @ out_w.T
