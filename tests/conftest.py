"""Shared fixtures: the real models (pulled through kvrun's own store) and tiny GGUFs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# helpers (tinymodel, reference) import by plain name
sys.path.insert(0, str(Path(__file__).parent))


def _real_model(name: str) -> Path:
    from kvrun.loaders.errors import KvrunError
    from kvrun.loaders.store import known, local_path, pull

    m = known(name)
    p = local_path(m)
    if p.exists():
        return p
    if os.environ.get("KVRUN_NO_PULL"):
        pytest.skip(f"{name} not pulled and KVRUN_NO_PULL is set")
    try:
        return pull(name)
    except KvrunError as e:  # no registry reachable
        pytest.skip(f"cannot pull {name}: {e}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _real_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _real_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> Path:
    """A tiny llama-architecture GGUF (tinymodel.py), written once a session, for tests that only run it."""
    from tinymodel import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "tiny.gguf", "llama")


@pytest.fixture
def gpu_env(monkeypatch):
    """``--device gpu`` on the kernel emulator (KVRUN_GPU_EMULATE=1) where there is no GPU, for one test."""
    from kvrun.ops import gpu_available

    if not gpu_available():
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")


@pytest.fixture(scope="module")
def emulated():
    """As ``gpu_env``, module-wide: for the module-scoped engines a test file builds once."""
    from kvrun.ops import gpu_available

    with pytest.MonkeyPatch.context() as mp:
        if not gpu_available():
            mp.setenv("KVRUN_GPU_EMULATE", "1")
        yield


def _gpu_runtimes() -> list:
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    return [
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs an NVIDIA GPU with CuPy (kvrun.ops.gpu_available() is False)")],
        ),
        pytest.param("emulated", marks=pytest.mark.skipif(not emulate.available(), reason="no host C++ compiler for the kernel emulator")),
    ]


@pytest.fixture(scope="module", params=_gpu_runtimes())
def rt(request):
    """The CUDA kernels' runtime: CuPy on a real GPU, or the CPU emulator of the same sources."""
    from kvrun.ops.gpu import emulate
    from kvrun.ops.gpu import kernels as K

    runtime = K.CupyRuntime() if request.param == "cuda" else emulate.EmulatedRuntime()
    prev = K.set_runtime(runtime)
    yield runtime
    K.set_runtime(prev)


@pytest.fixture(scope="module")
def gpu(rt):
    """The GPU backend on the ``rt`` runtime (a test file's own ``gpu`` fixture, if any, takes its place)."""
    from kvrun.ops.gpu.backend import GPUBackend

    return GPUBackend()


@pytest.fixture(scope="module")
def cpu():
    """The CPU backend (a test file's own ``cpu`` fixture, if any, takes its place)."""
    from kvrun.ops.cpu.backend import CPUBackend

    return CPUBackend()


@pytest.fixture(scope="module")
def strict():
    """The kernel emulator on device arrays that refuse host operands and log every copy down (devicexp.py)."""
    from devicexp import StrictRuntime

    from kvrun.ops.gpu import kernels as K

    runtime = StrictRuntime()
    prev = K.set_runtime(runtime)
    yield runtime
    K.set_runtime(prev)


# ------------------------------------------------------------------ the emulated GPU tests' sample
#: Where no GPU is, the GPU tests run their kernels on the emulator (ops/gpu/emulate.py: every CUDA thread a fiber on
#: one CPU thread), about half of the suite's time on a 2-core host.  KVRUN_EMULATOR_TESTS=all runs every one of them;
#: by default a sample does, so that CI stays in its time: of a test function that builds whole models on the emulated
#: device (``gpu_env`` / ``emulated``), its first emulated parametrization (the others: the same kernels on other
#: models), and none marked ``heavy_emulation`` (a whole picture, clip or many-step run; each has cheaper siblings).
#: Kernel-level tests (the ``rt`` / ``gpu`` fixtures on small arrays) all run.  A real GPU runs everything.
EMULATOR_TESTS = os.environ.get("KVRUN_EMULATOR_TESTS", "sample")
_MODEL_LEVEL = {"gpu_env", "emulated"}


def _on_the_emulated_device(item: pytest.Item) -> bool:
    spec = getattr(item, "callspec", None)
    if spec is not None and any(isinstance(v, str) and v == "cpu" for v in spec.params.values()):
        return False  # (a ["cpu", "gpu"] parametrization's CPU side)
    return bool(_MODEL_LEVEL & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if EMULATOR_TESTS == "all":
        return
    from kvrun.ops import gpu_available

    if gpu_available():
        return
    why = "emulated GPU: a sample runs by default (KVRUN_EMULATOR_TESTS=all runs every one; a GPU runs them all)"
    seen: set[tuple[str, str]] = set()
    for item in items:
        if item.get_closest_marker("heavy_emulation") is not None:
            item.add_marker(pytest.mark.skip(reason=why))
            continue
        if not _on_the_emulated_device(item):
            continue
        key = (str(item.path), getattr(item, "originalname", item.name))
        if key in seen:
            item.add_marker(pytest.mark.skip(reason=why))
        seen.add(key)
