"""Granite 4 Vision's picture encoder on `--device gpu` (models/granite4v_image.py, its forward written once against
models/vit_ops.py's ops: models/vit_device.py's DeviceViT here), on the kernel emulator against the CPU encoder.

What it adds to the rounds before (tests/test_gpu_vision_encoders*.py): a picture's tiles through the SigLIP tower
one by one with every layer's output kept, then the WindowQFormer blocks on all tiles at once: the windows and the
queries' windows as device reshapes, the queries averaged (ggml_pool_2d) or picked from each 2x2, self- and
cross-attention within each window (the windows as heads of one launch, the cross-attention's keys more than its
queries), the exact GELU; the blocks side by side, brought down once and assembled (the unpadded grid, the newline
rows) on the host.  The rows are the CPU encoder's within 2e-3 of their largest.  (The GPU text model beside it is Granite's, checked by
tests/test_gpu_engine.py; the rows go in as any block's, runtime/vision.py.)"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import rel_err, strict_stand_in
from tiny_vision import sample_image, tiny_mmproj

from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

BOUND = 2e-3


def _encoders(path):
    """The CPU's encoder and the one runtime/projectors.py builds beside a text model on the GPU."""
    from kvrun.runtime.projectors import load_encoder

    return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))


def test_the_granite4_vision_encoder_runs_on_the_gpu_and_brings_its_rows_down_once(tmp_path, emulated):
    """A 50 x 30 picture (the overview and a 2 x 1 grid: 3 tiles) on the strict CuPy stand-in (tests/devicexp.py):
    one copy down, the tiles' rows, and once assembled they are the CPU encoder's within 2e-3 of their largest (the
    F16 projector's, measured on the emulator: 1.8e-3, its F16 roundings of the activations flipping apart)."""
    picture = sample_image(50, 30, seed=2)
    path = tiny_mmproj("granite4v", Q.F32, tmp_path)
    with strict_stand_in() as copies:
        cpu, gpu = _encoders(path)
        copies.clear()
        rows = gpu.encode(picture)
        assert copies == [("asnumpy", (3 * 16, 64))]  # (the tiles' rows; the assembly is the host's)
    assert rows.shape == (44, 64) and rel_err(cpu.encode(picture), rows) < BOUND  # (measured 2.7e-4)
