"""The CUDA sources compile, without a GPU, and agree with the Python launchers.

Runs everywhere CI does: NVRTC through CuPy's binding (cupy-cuda12x plus the
nvidia-cuda-nvrtc-cu12 wheel; no driver needed) and, where a CUDA toolkit is
on PATH, nvcc as well.  Skipped only when neither compiler exists.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kvrun.ops.gpu import compile_check as cc
from kvrun.ops.gpu import kernels as K

COMPILERS = [c for c in ("nvrtc", "nvcc") if (c == "nvrtc" and cc._nvrtc() is not None) or (c == "nvcc" and shutil.which("nvcc"))]
pytestmark = pytest.mark.skipif(not COMPILERS, reason="no CUDA compiler: install cupy-cuda12x and nvidia-cuda-nvrtc-cu12, or put nvcc on PATH")


@pytest.fixture(scope="module", params=COMPILERS)
def ptx(request) -> dict[str, str]:
    return cc.compile_ptx("sm_90", request.param)


def test_every_cu_file_compiles(ptx):
    files = K.cu_files()
    assert {"attention.cu", "nn.cu", "qmatmul.cu"} <= set(files)
    assert set(ptx) == set(files)
    for f, text in ptx.items():
        assert cc.ptx_entries(text), f"{f}: no kernels in the PTX"


def test_the_quantizer_rounds_as_the_cpu_does(ptx):
    """kvquant.cu picks codes (floor(x * inv + z + 0.5)) and merge targets: compiled without FMA contraction
    (kernels.FILE_OPTIONS), every product rounds on its own, as in the CPU's quantizer and the emulator."""
    assert "fma.rn.f32" not in ptx["kvquant.cu"]  # (double log/exp of KeepKV's weights keep libdevice's own fma.rn.f64)
    assert "fma.rn.f32" in ptx["qmatmul.cu"]  # (elsewhere contraction stays on: continuous results)


def test_compile_all_reports_sizes():
    sizes = cc.compile_all()
    assert set(sizes) == set(K.cu_files()) and all(n > 1000 for n in sizes.values())


def test_every_declared_kernel_exists_with_its_argument_types(ptx):
    assert cc.check_signatures(ptx) == []


def test_every_kernel_is_declared(ptx):
    """A kernel nobody can launch is dead code or a missing table entry."""
    compiled = {name for text in ptx.values() for name in cc.ptx_entries(text)}
    assert compiled == set(K.KERNELS)


def test_a_quant_type_has_all_four_kernels():
    for sfx in K.QTYPE_SUFFIX.values():
        for kind in ("matvec", "matvec3", "matmul", "get_rows"):
            assert f"{kind}_{sfx}" in K.KERNELS


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize(
    "bad, needle",
    [
        ("float* broken = 1.0f;", "broken"),  # type error
        ("int broken = ;", "expected"),  # syntax error
    ],
    ids=["type-error", "syntax-error"],
)
def test_broken_source_fails_with_the_compiler_log(compiler, bad, needle):
    src = K.source("nn.cu").replace("extern \"C\" __global__ void add_f32(", f"__device__ void f() {{ {bad} }}\nextern \"C\" __global__ void add_f32(", 1)
    assert bad in src
    with pytest.raises(cc.CompileError) as e:
        cc.compile_source(src, "nn.cu", "sm_90", compiler)
    assert "error" in e.value.log and needle in e.value.log
    assert "nn.cu" in e.value.log  # #line directives point at the file the mistake is in
    assert e.value.log in str(e.value)


def test_a_mismatched_launcher_is_caught(ptx, monkeypatch):
    monkeypatch.setitem(K.KERNELS, "add_f32", K.Kernel("nn.cu", "ppi"))  # n is int64 in the kernel
    assert cc.check_signatures(ptx) == ["add_f32: argument 2 declared 'i', the kernel's is .u64"]


def test_headers_are_inlined_once_with_line_directives():
    src = K.source("qmatmul.cu")
    assert not any(line.lstrip().startswith("#include") for line in src.splitlines())
    assert src.count('#line 1 "common.cuh"') == 1 and src.count('#line 1 "quants.cuh"') == 1


def test_the_gpu_package_imports_without_cupy():
    """The CPU path must never need CuPy: importing the GPU modules loads none of it."""
    code = (
        "import sys, kvrun.ops, kvrun.ops.gpu, kvrun.ops.gpu.backend, kvrun.ops.gpu.compile_check, kvrun.cache.gpu_plain; "
        "kvrun.ops.get_backend('cpu'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends')]; "
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_device_gpu_without_a_gpu_says_what_to_do():
    from kvrun.ops import get_backend, gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=r"^--device gpu needs CuPy and an NVIDIA GPU; install kvrun\[gpu\] or use --device cpu$"):
        get_backend("gpu")


def test_cli_entry_point(capsys):
    """``python -m kvrun.ops.gpu.compile_check`` (its ``main``, in process: the compiles already made
    for the tests above are remembered, where a subprocess would make them all again)."""
    assert cc.main([]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    n = sum(k.file == "qmatmul.cu" for k in K.KERNELS.values())  # four per quant type
    assert n == 4 * len(K.QTYPE_SUFFIX) and "qmatmul.cu: " in out and f"{n} kernels" in out


def test_every_array_function_the_gpu_path_calls_exists_in_cupy():
    """The GPU path calls ``xp.<name>`` with xp = cupy; the emulator's xp is numpy, so a numpy-only name
    (one CuPy lacks) would pass every emulated test and fail on the first real GPU.  The CUDA runtime's own calls
    (``cp.cuda.*``: streams, graph capture, memory pools) run on a GPU only, so they are held to CuPy's names too."""
    import re
    from pathlib import Path

    cupy = pytest.importorskip("cupy")
    root = Path(K.__file__).resolve().parents[2]  # the package root
    used: dict[str, str] = {}
    for sub in ("cache", "ops", "models", "runtime"):
        for path in (root / sub).rglob("*.py"):
            for m in re.finditer(r"\b(?:_?xp|cp|cupy)\.([A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*)", path.read_text()):
                used.setdefault(m.group(1), f"{path.relative_to(root)}")
    assert {"empty", "matmul", "argpartition", "cuda.Stream.null", "cuda.using_allocator"} <= set(used)  # (the scan sees the code)

    def missing(name: str) -> bool:
        obj = cupy
        for part in name.split("."):
            if not hasattr(obj, part):
                return True
            obj = getattr(obj, part)
        return False

    assert not {n: f for n, f in used.items() if missing(n)}
