"""``kvrun quantize``: an F32/F16/BF16 GGUF (what llama.cpp's convert_hf_to_gguf.py writes) to Q8_0 ... Q2_K, as
llama.cpp's ``llama-quantize`` does it, without building llama.cpp.

Two halves, both held to llama.cpp (src/llama-quant.cpp, ggml/src/ggml-quants.c) byte for byte by
``tests/test_quantize.py`` (fixtures made by llama.cpp itself: tools/make_quantize_fixtures.py):

* The recipe (:class:`Recipe`): which type each tensor gets.  A file type names a default type (Q4_K_M: Q4_K)
  and llama.cpp's rules move some tensors off it: the output head (and the token embeddings, where the model
  ties them to it) to Q6_K, some layers' ``attn_v`` and ``ffn_down`` to Q6_K in the "_M" mixes, and so on; a
  matrix whose rows are not a multiple of the type's block falls back to a 32-block type (Q4_K -> Q5_0).  Only
  2-D and 3-D weights are quantized: 1-D tensors, norms, routers and a few small tables keep their type.
* The quantizers: ``gguf.quants`` for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and BF16 (ggml's reference quantizers, bit
  for bit), ``ops/cpu/kquantize.py`` for the K-quants (ggml's ``quantize_row_q*_K_ref`` ported to Numba), numpy
  for F16.  No importance matrix: llama.cpp without ``--imatrix`` runs these same reference quantizers.
  With ``--imatrix`` (:mod:`.imatrix`), and for IQ4_NL / IQ4_XS, ``ops/cpu/iquantize.py``: ggml's weighted
  ``quantize_row_*_impl`` (tests/test_imatrix.py holds them and the imatrix rules of the recipe to llama.cpp).

A quantized input is dequantized first (``--allow-requantize``, refused without it, as llama-quantize does).

The output is written with ``gguf.GGUFWriter``: every metadata key copied (``general.file_type`` set to the new
type and ``general.quantization_version`` to 2, as llama.cpp sets them; split keys dropped), the tensors in the
input's order, aligned as the input says (32 bytes unless ``general.alignment`` says otherwise).  It streams: a
tensor at a time is decoded (in chunks of rows) and written, so a model is never in memory twice.
llama-quantize writes the tensors in its loader's order (by layer, then name) instead: the bytes of every tensor
are the same, their order in the file may differ.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFValueType, GGUFWriter, LlamaFileType
from gguf import GGMLQuantizationType as T

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.strings import StringArray

#: GGML_QNT_VERSION, written as general.quantization_version
QUANTIZATION_VERSION = 2


@dataclass(frozen=True)
class FileType:
    """One of llama-quantize's type names: its ``general.file_type`` and the tensor type it defaults to."""

    name: str
    ftype: LlamaFileType
    default: T


