"""Compile every CUDA source to PTX without a GPU (what CI runs).

CuPy's ``RawModule`` asks the driver for the device's architecture before it
compiles, so it fails on a machine without a GPU.  This module calls NVRTC
directly instead, through ``cupy_backends.cuda.libs.nvrtc`` (CuPy plus the
``nvidia-cuda-nvrtc-cu12`` wheel, no driver needed), and falls back to
``nvcc -ptx`` when that is missing but a CUDA toolkit is on PATH.  With
neither, :func:`compile_all` raises :class:`CompileSkipped`.

The sources compiled are exactly what the backend loads (``kernels.source``:
headers inlined).  :func:`check_signatures` then holds the argument table the
Python wrappers launch with (``kernels.KERNELS``) to the parameter lists in
the PTX.

    python -m kvrun.ops.gpu.compile_check [sm_90]
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .kernels import KERNELS, compile_options, cu_files, source


class CompileError(RuntimeError):
    """A source failed to compile; ``log`` holds the compiler's messages."""

    def __init__(self, name: str, log: str) -> None:
        super().__init__(f"{name} failed to compile:\n{log}")
        self.log = log


class CompileSkipped(RuntimeError):
    """Neither NVRTC nor nvcc is available here."""


# ----------------------------------------------------------------- NVRTC
_nvrtc_mod = None
_nvrtc_err: str | None = None


