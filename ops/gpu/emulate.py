"""Run kvrun's CUDA kernels on the CPU, for tests on machines without a GPU.

Each ``.cu`` file is compiled by the host C++ compiler after the prelude
``emulate.h`` (threads as fibers, barriers and shuffles emulated; see there),
with one exported launcher per kernel of :data:`kernels.KERNELS`.
:class:`EmulatedRuntime` then stands in for CuPy: arrays are numpy arrays and
``launch`` runs the kernel on the emulator, so ``GPUBackend`` and the GPU
cache run unchanged, kernels included, and can be compared with the CPU
backend.  It is slow (one OS thread) and knows nothing of timing: it checks
the kernels' arithmetic, indexing and synchronisation, not their speed.

The built libraries are cached under ``$KVRUN_EMU_CACHE`` (default
``~/.cache/kvrun/gpu-emu``), keyed by the hash of their source.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .kernels import KERNEL_DIR, KERNELS, source

_CTYPE = {"p": ("void*", ctypes.c_void_p), "i": ("int", ctypes.c_int), "l": ("long long", ctypes.c_longlong), "f": ("float", ctypes.c_float)}
_DYN_SHARED = re.compile(r"extern\s+__shared__\s+float\s+(\w+)\s*\[\s*\]\s*;")
CXX_FLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-w")


class EmulatorUnavailable(RuntimeError):
    """No host C++ compiler to build the emulator with."""


class EmulatedKernelError(RuntimeError):
    """A kernel did something the emulator caught (a misaligned load, a barrier hang)."""


def compiler() -> str | None:
    for cxx in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


def available() -> bool:
    return compiler() is not None


def emulator_source(file: str) -> str:
    """Host C++ text of one .cu file: prelude, kernels, and a launcher per kernel."""
    body = _DYN_SHARED.sub(lambda m: f"float* {m.group(1)} = (float*)emu_dyn_smem;", source(file))
    out = [(KERNEL_DIR / "emulate.h").read_text(), body]
    for name, k in KERNELS.items():
        if k.file != file:
            continue
        params = ", ".join(f"{_CTYPE[c][0]} a{i}" for i, c in enumerate(k.args))
        call = ", ".join(f"EmuPtr{{a{i}}}" if c == "p" else f"a{i}" for i, c in enumerate(k.args))
        out.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, '
            f"unsigned long long smem, {params}) {{\n"
            f"    emu_launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, (size_t)smem, [&] {{ {name}({call}); }});\n}}"
        )
    return "\n".join(out) + "\n"


def _cache_dir() -> Path:
    d = os.environ.get("KVRUN_EMU_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "kvrun" / "gpu-emu"


@functools.lru_cache(maxsize=None)
def library(file: str) -> ctypes.CDLL:
    """The emulator build of one .cu file (compiled on first use, then cached on disk)."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorUnavailable("no host C++ compiler (g++/clang++) to build the GPU kernel emulator")
    src = emulator_source(file)
    key = hashlib.sha256((src + " ".join(CXX_FLAGS) + cxx).encode()).hexdigest()[:16]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"{Path(file).stem}-{key}.so"
    if not so.exists():
        with tempfile.TemporaryDirectory() as d:
            cpp = Path(d) / (Path(file).stem + ".cpp")
            cpp.write_text(src)
            tmp = Path(d) / "lib.so"
            r = subprocess.run([cxx, *CXX_FLAGS, str(cpp), "-o", str(tmp)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"emulator build of {file} failed:\n{r.stdout}{r.stderr}")
            part = so.with_suffix(f".{os.getpid()}.tmp")  # (one a process: parallel builds never write one file)
            shutil.move(str(tmp), str(part))
            os.replace(part, so)  # atomic: parallel test runs never load half a file
    lib = ctypes.CDLL(str(so))
    lib.emu_take_error.restype = ctypes.c_char_p
    return lib


@functools.lru_cache(maxsize=None)
def _launcher(name: str) -> Any:
    k = KERNELS[name]
    fn = getattr(library(k.file), f"emu_{name}")
    fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_ulonglong] + [_CTYPE[c][1] for c in k.args]
    fn.restype = None
    return fn


def _dim3(d: tuple[int, ...]) -> list[int]:
    return [int(v) for v in d] + [1] * (3 - len(d))


class EmulatedRuntime:
    """Stands in for CuPy in ``kernels``: numpy arrays, kernels run on the emulator."""

    name = "emulated"
    xp = np
    # numpy's own operations run when called, so a capture cannot record them: graphs take only steps whose
    # device work is all kernels here (CuPy records its array operations in a capture as kernels; so does
    # the strict stand-in of the tests)
    records_xp = False
    _recording: list | None = None  # launches being captured (see capture)

    def capture(self, step: Any) -> "EmulatedGraph":
        """CUDA graph capture, emulated: ``step()``'s launches are recorded, not run, with
        their arguments as they are now; ``launch()`` replays them.  Like a CUDA graph,
        a replay sees the arrays' current contents but the scalars of the capture."""
        rec: list = []
        self._recording = rec
        try:
            step()
        finally:
            self._recording = None
        return EmulatedGraph(self, rec)

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int) -> None:
        if self._recording is not None:
            self._recording.append((name, grid, block, args, shared_mem))
            return
        if int(np.prod(block)) > 1024:
            raise ValueError(f"{name}: {int(np.prod(block))} threads per block exceed CUDA's 1024")
        if shared_mem > 48 * 1024:
            raise ValueError(f"{name}: {shared_mem} bytes of dynamic shared memory exceed the 48 KiB default")
        conv = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
        _launcher(name)(*_dim3(grid), *_dim3(block), int(shared_mem), *conv)
        err = library(KERNELS[name].file).emu_take_error()
        if err:
            raise EmulatedKernelError(f"{name}: {err.decode()}")

    def asnumpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def synchronize(self) -> None:
        pass


class EmulatedGraph:
    """Recorded launches (:meth:`EmulatedRuntime.capture`), replayed in order by ``launch``; an entry
    may also be a callable (an array operation a runtime with ``records_xp`` recorded)."""

    def __init__(self, rt: EmulatedRuntime, launches: list) -> None:
        self.rt, self.launches = rt, launches

    def launch(self) -> None:
        for entry in self.launches:
            if callable(entry):
                entry()
            else:
                self.rt.launch(*entry)