#: the file types ``kvrun quantize`` makes (llama-quantize's names), most bits first
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("Q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
        FileType("Q6_K", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
        FileType("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
        FileType("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
        FileType("Q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
        FileType("Q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
        FileType("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
        FileType("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
        FileType("Q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
        FileType("Q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
        FileType("IQ4_NL", LlamaFileType.MOSTLY_IQ4_NL, T.IQ4_NL),
        FileType("IQ4_XS", LlamaFileType.MOSTLY_IQ4_XS, T.IQ4_XS),
        FileType("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
        FileType("Q2_K", LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
        FileType("F16", LlamaFileType.MOSTLY_F16, T.F16),
        FileType("BF16", LlamaFileType.MOSTLY_BF16, T.BF16),
    )
}

#: the tensor types kvrun can write (for --output-tensor-type and --token-embedding-type)
TENSOR_TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q5_1, T.Q5_0, T.Q4_K, T.Q4_1, T.Q4_0, T.Q3_K, T.Q2_K,
                T.IQ4_NL, T.IQ4_XS)
_K_QUANTS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
_UNQUANTIZED = (T.F32, T.F16, T.BF16)


def file_type(name: str) -> FileType:
    """The file type called ``name`` (case-insensitive); else a one-line error listing the ones there are."""
    ft = FILE_TYPES.get(name.upper())
    if ft is None:
        raise KvrunError(f"unknown quantization type {name!r}; kvrun quantize makes {', '.join(FILE_TYPES)}")
    return ft


def tensor_type(name: str, what: str) -> T:
    """A tensor type from its ggml name (``q6_K``, ``Q8_0``, ``f16``; case-insensitive), for the option ``what``."""
    for t in TENSOR_TYPES:
        if t.name.lower() == name.lower():
            return t
    raise KvrunError(f"{what}: unknown tensor type {name!r}; use one of {', '.join(t.name for t in TENSOR_TYPES)}")


# ----------------------------------------------------------------------------------------------------- the recipe
def _layer(name: str) -> int:
    """The layer a tensor's name gives (``blk.N.``), -1 for none: llama.cpp's ``sscanf(name, "blk.%d.")``."""
    m = re.match(r"blk\.([+-]?\d+)", name)
    return int(m.group(1)) if m else -1


def llama_order(names: Sequence[str]) -> list[str]:
    """The tensors in llama.cpp's loader's order (by layer, the tensors outside layers first, then by name):
    the order llama-quantize chooses types in, which its counters of attn_v and ffn_down layers follow."""
    return sorted(names, key=lambda n: (_layer(n), n))


def n_dims(shape: Sequence[int]) -> int:
    """``ggml_n_dims``: the dimensions up to the last one (in ggml's order, fastest first) larger than 1."""
    ne = list(reversed(shape))
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


#: tensors llama.cpp never quantizes, whatever their shape: names containing these
_KEEP_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)  # fmt: skip


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """llama.cpp's ``tensor_allows_quantization``: 2-D and 3-D tensors whose name ends in ``weight``, except norms,
    MoE routers, positional and token-type embeddings, convolutions and the small tables of a few architectures."""
    if n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in name for s in _KEEP_SUBSTRINGS)


def category(name: str) -> str:
    """llama.cpp's ``tensor_get_category``: which rule of the recipe a tensor falls under (first match wins)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):  # fmt: skip
        if key in name:
            return cat
    return "other"


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """The layers the "_M" mixes give more bits: the first and last eighth, and every third one between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


#: a K-quant's fallback where a row is not a multiple of 256 weights (llama.cpp's ``tensor_type_fallback``)
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.IQ4_XS: T.IQ4_NL}


@dataclass
class ModelFacts:
    """What the recipe reads of a model's hyperparameters."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    @classmethod
    def of(cls, g: GGUFFile) -> ModelFacts:
        arch = g.architecture

        def first(v: Any, default: int) -> int:
            if v is None:
                return default
            return int(v[0]) if isinstance(v, (list, np.ndarray)) else int(v)

        n_head = first(g.arch_get("attention.head_count"), 0)
        return cls(arch, first(g.arch_get("block_count"), 0), n_head, first(g.arch_get("attention.head_count_kv"), n_head),
                   first(g.arch_get("expert_count"), 0))  # fmt: skip

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B (its attn_v rule): a Llama of 80 layers with grouped-query attention."""
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass
class Recipe:
    """llama.cpp's ``llama_tensor_get_type`` for the file types of :data:`FILE_TYPES`, without an importance matrix.

    Call :meth:`choose` on every tensor in :func:`llama_order`: the attn_v and ffn_down rules count the tensors
    seen so far, as llama.cpp's do.
    """

    facts: ModelFacts
    ft: FileType
    names: Sequence[str]
    pure: bool = False
    output_type: T | None = None
    token_embd_type: T | None = None
    fallbacks: list[tuple[str, T, T]] = field(default_factory=list)
    has_imatrix: bool = False  # (llama.cpp's qs.has_imatrix: a few rules differ with an importance matrix)

    def __post_init__(self) -> None:
        cats = [category(n) for n in self.names]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats)
        self.tied = "output" not in cats  # the token embeddings double as the output head
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    def choose(self, name: str, shape: Sequence[int], cur: T) -> T:
        """The type tensor ``name`` (numpy ``shape``, now of type ``cur``) is written in."""
        if not allows_quantization(name, shape):
            return cur
        cat = category(name)
        if self.token_embd_type is not None and cat == "token_embd":
            return self.token_embd_type
        if self.output_type is not None and cat == "output":
            return self.output_type
        new = self.ft.default
        if new in _UNQUANTIZED:  # F16, BF16: every matrix the one type
            return new
        if not self.pure:
            new = self._mix(name, shape[-1], cat, new)
        return self._fallback(name, shape[-1], new)

    def _mix(self, name: str, n_cols: int, cat: str, new: T) -> T:
        """``llama_tensor_get_type_impl``, the branches these file types reach."""
        ft, f = self.ft.ftype, self.facts
        F = LlamaFileType
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.output_type is not None:
                return self.output_type
            if f.arch == "falcon" or n_cols % GGML_QUANT_SIZES[new][0]:
                return T.Q8_0
            return new if new == T.Q8_0 else T.Q6_K
        if cat == "token_embd":
            return new  # (only the IQ and ternary mixes, not made here, move it)
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            i, n = self.i_attention_wv, self.n_attention_wv
            if ft == F.MOSTLY_Q2_K:
                new = T.Q4_K if f.n_gqa >= 4 else T.Q3_K
            elif ft == F.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < 2 else T.Q4_K
            elif ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and f.n_gqa >= 4:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i, n):
                new = T.Q6_K
            elif ft == F.MOSTLY_Q4_K_S and i < 4:
                new = T.Q5_K
            if f.is_70b and new in (T.Q3_K, T.Q4_K):  # 8 heads share attn_v: more bits for little size
                new = T.Q5_K
            if f.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
            return new
        if cat == "attn_k":
            return T.Q8_0 if f.n_expert == 8 else new
        if cat == "ffn_down":
            i_layer, n_layer = self._layer_info(self.i_ffn_down, name)
            falcon = f.arch == "falcon"
            if ft == F.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == F.MOSTLY_Q3_K_M:
                new = T.Q5_K if i_layer < n_layer // 16 else T.Q4_K if not falcon or use_more_bits(i_layer, n_layer) else T.Q3_K
            elif ft == F.MOSTLY_Q4_K_M:
                if falcon:
                    new = T.Q6_K if i_layer < n_layer // 16 else T.Q5_K if use_more_bits(i_layer, n_layer) else T.Q4_K
                elif use_more_bits(i_layer, n_layer):
                    new = T.Q6_K
            elif ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and i_layer < n_layer // 8 and not self.has_imatrix:
                new = T.Q5_K
            elif ft == F.MOSTLY_Q5_K_M and use_more_bits(i_layer, n_layer):
                new = T.Q6_K
            elif ft == F.MOSTLY_Q4_K_S and not falcon and i_layer < n_layer // 8:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and self.has_imatrix and i_layer < n_layer // 8:
                new = T.Q4_1 if ft == F.MOSTLY_Q4_0 else T.Q5_1  # (llama.cpp: "guard against craziness")
            self.i_ffn_down += 1
            return new
        if cat == "attn_output":
            if f.arch != "falcon":
                if f.n_expert == 8:
                    if ft in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_M, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ4_NL,
                              F.MOSTLY_IQ4_XS):  # fmt: skip
                        new = T.Q5_K
                elif ft == F.MOSTLY_Q2_K:
                    new = T.Q3_K
                elif ft == F.MOSTLY_Q3_K_M:
                    new = T.Q4_K
            return new
        if cat == "attn_qkv":  # (unreachable: attn_qkv is attn_v-like above, as in llama.cpp)
            return new
        if cat in ("ffn_gate", "ffn_up"):  # (only IQ3_XS moves these; the counters advance all the same)
            self._layer_info(self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up, name)
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
        return new

    def _layer_info(self, counter: int, name: str) -> tuple[int, int]:
        """(layer, n_layer) for the ffn rules: the count of such tensors so far, or, in an MoE (whose experts'
        tensors need not come a layer at a time), the layer the name gives."""
        n_layer = self.facts.n_layer
        if max(1, self.facts.n_expert) > 1:
            i = _layer(name)
            if not 0 <= i < n_layer:
                raise KvrunError(f"tensor {name!r}: cannot tell its layer (of {n_layer}) from its name")
            return i, n_layer
        return counter, n_layer

    def _fallback(self, name: str, n_cols: int, new: T) -> T:
        """``tensor_type_fallback``: a type whose blocks divide the rows, else F16."""
        block = GGML_QUANT_SIZES[new][0]
        if n_cols % block == 0:
            return new
        if new not in FALLBACK:
            raise KvrunError(f"tensor {name!r}: rows of {n_cols} are not a multiple of {new.name}'s {block}-weight blocks")
        to = FALLBACK[new]
        if n_cols % GGML_QUANT_SIZES[to][0]:
            to = T.F16  # (llama.cpp: "must use F16 due to unusual shape")
        self.fallbacks.append((name, new, to))
        return to


# ----------------------------------------------------------------------------------------------------- the writer
_ARRAY_ITEM = {
    np.dtype("<u1"): GGUFValueType.UINT8, np.dtype("<i1"): GGUFValueType.INT8, np.dtype("<u2"): GGUFValueType.UINT16,
    np.dtype("<i2"): GGUFValueType.INT16, np.dtype("<u4"): GGUFValueType.UINT32, np.dtype("<i4"): GGUFValueType.INT32,
    np.dtype("<f4"): GGUFValueType.FLOAT32, np.dtype("<u8"): GGUFValueType.UINT64, np.dtype("<i8"): GGUFValueType.INT64,
    np.dtype("<f8"): GGUFValueType.FLOAT64, np.dtype(bool): GGUFValueType.BOOL,
}  # fmt: skip
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


class _Writer(GGUFWriter):
    """GGUFWriter that also writes an empty array (it refuses them; a converted file may hold one)."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None) -> bytes:
        if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _copy_metadata(g: GGUFFile, w: GGUFWriter, ftype: int) -> None:
    """Every key of ``g`` into ``w`` in order, with llama.cpp's changes: file type and quantization version set,
    split keys dropped."""
    set_keys = {"general.file_type": ftype, "general.quantization_version": QUANTIZATION_VERSION}
    for key, val in g.metadata.items():
        vtype = GGUFValueType(g.value_types[key])
        if key == "general.architecture" or key in _SPLIT_KEYS:
            continue  # (GGUFWriter writes the architecture itself, first)
        if key == "general.alignment":
            w.add_custom_alignment(int(val))
        elif key in set_keys:
            w.add_uint32(key, set_keys.pop(key))
        elif vtype != GGUFValueType.ARRAY:
            w.add_key_value(key, val, vtype)
        elif isinstance(val, StringArray):
            w.add_key_value(key, list(val.iter_bytes()), vtype, GGUFValueType.STRING)
        elif isinstance(val, np.ndarray):
            w.add_key_value(key, val.tolist(), vtype, _ARRAY_ITEM[val.dtype])
        else:
            raise KvrunError(f"{g.path}: metadata key {key!r} is an array of arrays, which kvrun cannot copy")
    for key, v in set_keys.items():  # (keys the input lacked: at the end, where llama.cpp puts them)
        w.add_uint32(key, v)


# --------------------------------------------------------------------------------------------------- the tensors
def encode(x: np.ndarray, qtype: T, imatrix: np.ndarray | None = None) -> np.ndarray:
    """float32 rows ``x`` [n, n_cols] as ``qtype``'s bytes, uint8 [n, row bytes]: ggml's reference quantizers, or,
    with an importance matrix (float32 [n_cols]) and for IQ4_NL / IQ4_XS, ggml's weighted ones
    (``ops/cpu/iquantize.py``; F16, BF16 and Q8_0 ignore the matrix, as ggml does)."""
    if qtype in (T.IQ4_NL, T.IQ4_XS) or (imatrix is not None and qtype not in (T.F32, T.F16, T.BF16, T.Q8_0)):
        from ..ops.cpu.iquantize import quantize_weighted

        return quantize_weighted(x, qtype, imatrix)
    if qtype == T.F32:
        out = np.ascontiguousarray(x, np.float32)
    elif qtype == T.F16:
        out = x.astype(np.float16)
    elif qtype in _K_QUANTS:
        from ..ops.cpu.kquantize import quantize_k

        return quantize_k(x, qtype)
    else:
        from gguf.quants import quantize

        with np.errstate(all="ignore"):  # (a zero block divides by zero, as the C does, and is stored as zero)
            out = quantize(x, qtype)
    return out.view(np.uint8).reshape(x.shape[0], -1)


def _decode(raw: np.ndarray, qtype: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Rows stored as ``qtype`` to float32 [n_rows, n_cols] (ggml's own dequantizers, bit for bit)."""
    if qtype == T.F32:
        # a copy (one chunk, <= 64 MiB): the memory-mapped view is read-only, a different argument type to Numba than
        # the writable rows every other type decodes to, and each quantizer kernel would be compiled a second time
        return raw.view(np.float32).reshape(n_rows, n_cols).copy()
    from ..loaders.quants import dequantize

    return dequantize(raw, qtype, (n_rows, n_cols))


def row_bytes(qtype: T, n_cols: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_cols // block * size


#: weights decoded and encoded at a time (bounds the float32 copy of a large tensor: 64 MiB)
CHUNK_WEIGHTS = 1 << 24


def _convert(raw: np.ndarray, cur: int, new: T, shape: Sequence[int], imatrix: np.ndarray | None = None) -> np.ndarray:
    """One tensor from type ``cur`` to ``new``, a chunk of rows at a time, as uint8 bytes; ``imatrix``: the
    importance of each column, [n_cols] or, for a 3-D tensor of experts, [n_expert * n_cols] (expert e's rows
    take slice e, as llama.cpp's ``imatrix + i03 * n_per_row``)."""
    n_cols = int(shape[-1])
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    src_row = raw.nbytes // max(n_rows, 1)
    out = np.empty((n_rows, row_bytes(new, n_cols)), np.uint8)
    step = max(1, CHUNK_WEIGHTS // max(n_cols, 1))
    n_mat = 1 if imatrix is None else imatrix.size // max(n_cols, 1)
    per_mat = n_rows // max(n_mat, 1)
    for m in range(n_mat):  # (a chunk never spans two experts' matrices)
        qw = None if imatrix is None else imatrix[m * n_cols : (m + 1) * n_cols]
        for r in range(m * per_mat, (m + 1) * per_mat if imatrix is not None else n_rows, step):
            e = min((m + 1) * per_mat if imatrix is not None else n_rows, r + step)
            x = _decode(raw[r * src_row : e * src_row], cur, e - r, n_cols)
            out[r:e] = encode(x, new, qw)
    return out.reshape(-1)


# ----------------------------------------------------------------------------------------------------- the driver
@dataclass
class QuantizeResult:
    """What :func:`quantize_model` did: sizes in bytes, the count of each type written, the fallbacks."""

    path: Path
    n_tensors: int
    n_elements: int
    size_in: int
    size_out: int
    seconds: float
    types: dict[str, int]
    fallbacks: list[tuple[str, T, T]]

    def summary(self) -> str:
        """One line, as llama-quantize ends: sizes before and after, bits per weight."""
        mib = 1024.0 * 1024.0
        bpw = 8.0 / max(self.n_elements, 1)
        return (f"model size = {self.size_in / mib:.2f} MiB ({self.size_in * bpw:.2f} BPW), "
                f"quant size = {self.size_out / mib:.2f} MiB ({self.size_out * bpw:.2f} BPW), "
                f"{self.seconds:.1f} s: {self.path}")  # fmt: skip


def plan(g: GGUFFile, ft: FileType, pure: bool = False, output_type: T | None = None,
         token_embd_type: T | None = None, has_imatrix: bool = False) -> tuple[dict[str, T], list[tuple[str, T, T]]]:  # fmt: skip
    """Every tensor's output type (name -> type), chosen in llama.cpp's order, and the fallbacks taken."""
    names = list(g.tensors)
    recipe = Recipe(ModelFacts.of(g), ft, names, pure, output_type, token_embd_type, has_imatrix=has_imatrix)
    types = {}
    for name in llama_order(names):
        info = g.tensors[name]
        types[name] = recipe.choose(name, info.shape, T(info.qtype))
    return types, recipe.fallbacks


def quantize_model(
    inp: str | os.PathLike,
    out: str | os.PathLike,
    type_name: str,
    allow_requantize: bool = False,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    imatrix: str | os.PathLike | None = None,
) -> QuantizeResult:
    """Quantize the GGUF ``inp`` to ``type_name`` (a key of :data:`FILE_TYPES`) into ``out``, as llama-quantize.

    ``allow_requantize``: accept an input whose matrices are already quantized (they are dequantized first);
    ``pure``: every quantized matrix the file type's default type (no mix; fallbacks still apply);
    ``output_tensor_type``, ``token_embedding_type``: ggml type names for ``output.weight`` and
    ``token_embd.weight``.  ``progress(tensors_done, n_tensors, bytes_written)`` after each tensor.
    ``imatrix``: an importance matrix (``kvrun imatrix``'s or llama-imatrix's GGUF, or a legacy .dat): the tensors
    it covers are quantized weighted by it, as ``llama-quantize --imatrix`` (:mod:`kvrun.runtime.imatrix`).
    The file appears at ``out`` only when complete.  Bad input raises a one-line :class:`KvrunError`.
    """
    t0 = time.perf_counter()
    ft = file_type(type_name)
    out_t = tensor_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None
    embd_t = tensor_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None
    out_path = Path(out)
    if Path(inp).exists() and out_path.exists() and os.path.samefile(inp, out_path):
        raise KvrunError(f"{out}: the output would overwrite the input; give another path")
    weights: dict[str, np.ndarray] = {}
    if imatrix is not None:
        from .imatrix import load_imatrix

        weights = load_imatrix(imatrix).means()
    g = GGUFFile(inp)
    try:
        types, fallbacks = plan(g, ft, pure, out_t, embd_t, has_imatrix=bool(weights))
        for name, qw in weights.items():
            info = g.tensors.get(name)
            if info is not None and qw.size % info.shape[-1]:
                raise KvrunError(f"{imatrix}: {name!r} has {qw.size} importance weights, not a multiple of its "
                                 f"{info.shape[-1]} columns: an importance matrix of another model?")  # fmt: skip
        for name, new in types.items():
            cur = T(g.tensors[name].qtype)
            if cur != new and cur not in _UNQUANTIZED and not allow_requantize:
                raise KvrunError(f"{inp}: tensor {name!r} is already {cur.name}; requantizing loses more than quantizing "
                                 "the F16/F32 original: pass --allow-requantize to do it anyway")  # fmt: skip
        tmp = out_path.with_name(out_path.name + ".part")
        try:
            result = _write(g, types, ft, tmp, progress, weights)
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        g.close()
    result.path, result.fallbacks, result.seconds = out_path, fallbacks, time.perf_counter() - t0
    return result


def _write(g: GGUFFile, types: dict[str, T], ft: FileType, path: Path,
           progress: Callable[[int, int, int], None] | None, imatrix: dict[str, np.ndarray] | None = None) -> QuantizeResult:  # fmt: skip
    w = _Writer(path, g.architecture)
    _copy_metadata(g, w, int(ft.ftype))
    names = list(g.tensors)  # (the input's order)
    for name in names:
        info, new = g.tensors[name], types[name]
        n_rows = info.n_elements // info.shape[-1]
        w.add_tensor_info(name, info.shape, np.dtype(np.float32), n_rows * row_bytes(new, info.shape[-1]), raw_dtype=new)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    size_in = size_out = n_elements = 0
    counts: dict[str, int] = {}
    for done, name in enumerate(names, 1):
        info, new = g.tensors[name], types[name]
        qw = (imatrix or {}).get(name)
        data = info.data if new == info.qtype else _convert(info.data, info.qtype, new, info.shape, qw)
        w.write_tensor_data(data)
        size_in += info.n_bytes
        size_out += data.nbytes
        n_elements += info.n_elements
        counts[new.name] = counts.get(new.name, 0) + 1
        if progress is not None:
            progress(done, len(names), size_out)
    w.close()
    return QuantizeResult(path, len(names), n_elements, size_in, size_out, 0.0, counts, [])
