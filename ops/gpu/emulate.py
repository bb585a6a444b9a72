"""Run kvrun's CUDA kernels on the CPU, for tests on machines without a GPU.

Each ``.cu`` file is compiled by the host C++ compiler after the prelude
``emulate.h`` (threads as fibers, barriers and shuffles emulated; see there),
with one exported launcher per kernel of :data:`kernels.KERNELS`.
:class:`EmulatedRuntime` then stands in for CuPy: arrays are numpy arrays and
``launch`` runs the kernel on the emulator, so ``GPUBackend`` and the GPU
cache run unchanged, kernels included, and can be compared with the CPU
backend.  It is slow (one OS thread) and knows nothing of timing: it checks
the kernels' arithmetic, indexing and synchronisation, not their speed.

Each launch is first held to an H100's limits (resources.py: block and grid
sizes, the registers and shared memory ptxas reports for the kernel), so a
launch the device would refuse fails here too.  The built libraries are cached
under ``$KVRUN_EMU_CACHE`` (default ``~/.cache/kvrun/gpu-emu``), keyed by the
hash of their source.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import mmap
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import resources
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


# A static __shared__ declaration (the dynamic ones are rewritten first): `__shared__ float red[WARP];`, `__shared__ int last;`
_STATIC_SHARED = re.compile(r"(__shared__\s+[\w:]+\s+(\w+)(?:\s*\[[^\];]*\])*\s*;)")


def emulator_text(body: str, kernels: dict[str, str]) -> str:
    """Host C++ text of a kernel source: the prelude, the kernels (shared memory rewritten: a block's static arrays
    poisoned as it starts, the dynamic one a per-launch buffer) and a launcher per kernel (``kernels``: name ->
    argument codes)."""
    body = _DYN_SHARED.sub(lambda m: f"float* {m.group(1)} = (float*)emu_dyn_smem;", body)
    body = _STATIC_SHARED.sub(lambda m: f"{m.group(1)} EMU_POISON({m.group(2)});", body)
    out = [(KERNEL_DIR / "emulate.h").read_text(), body]
    for name, args in kernels.items():
        params = ", ".join(f"{_CTYPE[c][0]} a{i}" for i, c in enumerate(args))
        call = ", ".join(f"EmuPtr{{a{i}}}" if c == "p" else f"a{i}" for i, c in enumerate(args))
        out.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, '
            f"unsigned long long smem, {params}) {{\n"
            f"    emu_launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, (size_t)smem, [&] {{ {name}({call}); }});\n}}"
        )
    return "\n".join(out) + "\n"


def emulator_source(file: str) -> str:
    """Host C++ text of one .cu file of ``kernels.KERNELS``."""
    return emulator_text(source(file), {name: k.args for name, k in KERNELS.items() if k.file == file})


@functools.lru_cache(maxsize=None)
def build(text: str, stem: str = "kernels") -> ctypes.CDLL:
    """The host library of an emulator text (compiled on first use, then cached on disk by its hash)."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorUnavailable("no host C++ compiler (g++/clang++) to build the GPU kernel emulator")
    key = hashlib.sha256((text + " ".join(CXX_FLAGS) + cxx).encode()).hexdigest()[:16]
    cache = resources.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"{stem}-{key}.so"
    if not so.exists():
        with tempfile.TemporaryDirectory() as d:
            cpp = Path(d) / (stem + ".cpp")
            cpp.write_text(text)
            tmp = Path(d) / "lib.so"
            r = subprocess.run([cxx, *CXX_FLAGS, str(cpp), "-o", str(tmp)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"emulator build of {stem} failed:\n{r.stdout}{r.stderr}")
            part = so.with_suffix(f".{os.getpid()}.tmp")  # (one a process: parallel builds never write one file)
            shutil.move(str(tmp), str(part))
            os.replace(part, so)  # atomic: parallel test runs never load half a file
    lib = ctypes.CDLL(str(so))
    lib.emu_take_error.restype = ctypes.c_char_p
    lib.emu_set_order.argtypes = [ctypes.c_int]
    lib.emu_set_guard.argtypes = [ctypes.c_int]
    return lib


def library(file: str) -> ctypes.CDLL:
    """The emulator build of one .cu file."""
    return build(emulator_source(file), Path(file).stem)


def launcher(lib: ctypes.CDLL, name: str, args: str) -> Any:
    """Kernel ``name``'s launcher in ``lib``, typed for its argument codes."""
    fn = getattr(lib, f"emu_{name}")
    fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_ulonglong] + [_CTYPE[c][1] for c in args]
    fn.restype = None
    return fn


@functools.lru_cache(maxsize=None)
def _launcher(name: str) -> Any:
    k = KERNELS[name]
    return launcher(library(k.file), name, k.args)


#: The order a launch's blocks run in, and a block's threads between two barriers: "forward" (block 0 and thread 0
#: first) or "reverse" (last to first).  A kernel whose threads read what another writes without a barrier between, or
#: whose blocks read what another block of the launch writes, gives other numbers in the other order (a GPU's order is
#: neither), so a test run in both orders (KVRUN_EMU_ORDER=reverse) shows the race.
ORDERS = {"forward": 0, "reverse": 1}