def _preload_wheel_nvrtc() -> None:
    """Load ``libnvrtc.so.12`` from the nvidia-cuda-nvrtc-cu12 wheel, if installed.

    CuPy >= 14 finds it by itself (cuda-pathfinder); older CuPy only searches
    the system library path, where a pip-only setup has nothing.  Loading it
    RTLD_GLOBAL first makes the later dlopen by soname resolve to it.
    """
    for base in map(Path, sys.path):
        lib_dir = base / "nvidia" / "cuda_nvrtc" / "lib"
        for name in ("libnvrtc.so.12", "libnvrtc.so"):
            if (lib_dir / name).is_file():
                try:
                    ctypes.CDLL(str(lib_dir / name), mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue
                return


def _nvrtc():
    """The NVRTC binding, or None (the reason is kept in ``_nvrtc_err``)."""
    global _nvrtc_mod, _nvrtc_err
    if _nvrtc_mod is not None or _nvrtc_err is not None:
        return _nvrtc_mod
    try:
        _preload_wheel_nvrtc()
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()  # fails here when libnvrtc cannot be loaded
        _nvrtc_mod = nvrtc
    except Exception as e:  # ImportError, or the library missing
        _nvrtc_err = f"{type(e).__name__}: {e}"
    return _nvrtc_mod


def _compile_nvrtc(src: str, name: str, arch: str) -> str:
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        opts = [*compile_options(name), f"--gpu-architecture={arch.replace('sm_', 'compute_')}"]
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError:
            raise CompileError(name, nvrtc.getProgramLog(prog)) from None
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


# ----------------------------------------------------------------- nvcc
def _compile_nvcc(src: str, name: str, arch: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        cu = Path(d) / name
        cu.write_text(src)
        ptx = Path(d) / "out.ptx"
        r = subprocess.run(
            ["nvcc", "-ptx", f"-arch={arch}", *compile_options(name), str(cu), "-o", str(ptx)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise CompileError(name, (r.stdout + r.stderr).replace(str(cu), name))
        return ptx.read_text()


# ----------------------------------------------------------------- ptxas's report
def _report_nvrtc(src: str, name: str, arch: str) -> tuple[str, str]:
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        try:  # (a real architecture, sm_XX: NVRTC runs ptxas, and -v puts its report in the log)
            nvrtc.compileProgram(prog, [*compile_options(name), f"--gpu-architecture={arch}", "--ptxas-options=-v"])
        except nvrtc.NVRTCError:
            raise CompileError(name, nvrtc.getProgramLog(prog)) from None
        ptx, log = nvrtc.getPTX(prog), nvrtc.getProgramLog(prog)
        return (ptx.decode() if isinstance(ptx, bytes) else ptx), (log.decode() if isinstance(log, bytes) else log)
    finally:
        nvrtc.destroyProgram(prog)


def _report_nvcc(src: str, name: str, arch: str) -> tuple[str, str]:
    ptx = _compile_nvcc(src, name, arch)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "in.ptx"
        p.write_text(ptx)
        r = subprocess.run(["ptxas", f"-arch={arch}", "-v", str(p), "-o", str(Path(d) / "out.cubin")], capture_output=True, text=True)
        if r.returncode != 0:
            raise CompileError(name, r.stdout + r.stderr)
        return ptx, r.stdout + r.stderr


def ptxas_report(src: str, name: str, arch: str = "sm_90", compiler: str | None = None) -> tuple[str, str]:
    """PTX of one source and ptxas's verbose report on it compiled for ``arch`` (``sm_90``: an H100): per kernel, the
    registers, static shared memory and spills a launch will ask of the device (ops/gpu/resources.py reads it)."""
    compiler = compiler or available_compiler()
    if compiler == "nvrtc":
        return _report_nvrtc(src, name, arch)
    if compiler == "nvcc" and shutil.which("ptxas"):
        return _report_nvcc(src, name, arch)
    raise CompileSkipped(f"no CUDA compiler with ptxas: NVRTC unavailable ({_nvrtc_err}), ptxas not on PATH")


# ----------------------------------------------------------------- public API
def available_compiler() -> str:
    """``"nvrtc"``, ``"nvcc"`` or ``"skipped"``, in that order of preference.

    ``KVRUN_GPU_COMPILER=nvcc`` (or ``nvrtc``) forces one.
    """
    forced = os.environ.get("KVRUN_GPU_COMPILER")
    if forced in ("nvrtc", "nvcc"):
        return forced
    if _nvrtc() is not None:
        return "nvrtc"
    if shutil.which("nvcc"):
        return "nvcc"
    return "skipped"


def compile_source(src: str, name: str = "kernel.cu", arch: str = "sm_90", compiler: str | None = None) -> str:
    """PTX of one CUDA source text; raises :class:`CompileError` with the log."""
    return _compile_source(src, name, arch, compiler or available_compiler())


@functools.lru_cache(maxsize=64)
def _compile_source(src: str, name: str, arch: str, compiler: str) -> str:
    """:func:`compile_source`, remembered per (source text, name, arch, compiler): the CI's checks ask for
    the same sources several times (the whole set takes ~15 s a compiler), and the text decides the PTX."""
    if compiler == "nvrtc":
        return _compile_nvrtc(src, name, arch)
    if compiler == "nvcc":
        return _compile_nvcc(src, name, arch)
    raise CompileSkipped(f"no CUDA compiler: NVRTC unavailable ({_nvrtc_err}) and nvcc not on PATH")


def compile_ptx(arch: str = "sm_90", compiler: str | None = None) -> dict[str, str]:
    """PTX text of every ``ops/gpu/*.cu``, as the backend would load it.  The files compile side by side, one a core
    (nvcc runs as processes, NVRTC's compile lets go of the GIL): on 2 vCPUs 21 files took 11-14 s instead of 18-23."""
    files = cu_files()
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
        ptx = list(pool.map(lambda f: compile_source(source(f), f, arch, compiler), files))
    return dict(zip(files, ptx))


def compile_all(arch: str = "sm_90") -> dict[str, int]:
    """Compile every ``.cu`` file to PTX; ``{file: PTX bytes}``.

    Raises :class:`CompileError` on the first failure (with the compiler log)
    and :class:`CompileSkipped` when no compiler is available.
    """
    return {f: len(p) for f, p in compile_ptx(arch).items()}


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PARAM = re.compile(r"\.param\s+\.(\w+)")


def ptx_entries(ptx: str) -> dict[str, list[str]]:
    """``{kernel: [param type, ...]}`` of the entry points in a PTX text (``u64``, ``u32``, ``f32``...)."""
    return {m.group(1): _PARAM.findall(m.group(2)) for m in _ENTRY.finditer(ptx)}


_PTX_TYPE = {"p": {"u64", "b64", "s64"}, "l": {"u64", "b64", "s64"}, "i": {"u32", "b32", "s32"}, "f": {"f32", "b32"}}


def check_signatures(ptx_by_file: dict[str, str]) -> list[str]:
    """Mismatches between ``kernels.KERNELS`` and the compiled entry points (empty: all agree)."""
    problems = []
    entries = {f: ptx_entries(p) for f, p in ptx_by_file.items()}
    for name, k in KERNELS.items():
        params = entries.get(k.file, {}).get(name)
        if params is None:
            problems.append(f"{name}: no such entry point in {k.file}")
            continue
        if len(params) != len(k.args):
            problems.append(f"{name}: declared {len(k.args)} arguments, the kernel takes {len(params)}")
            continue
        for i, (code, ptype) in enumerate(zip(k.args, params)):
            if ptype not in _PTX_TYPE[code]:
                problems.append(f"{name}: argument {i} declared {code!r}, the kernel's is .{ptype}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arch = argv[0] if argv else "sm_90"
    compiler = available_compiler()
    if compiler == "skipped":
        print(f"skipped: no CUDA compiler (NVRTC: {_nvrtc_err}; nvcc not on PATH)")
        return 0
    try:
        ptx = compile_ptx(arch, compiler)
    except CompileError as e:
        print(e, file=sys.stderr)
        return 1
    for f, p in ptx.items():
        print(f"{f}: {len(p)} bytes of PTX, {len(ptx_entries(p))} kernels ({compiler}, {arch})")
    problems = check_signatures(ptx)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
