"""A fast, memory-mapped GGUF reader.

``gguf.GGUFReader`` builds a numpy object per array item, which takes ~5 s for
SmolLM2's 49k-token vocabulary and ~27 s for Gemma 3's 262k one.  This reader
walks the header once over the memory map: numeric arrays become zero-copy numpy
views, string arrays are indexed in one tight loop and decoded only on access,
and tensor data is exposed as uint8 views of the map — weights are never copied or dequantized here.

Layout (GGUF v2/v3, little endian)::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv    x (key: str, value_type: u32, value)
    n_tensors x (name: str, n_dims: u32, ne: u64[n_dims], ggml_type: u32, offset: u64)
    padding to general.alignment (default 32)
    tensor data, each tensor at data_start + offset

where ``str`` is (length u64, utf-8 bytes) and an array value is
(item_type u32, count u64, items).  ``ne[0]`` is the contiguous dimension, so
the numpy shape is ``ne`` reversed.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import GGUFError
from .strings import StringArray

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types -> numpy dtype (None: special handling)
_SCALAR_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<u1"),  # UINT8
    1: np.dtype("<i1"),  # INT8
    2: np.dtype("<u2"),  # UINT16
    3: np.dtype("<i2"),  # INT16
    4: np.dtype("<u4"),  # UINT32
    5: np.dtype("<i4"),  # INT32
    6: np.dtype("<f4"),  # FLOAT32
    7: np.dtype("<u1"),  # BOOL
    10: np.dtype("<u8"),  # UINT64
    11: np.dtype("<i8"),  # INT64
    12: np.dtype("<f8"),  # FLOAT64
}
_T_BOOL, _T_STRING, _T_ARRAY = 7, 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file, its bytes left in place.

    Attributes
    ----------
    name : GGUF tensor name, e.g. ``blk.3.attn_q.weight``.
    qtype : ggml type id (``gguf.GGMLQuantizationType``).
    shape : logical numpy shape, last dimension contiguous (ggml ``ne`` reversed).
    data : uint8 view of the raw blocks in the memory map, ``[n_bytes]``.
    """

    name: str
    qtype: int
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.qtype).name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return int(self.data.nbytes)

    def rows(self) -> np.ndarray:
        """The raw blocks as ``[n_rows, row_bytes]`` uint8 (zero-copy)."""
        n_rows = self.n_elements // self.shape[-1]
        return self.data.reshape(n_rows, -1)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped header."""

    def __init__(self, mm: mmap.mmap, buf: memoryview, arr: np.ndarray, path: str) -> None:
        self.mm = mm
        self.buf = buf
        self.arr = arr
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"{self.path}: truncated GGUF header at byte {self.pos} of {self.size}; "
                "the download is incomplete, fetch the file again"
            )

    def u32(self) -> int:
        self.need(4)
        v = int.from_bytes(self.buf[self.pos : self.pos + 4], "little")
        self.pos += 4
        return v

    def u64(self) -> int:
        self.need(8)
        v = int.from_bytes(self.buf[self.pos : self.pos + 8], "little")
        self.pos += 8
        return v

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def scalar(self, vtype: int) -> Any:
        if vtype == _T_STRING:
            return self.string()
        dt = _SCALAR_DTYPES.get(vtype)
        if dt is None:
            raise GGUFError(f"{self.path}: unknown GGUF metadata value type {vtype}; the file is corrupt")
        self.need(dt.itemsize)
        v = self.arr[self.pos : self.pos + dt.itemsize].view(dt)[0]
        self.pos += dt.itemsize
        return bool(v) if vtype == _T_BOOL else v.item()

    def array(self) -> Any:
        itype = self.u32()
        count = self.u64()
        if itype == _T_STRING:
            return self._string_array(count)
        if itype == _T_ARRAY:
            return [self.array() for _ in range(count)]
        dt = _SCALAR_DTYPES.get(itype)
        if dt is None:
            raise GGUFError(f"{self.path}: unknown GGUF array item type {itype}; the file is corrupt")
        nbytes = count * dt.itemsize
        self.need(nbytes)
        v = self.arr[self.pos : self.pos + nbytes].view(dt)
        self.pos += nbytes
        return v.astype(bool) if itype == _T_BOOL else v

    def _string_array(self, count: int) -> StringArray:
        # The hot loop of start-up (262k strings for Gemma 3): lengths only, the
        # bytes stay in the map until a string is asked for (loaders/strings.py).
        if count * 8 > self.size - self.pos:
            self.need(count * 8)
        try:
            out, self.pos = StringArray.parse_gguf(self.mm, self.pos, count)
        except EOFError as e:
            self.pos = e.args[0]
            self.need(self.size)  # raises the truncation error at that offset
            raise
        return out

    def value(self, vtype: int) -> Any:
        if vtype == _T_ARRAY:
            return self.array()
        return self.scalar(vtype)


class GGUFFile:
    """A GGUF model file, memory-mapped.

    Parameters
    ----------
    path : path of the ``.gguf`` file.

    Attributes
    ----------
    metadata : key -> value; scalars as Python values, string arrays as
        :class:`~.strings.StringArray` (a sequence of str decoded on access),
        numeric arrays as 1-D numpy views.
    tensors : name -> :class:`TensorInfo`, in file order.
    version, file_size, alignment, data_offset.

    Raises
    ------
    GGUFError : missing, foreign, truncated or corrupt file, or a tensor of a
        ggml type this version of ``gguf`` does not know.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise GGUFError(f"{self.path}: no such file; give the path of a .gguf model or a known name (kvrun models)")
        if p.is_dir():
            raise GGUFError(f"{self.path}: is a directory, not a .gguf file")
        self.file_size = p.stat().st_size
        if self.file_size < 24:
            raise GGUFError(f"{self.path}: file is {self.file_size} bytes, too short to be a GGUF model")
        with open(p, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        arr = np.frombuffer(self._mmap, dtype=np.uint8)
        self._arr = arr
        buf = memoryview(self._mmap)
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r}); kvrun reads .gguf models only")
        cur = _Cursor(self._mmap, buf, arr, self.path)
        cur.pos = 4
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are); re-convert the model")
        n_tensors = cur.u64()
        n_kv = cur.u64()
        if n_tensors > self.file_size or n_kv > self.file_size:
            raise GGUFError(f"{self.path}: corrupt GGUF header (tensor or key count out of range)")

        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.u32()
            self.metadata[key] = cur.value(vtype)
            self.value_types[key] = vtype

        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if n_dims > 8:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions; the file is corrupt")
            ne = [cur.u64() for _ in range(n_dims)]
            qtype = cur.u32()
            offset = cur.u64()
            infos.append((name, ne, qtype, offset))

        self.alignment = int(self.metadata.get("general.alignment", 32))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise GGUFError(f"{self.path}: general.alignment {self.alignment} is not a power of two")
        self.data_offset = (cur.pos + self.alignment - 1) // self.alignment * self.alignment

        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, qtype, offset in infos:
            try:
                gtype = GGMLQuantizationType(qtype)
            except ValueError:
                raise GGUFError(
                    f"{self.path}: tensor {name!r} has unknown ggml type {qtype}; "
                    "this file needs a newer runtime"
                ) from None
            block, type_size = GGML_QUANT_SIZES[gtype]
            n_el = int(np.prod(ne, dtype=np.int64)) if ne else 1
            if ne and ne[0] % block:
                raise GGUFError(f"{self.path}: tensor {name!r} row of {ne[0]} is not a multiple of {gtype.name} blocks")
            n_bytes = n_el // block * type_size
            start = self.data_offset + offset
            if start + n_bytes > self.file_size:
                raise GGUFError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {start + n_bytes} "
                    f"but the file has {self.file_size}; the download is incomplete, fetch the file again"
                )
            shape = tuple(int(d) for d in reversed(ne)) if ne else (1,)
            self.tensors[name] = TensorInfo(name, int(qtype), shape, arr[start : start + n_bytes])

    # ------------------------------------------------------------------ helpers
    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: no general.architecture in metadata; not a model file")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, key: str, default: Any = None) -> Any:
        """Metadata ``{architecture}.{key}``, e.g. ``arch_get("block_count")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing; the file is incomplete or not a supported model") from None

    def close(self) -> None:
        self.tensors = {}
        self._arr = None  # type: ignore[assignment]
        try:
            self._mmap.close()
        except BufferError:
            pass  # views still alive elsewhere; the map is freed with them

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