def run(lib: ctypes.CDLL, fn: Any, grid: tuple[int, ...], block: tuple[int, ...], args: tuple | list, shared_mem: int,
        order: str = "forward", guard: bool = False) -> None:  # fmt: skip
    """Run one launch of ``fn`` (:func:`launcher`) on ``args`` (numpy arrays and scalars) with a block's threads in
    ``order`` and, with ``guard``, the arrays against unmapped pages (:class:`_Guarded`); what the emulator caught
    becomes :class:`EmulatedKernelError`."""
    guarded = _Guarded() if guard else None
    conv = [(guarded.pointer(a) if guarded else a.ctypes.data) if isinstance(a, np.ndarray) else getattr(a, "item", lambda: a)()
            for a in args]  # fmt: skip
    try:
        lib.emu_set_order(ORDERS[order])
        lib.emu_set_guard(int(guard))
        fn(*_dim3(grid), *_dim3(block), int(shared_mem), *conv)
        err = lib.emu_take_error()
    finally:
        problem = guarded.finish() if guarded else None
    if err:
        raise EmulatedKernelError(err.decode())
    if problem:
        raise EmulatedKernelError(problem)


class _Guarded:
    """One launch's argument arrays in guard mode: each array's whole buffer (its base's) copied in so that its end
    meets an unmapped page, a 64-byte NaN-filled canary before it and the few bytes its size leaves before the page
    NaN-filled too.  A kernel reading or writing past the end faults (emulate.h's emu_on_fault names it), one reading
    the canaries reads NaN, one writing them is named by :meth:`finish`, which copies the buffers back."""

    FRONT = 64

    def __init__(self) -> None:
        self.maps: dict[int, tuple[np.ndarray, int, int, int, int]] = {}  # id(base): (base, map, size, start, nbytes)

    def pointer(self, a: np.ndarray) -> int:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if not (base.flags.c_contiguous or base.flags.f_contiguous):
            return a.ctypes.data  # (a base of strides: no one extent to guard)
        m = self.maps.get(id(base))
        if m is None:
            nbytes = base.nbytes
            size = (-(-(self.FRONT + nbytes + 16) // mmap.PAGESIZE) + 1) * mmap.PAGESIZE
            addr = _libc().mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise MemoryError("guard mode: mmap failed")
            guard = addr + size - mmap.PAGESIZE
            ctypes.memset(addr, 0xFF, size - mmap.PAGESIZE)
            _libc().mprotect(guard, mmap.PAGESIZE, 0)  # (PROT_NONE)
            start = guard - nbytes
            start -= (start - base.ctypes.data) % 16  # (the base's address modulo 16, so every view keeps its alignment)
            ctypes.memmove(start, base.ctypes.data, nbytes)
            m = self.maps[id(base)] = (base, addr, size, start, nbytes)
        return m[3] + (a.ctypes.data - m[0].ctypes.data)

    def finish(self) -> str | None:
        """Copy the buffers back and unmap them; what a kernel wrote outside its arrays, or None."""
        problem = None
        for base, addr, size, start, nbytes in self.maps.values():
            front = ctypes.string_at(start - self.FRONT, self.FRONT)
            tail = ctypes.string_at(start + nbytes, addr + size - mmap.PAGESIZE - start - nbytes)
            if problem is None and (front.count(0xFF) != len(front) or tail.count(0xFF) != len(tail)):
                where = "before the start" if front.count(0xFF) != len(front) else "past the end"
                problem = f"a write {where} of an argument array (shape {base.shape}, {base.dtype})"
            if base.flags.writeable:
                ctypes.memmove(base.ctypes.data, start, nbytes)
            _libc().munmap(addr, size)
        self.maps.clear()
        return problem


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


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

    def __init__(self, order: str | None = None, guard: bool | None = None) -> None:
        """``order``: a block's threads' order (:data:`ORDERS`; default ``$KVRUN_EMU_ORDER`` or forward).  ``guard``
        (default ``$KVRUN_EMU_GUARD=1``): each launch's arrays against unmapped pages (:class:`_Guarded`; x86-64 Linux),
        so that a read or write past an array's end fails the launch, as it may fault on a GPU.  Slower: a debug mode."""
        self.order = order or os.environ.get("KVRUN_EMU_ORDER", "forward")
        if self.order not in ORDERS:
            raise ValueError(f"KVRUN_EMU_ORDER={self.order!r}: use one of {', '.join(ORDERS)}")
        self.guard = bool(int(os.environ.get("KVRUN_EMU_GUARD", "0") or 0)) if guard is None else guard
        if self.guard and (platform.machine() != "x86_64" or platform.system() != "Linux"):
            raise ValueError("KVRUN_EMU_GUARD=1 runs on x86-64 Linux only: unset it here")

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
        problem = resources.launch_problem(name, grid, block, int(shared_mem), resources.usage(name))
        if problem:  # (what an H100 would refuse to launch, the emulator refuses too)
            raise EmulatedKernelError(problem)
        try:
            run(library(KERNELS[name].file), _launcher(name), grid, block, args, shared_mem, self.order, self.guard)
        except EmulatedKernelError as e:
            raise EmulatedKernelError(f"{name}: {e}") from None
        LAUNCHED.add(name)

    def asnumpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def synchronize(self) -> None:
        pass


#: The kernels this process ran on the emulator; with ``$KVRUN_EMU_COVERAGE`` (a file) their names are added to it at
#: exit, one a line, so a run of the emulated tests says which kernels no test runs (untried device code).
LAUNCHED: set[str] = set()


@atexit.register
def _write_coverage() -> None:
    path = os.environ.get("KVRUN_EMU_COVERAGE")
    if path and LAUNCHED:
        with open(path, "a") as f:  # (several processes may add to one file)
            f.write("".join(f"{n}\n" for n in sorted(LAUNCHED)))


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
