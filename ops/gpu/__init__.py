"""The GPU backend: CUDA C kernels (``*.cu`` beside this file) launched through CuPy.

Importing this package imports nothing heavy: CuPy is loaded only when a
kernel is first launched (``kernels.CupyRuntime``), so the CPU path never
needs it.

* ``backend.GPUBackend``   the Backend interface on device arrays
* ``attention``            launchers of the attention kernels (used by cache/gpu_plain.py)
* ``gemma``                Gemma 3n's and Gemma 4's own steps (AltUp, per-layer inputs), methods GPUBackend takes on
* ``kernels``              kernel table, source loading, runtimes, ``launch``
* ``compile_check``        compile every .cu to PTX without a GPU (NVRTC or nvcc)
* ``emulate``              run the kernels on the CPU, for tests without a GPU
"""
