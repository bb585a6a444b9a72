"""``kvrun imatrix``: an importance matrix, as llama.cpp's ``llama-imatrix`` collects it, and its files.

The importance of a weight matrix's column is the mean square of the activation that meets it: over a
calibration text, for every matrix product ``y = W x`` of a layer (tools/imatrix/imatrix.cpp takes the products
whose weight is named ``blk.*``: not the output head), the sum over tokens of ``x_j^2`` per column j, and the
count of tokens.  ``kvrun quantize --imatrix`` (``llama-quantize --imatrix``) divides the one by the other and
weights each column's rounding error by it (ops/cpu/iquantize.py).

Collection: the text is tokenized once and cut into chunks of ``--ctx`` tokens, each evaluated from an empty cache
with its first token BOS where the model adds one (llama-imatrix's chunks, the same as llama-perplexity's), every
token through every layer.  The products are seen by wrapping the CPU backend's ``linear`` (every prefill product
of several tokens goes through it), the weight told by its memory: a weight is a view of the GGUF's mapped bytes.
Mixture-of-experts products (the backend's expert kernels) are not collected.

Files: llama.cpp's GGUF imatrix (``general.type = "imatrix"``, ``imatrix.datasets``, ``imatrix.chunk_count``,
``imatrix.chunk_size``; per tensor ``<name>.in_sum2`` float32 [n_mat, n_cols] and ``<name>.counts`` float32
[n_mat, 1]), which is what this writes and reads, and the legacy ``.dat`` of older llama-imatrix (read only).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..loaders.errors import KvrunError


@dataclass
class Imatrix:
    """Per tensor, the sums of squared activations ``sums[name]`` float32 [n_mat, n_cols] (n_mat: 1, or the number
    of experts) and the token counts ``counts[name]`` float32 [n_mat]; the dataset names and chunks seen."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """name -> float32 [n_mat * n_cols]: sums over counts, as llama-quantize loads them (a matrix that saw no
        token: all ones)."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name].reshape(-1, 1)
            with np.errstate(all="ignore"):
                m = np.where(c > 0, s / np.where(c > 0, c, 1), np.float32(1.0))
            out[name] = np.ascontiguousarray(m, np.float32).reshape(-1)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write llama.cpp's GGUF imatrix (the tensors sorted by name, as llama-imatrix writes them)."""
        from gguf import GGUFWriter

        w = GGUFWriter(path, "imatrix")
        w.kv_data[0].pop("general.architecture", None)  # (an imatrix has no architecture: GGUFWriter adds one)
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", self.datasets)
        w.add_uint32("imatrix.chunk_count", self.chunk_count)
        w.add_uint32("imatrix.chunk_size", self.chunk_size)
        for name in sorted(self.sums):
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(self.sums[name], np.float32))
            w.add_tensor(f"{name}.counts", np.ascontiguousarray(self.counts[name], np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def load_imatrix(path: str | os.PathLike) -> Imatrix:
    """An importance matrix from llama.cpp's GGUF format or the legacy ``.dat``; else a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise KvrunError(f"{path}: no such importance matrix file")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return _load_gguf(p)
    try:
        return _load_legacy(p)
    except (struct.error, ValueError, UnicodeDecodeError):
        raise KvrunError(f"{path}: not an importance matrix (neither GGUF nor llama-imatrix's legacy .dat)") from None


def _load_gguf(p: Path) -> Imatrix:
    from gguf import GGUFReader

    r = GGUFReader(p)
    tensors = {t.name: np.array(t.data, np.float32) for t in r.tensors}

    def field_val(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    im = Imatrix(datasets=list(field_val("imatrix.datasets") or []), chunk_count=int(field_val("imatrix.chunk_count") or 0),
                 chunk_size=int(field_val("imatrix.chunk_size") or 0))  # fmt: skip
    for tname, data in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        counts = tensors.get(f"{name}.counts")
        if counts is None:
            raise KvrunError(f"{p}: {tname} has no {name}.counts: not a complete imatrix file")
        counts = counts.reshape(-1)
        im.sums[name] = data.reshape(counts.size, -1)
        im.counts[name] = counts
    if not im.sums:
        raise KvrunError(f"{p}: a GGUF without importance data (no *.in_sum2 tensors): not an imatrix file")
    return im


def _load_legacy(p: Path) -> Imatrix:
    """llama-imatrix's old binary: n_entries, then per entry (name, ncall, values = mean * ncall), then the chunk
    count and the dataset's name.  Means become sums over ``ncall`` counts."""
    buf = p.read_bytes()
    at = 0

    def i32() -> int:
        nonlocal at
        (v,) = struct.unpack_from("<i", buf, at)
        at += 4
        return v

    im = Imatrix()
    n = i32()
    if not 0 < n < 1 << 20:
        raise ValueError("entry count")
    for _ in range(n):
        ln = i32()
        name = buf[at : at + ln].decode()
        at += ln
        ncall, nval = i32(), i32()
        if nval <= 0 or at + 4 * nval > len(buf):
            raise ValueError("values")
        vals = np.frombuffer(buf, np.float32, nval, at).copy()
        at += 4 * nval
        im.sums[name] = vals.reshape(1, -1)  # (values / ncall is the mean: keep sums = values, counts = ncall;
        im.counts[name] = np.array([ncall if ncall > 0 else 1], np.float32)  # llama.cpp divides only by ncall > 0)
    if at + 4 <= len(buf):
        im.chunk_count = i32()
        if at + 4 <= len(buf):
            ln = i32()
            im.datasets = [buf[at : at + ln].decode(errors="replace")]
    return im


# ------------------------------------------------------------------------------------------------- collection
class _Collector:
    """Wraps a CPU backend's ``linear``: each product of a ``blk.*`` weight over several tokens adds the squares
    of its input's columns to that weight's sums (float64) and the tokens to its count."""

    #: llama-imatrix skips products of fewer tokens than this (src1->ne[1] < 16)
    MIN_TOKENS = 16

    def __init__(self, backend, names_by_ptr: dict[int, str]) -> None:
        self.names = names_by_ptr
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.inner = backend.linear
        backend.linear = self.linear  # (an instance attribute: linear_many / _add / _glu call self.linear)

    def linear(self, w, x, out) -> None:
        name = self.names.get(_ptr(w.data))
        if name is not None and x.shape[0] >= self.MIN_TOKENS:
            x64 = np.asarray(x, np.float64)
            s = self.sums.get(name)
            if s is None:
                s = self.sums[name] = np.zeros(x.shape[1], np.float64)
            s += np.einsum("tj,tj->j", x64, x64)
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        self.inner(w, x, out)


def _ptr(a) -> int:
    try:
        return int(a.__array_interface__["data"][0])
    except AttributeError:
        return -1


def collect_imatrix(
    model_path: str | os.PathLike,
    text: str,
    n_ctx: int = 512,
    n_chunks: int = 0,
    dataset: str = "",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """llama-imatrix over ``text``: ``n_chunks`` (0: all) chunks of ``n_ctx`` tokens through ``model_path`` on the
    CPU; the sums and counts of every ``blk.*`` product.  ``progress(done, total)`` after each chunk."""
    from .engine import Engine
    from .perplexity import text_window

    eng = Engine(model_path, device="cpu", n_ctx=n_ctx, n_batch=n_ctx, threads=threads)
    names = {_ptr(t.data): name for name, t in eng.gguf.tensors.items() if name.startswith("blk.") and len(t.shape) >= 2}
    col = _Collector(eng.backend, names)
    tokens = np.asarray(eng.tokenizer.encode(text, parse_special=False), np.int64)
    total = len(tokens) // n_ctx
    if n_chunks:
        total = min(total, n_chunks)
    if total < 1:
        raise KvrunError(f"the text has {len(tokens)} tokens; an imatrix at --ctx {n_ctx} needs at least {n_ctx} "
                         "(use a longer text or a smaller --ctx)")  # fmt: skip
    for c in range(total):
        window = text_window(tokens, c, n_ctx, eng.tokenizer)
        eng.eval(eng.new_cache(), window, logits_all=True, logits_start=0)
        if progress:
            progress(c + 1, total)
    if not col.sums:
        raise KvrunError(f"{model_path}: no blk.* products were seen (a model kvrun runs through other kernels: "
                         "mixture-of-experts or GPU-only); no importance matrix")  # fmt: skip
    im = Imatrix(datasets=[dataset] if dataset else [], chunk_count=total, chunk_size=n_ctx)
    for name, s in col.sums.items():
        im.sums[name] = s.astype(np.float32).reshape(1, -1)
        im.counts[name] = np.array([col.counts[name]], np.float32)
    return im
