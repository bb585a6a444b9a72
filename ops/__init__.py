"""Kernels: ``ops.cpu`` (Numba) and ``ops.gpu`` (CuPy RawKernel) behind one interface."""

from __future__ import annotations

import os

from .backend import Backend, Weight

DEVICES = ("cpu", "gpu", "auto")


def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_backend(device: str = "cpu") -> Backend:
    """The kernels for ``device`` (``cpu``, ``gpu`` or ``auto``).

    With ``KVRUN_GPU_EMULATE=1`` in the environment, ``gpu`` runs the CUDA
    kernels on the CPU emulator (``ops/gpu/emulate.py``): slow, for testing the
    whole GPU path on machines without a GPU.

    Raises ValueError with a one-line reason when the device cannot be used.
    """
    if device == "auto":
        device = "gpu" if gpu_available() else "cpu"
    if device == "cpu":
        from .cpu.backend import CPUBackend

        return CPUBackend()
    if device == "gpu":
        if os.environ.get("KVRUN_GPU_EMULATE"):  # tests: the CUDA kernels compiled for the CPU
            from .gpu import emulate, kernels

            if not isinstance(kernels.runtime_or_none(), emulate.EmulatedRuntime):
                kernels.set_runtime(emulate.EmulatedRuntime())
        elif not gpu_available():
            raise ValueError("--device gpu needs CuPy and an NVIDIA GPU; install kvrun[gpu] or use --device cpu")
        from .gpu.backend import GPUBackend

        return GPUBackend()
    raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


__all__ = ["Backend", "Weight", "get_backend", "gpu_available", "DEVICES"]
