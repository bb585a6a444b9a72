"""What a kernel launch asks of the device, checked without one.

A launch that asks a streaming multiprocessor for more than it has never runs:
CUDA refuses it ("too many resources requested for launch", "invalid
argument"), and the refusal shows only on a GPU.  The kernel emulator
(emulate.py) runs any block on any host, so it holds each launch to the
device's limits here, from ptxas's own report of every kernel compiled for an
H100 (sm_90; compile_check.ptxas_report, NVRTC or nvcc, no GPU needed): the
registers a thread takes (allocated a warp at a time, in units of 256), the
static shared memory beside the launch's dynamic one (48 KiB a block unless a
kernel opts in, and none of ours does), the launch bounds a kernel declares
(``.maxntid`` in its PTX), and the block's and grid's sizes.

The reports are kept on disk beside the emulator's libraries, keyed by the
source text, so a test run compiles each file once (qmatmul.cu and kvquant.cu
take ~20 s each on two cores).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .kernels import KERNELS, compile_options, source


def cache_dir() -> Path:
    """Where the CPU-side builds of the kernels live: the emulator's libraries and these reports
    (``$KVRUN_EMU_CACHE``, default ``~/.cache/kvrun/gpu-emu``)."""
    d = os.environ.get("KVRUN_EMU_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "kvrun" / "gpu-emu"


@dataclass(frozen=True)
class Usage:
    """One kernel as ptxas compiled it."""

    registers: int  # a thread
    static_smem: int  # bytes a block, its __shared__ arrays
    spill_bytes: int  # stores to local memory (slow, not fatal)
    max_threads: int | None  # __launch_bounds__ (PTX .maxntid), or None


@dataclass(frozen=True)
class Limits:
    """A device's per-launch limits (CUDA's compute capability tables)."""

    threads: int = 1024
    block: tuple[int, int, int] = (1024, 1024, 64)
    grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    registers: int = 65536  # a block
    register_unit: int = 256  # registers are given to a warp in units of this many
    smem: int = 48 * 1024  # static + dynamic a block, without cudaFuncAttributeMaxDynamicSharedMemorySize


H100 = Limits()  # sm_90 (the opt-in shared memory, 227 KiB, is not used by kvrun's launches)


# ----------------------------------------------------------------- reading ptxas
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes spill stores")
_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(.*?\)([^{]*)\{", re.S)
_MAXNTID = re.compile(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")


def parse_report(ptx: str, log: str) -> dict[str, Usage]:
    """``{kernel: Usage}`` from a PTX text and ptxas's ``-v`` report of it."""
    bounds = {}
    for m in _PTX_ENTRY.finditer(ptx):
        b = _MAXNTID.search(m.group(2))
        if b:
            bounds[m.group(1)] = math.prod(int(v) for v in b.groups() if v)
    out: dict[str, Usage] = {}
    name, spill = None, 0
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            name, spill = m.group(1), 0
        elif name and (m := _SPILL.search(line)):
            spill = int(m.group(1))
        elif name and (m := _USED.search(line)):
            s = _SMEM.search(line)
            out[name] = Usage(int(m.group(1)), int(s.group(1)) if s else 0, spill, bounds.get(name))
            name = None
    return out


@functools.lru_cache(maxsize=None)
def file_usage(file: str, arch: str = "sm_90", compiler: str | None = None) -> dict[str, Usage]:
    """Every kernel of one .cu file as ptxas compiles it for ``arch`` (remembered on disk by source text).
    Raises compile_check.CompileSkipped where no CUDA compiler is."""
    from . import compile_check as cc

    compiler = compiler or cc.available_compiler()
    src = source(file)
    key = hashlib.sha256("\0".join((src, *compile_options(file), arch, compiler)).encode()).hexdigest()[:16]
    path = cache_dir() / f"{Path(file).stem}-{key}.usage.json"
    if path.exists():
        return {k: Usage(**v) for k, v in json.loads(path.read_text()).items()}
    found = parse_report(*cc.ptxas_report(src, file, arch, compiler))
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.tmp")
    part.write_text(json.dumps({k: asdict(u) for k, u in found.items()}))
    os.replace(part, path)
    return found


@functools.lru_cache(maxsize=None)
def usage(name: str) -> Usage | None:
    """Kernel ``name``'s report, or None where no CUDA compiler is (the launch is then checked on its sizes alone)."""
    from .compile_check import CompileSkipped

    try:
        return file_usage(KERNELS[name].file).get(name)
    except CompileSkipped:
        return None


# ----------------------------------------------------------------- the check
def launch_problem(name: str, grid: tuple[int, ...], block: tuple[int, ...], dyn_smem: int, u: Usage | None,
                   lim: Limits = H100) -> str | None:  # fmt: skip
    """Why the device would refuse this launch (one line), or None where it fits."""
    grid3 = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
    block3 = tuple(int(v) for v in block) + (1,) * (3 - len(block))
    threads = math.prod(block3)
    if min(grid3) < 1 or min(block3) < 1:
        return f"{name}: an empty launch, grid {grid3} block {block3}"
    for what, dims, most in (("block", block3, lim.block), ("grid", grid3, lim.grid)):
        for axis, n, m in zip("xyz", dims, most):
            if n > m:
                return f"{name}: {what}.{axis} = {n} exceeds the device's {m}"
    if threads > lim.threads:
        return f"{name}: {threads} threads a block exceed the device's {lim.threads}"
    static = u.static_smem if u else 0
    if static + dyn_smem > lim.smem:
        return f"{name}: {static} + {dyn_smem} bytes of shared memory a block exceed the device's {lim.smem}"
    if u is None:
        return None
    if u.max_threads is not None and threads > u.max_threads:
        return f"{name}: {threads} threads a block exceed its __launch_bounds__ of {u.max_threads}"
    most = _register_threads(u, lim)
    if threads > most:
        return (f"{name}: {threads} threads of {u.registers} registers exceed the device's {lim.registers} a block "
                f"(at most {most} threads)")  # fmt: skip
    return None


def _register_threads(u: Usage, lim: Limits) -> int:
    """The most threads a block of ``u``'s registers can have: whole warps, each given its registers in units of
    ``lim.register_unit``."""
    per_warp = -(-u.registers * 32 // lim.register_unit) * lim.register_unit
    return lim.registers // per_warp * 32


def most_threads(u: Usage, lim: Limits = H100) -> int:
    """The largest block (a multiple of 32) a kernel of ``u`` launches with: its launch bounds, the device's
    threads, and the registers its warps take."""
    most = min(lim.threads, _register_threads(u, lim))
    return min(most, u.max_threads) if u.max_threads else most


def main(argv: list[str] | None = None) -> int:
    """``python -m kvrun.ops.gpu.resources [sm_90]``: each .cu file's kernels as ptxas compiles them (the most
    registers, the largest block they allow, shared memory, spills), for a look before a GPU is at hand."""
    import sys

    from .compile_check import CompileSkipped
    from .kernels import cu_files

    argv = sys.argv[1:] if argv is None else argv
    arch = argv[0] if argv else "sm_90"
    try:
        for f in cu_files():
            us = file_usage(f, arch)
            spills = {k: u.spill_bytes for k, u in us.items() if u.spill_bytes}
            print(f"{f}: {len(us)} kernels, at most {max(u.registers for u in us.values())} registers, blocks of at most "
                  f"{min(most_threads(u) for u in us.values())} threads, {max(u.static_smem for u in us.values())} bytes of "
                  f"static shared memory" + (f"; spills (bytes): {spills}" if spills else ""))  # fmt: skip
    except CompileSkipped as e:
        print(f"skipped: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
