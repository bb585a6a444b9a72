"""LoRA adapters (llama.cpp's ``--lora`` / ``--lora-scaled``, Ollama's ``ADAPTER``): GGUF files that
``convert_lora_to_gguf.py`` writes, merged into the base model's weights when it loads.

An adapter holds, for some weight ``W`` ``[n_out, n_in]`` of the base (``blk.3.attn_q.weight``), two
low-rank factors: ``<name>.lora_a`` ``[r, n_in]`` and ``<name>.lora_b`` ``[n_out, r]``; the adapted
weight is ``W + scale * B @ A`` with ``scale = user scale * alpha / r`` (``adapter.lora.alpha``; 0:
the user's scale alone), as llama.cpp applies it.  llama.cpp adds ``scale * B (A x)`` on every
product; kvrun merges once instead, so the per-token kernels, fused and quantized, run unchanged at
the base model's speed.  A merged weight is stored in the type it had when that was a float type,
else as Q8_0 (a K-quant or 4-bit block cannot be written back here; Q8_0's error is ~0.4% of a
weight's block maximum, well under the 4-bit file's own): adapted matrices take 8.5 bits a weight.

:func:`apply` returns a view of the base file whose tensor table has the merged weights in place
of the originals, so every architecture loads them as it loads any tensor.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q

from .errors import GGUFError, UnsupportedModelError
from .gguf_file import GGUFFile, TensorInfo
from .quants import dequantize


@dataclass
class LoraAdapter:
    path: str
    scale: float  # the user's (llama.cpp's --lora: 1.0; --lora-scaled FILE SCALE)
    alpha: float
    pairs: dict[str, tuple[TensorInfo, TensorInfo]]  # base tensor name -> (A, B)
    arch: str = ""  # the architecture it was made for

    @classmethod
    def open(cls, path: str | os.PathLike, scale: float = 1.0) -> LoraAdapter:
        g = GGUFFile(path)
        kind, atype = g.get("general.type"), g.get("adapter.type")
        if kind != "adapter" or atype != "lora":
            raise GGUFError(f"{path}: not a LoRA adapter (general.type {kind!r}, adapter.type {atype!r}); "
                            "convert one with llama.cpp's convert_lora_to_gguf.py")  # fmt: skip
        pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
        for name, t in g.tensors.items():
            if name.endswith(".lora_a"):
                base = name[: -len(".lora_a")]
                b = g.tensors.get(base + ".lora_b")
                if b is None:
                    raise GGUFError(f"{path}: {name} has no {base}.lora_b; the adapter is incomplete")
                pairs[base] = (t, b)
        if not pairs:
            raise GGUFError(f"{path}: the adapter holds no lora_a/lora_b pairs")
        return cls(str(path), float(scale), float(g.get("adapter.lora.alpha", 0.0) or 0.0), pairs, g.architecture)

    def delta(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """``scale * alpha/r * B @ A`` for base tensor ``name`` of numpy shape ``[n_out, n_in]``, float32."""
        ta, tb = self.pairs[name]
        A = dequantize(ta.data, ta.qtype, ta.shape).reshape(ta.shape).astype(np.float32)  # [r, n_in]
        B = dequantize(tb.data, tb.qtype, tb.shape).reshape(tb.shape).astype(np.float32)  # [n_out, r]
        r = A.shape[0]
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != r or (B.shape[0], A.shape[1]) != tuple(shape):
            raise GGUFError(f"{self.path}: {name}: lora_a {ta.shape} and lora_b {tb.shape} do not fit the model's "
                            f"{tuple(shape)}; the adapter was made for another model")  # fmt: skip
        s = self.scale * (self.alpha / r if self.alpha else 1.0)
        return (B @ A) * np.float32(s)


def _encode(w: np.ndarray, qtype: int) -> tuple[int, np.ndarray]:
    """A merged float32 weight in a type kvrun runs: its own float type, else Q8_0; (type, raw bytes)."""
    from gguf.quants import quantize

    if qtype == Q.F32:
        return Q.F32, w.astype(np.float32).view(np.uint8).reshape(-1)
    if qtype in (Q.F16, Q.BF16):
        return Q.F16, w.astype(np.float16).view(np.uint8).reshape(-1)
    if w.shape[-1] % 32:
        raise UnsupportedModelError(f"rows of {w.shape[-1]} cannot hold Q8_0 blocks of 32; this model cannot take a LoRA here")
    return Q.Q8_0, np.ascontiguousarray(quantize(w, Q.Q8_0)).view(np.uint8).reshape(-1)


def apply(g: GGUFFile, adapters: list[LoraAdapter]) -> GGUFFile:
    """A view of ``g`` with every weight an adapter touches merged (the file itself is not changed)."""
    if not adapters:
        return g
    out = copy.copy(g)
    out.tensors = dict(g.tensors)
    for ad in adapters:
        if ad.arch != g.architecture:
            raise GGUFError(f"{ad.path}: the adapter is for {ad.arch!r}, the model is {g.architecture!r}")
        missing = [n for n in ad.pairs if n not in g.tensors]
        if missing:
            raise GGUFError(f"{ad.path}: the model has no tensor {missing[0]!r}; the adapter was made for another model")
    for name in {n for ad in adapters for n in ad.pairs}:
        t = out.tensors[name]
        if len(t.shape) != 2:
            raise UnsupportedModelError(f"{name}: a LoRA on a {len(t.shape)}-D tensor (mixture-of-experts weights) is not supported")
        w = dequantize(t.data, t.qtype, t.shape).reshape(t.shape).astype(np.float32)
        for ad in adapters:
            if name in ad.pairs:
                w += ad.delta(name, t.shape)
        qtype, data = _encode(w, t.qtype)
        out.tensors[name] = TensorInfo(name, int(qtype), t.shape, data)
    return out
