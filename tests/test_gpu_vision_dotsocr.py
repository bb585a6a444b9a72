"""dots.ocr's picture encoder on `--device gpu` (models/dotsocr_image.py, its forward written once against
models/vit_ops.py's ops: models/vit_device.py's DeviceViT here), on the kernel emulator against the CPU encoder.

What it adds to the rounds before (tests/test_gpu_vision_encoders*.py): the ViT's RMSNorms (the patchifier's pre-norm,
each block's two, the trunk's post-norm), the fused QKV product cut into its thirds (one weight's row ranges uploaded
apiece), Qwen2-VL's vision rope on raster-order patches, the SwiGLU MLP, then the 2x2 block merge as device reshapes
and the exact GELU of the merger.  The rows are the CPU encoder's within 2e-3 of their largest.  (The GPU text model
beside it is Qwen2's, checked by tests/test_gpu_engine.py; the rows go in as any block's, runtime/vision.py.)"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import check_rows_come_down_once
from tiny_vision import sample_image, tiny_mmproj

from kvrun.models import dotsocr_image
from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")


def test_the_dotsocr_encoder_runs_on_the_gpu_and_brings_its_rows_down_once(tmp_path, emulated):
    """A 53 x 37 picture (4 x 3 blocks: 8 x 6 patches) of the F16 projector on the strict CuPy stand-in
    (tests/devicexp.py): one copy down, its 12 rows, the CPU encoder's within 2e-3 of their largest (measured on the
    emulator: 2.7e-4, the F16 products' roundings; 1e-6 for the F32 projector)."""
    from kvrun.runtime.projectors import load_encoder

    path = tiny_mmproj("dotsocr", Q.F16, tmp_path)

    def encoders():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    pixels = dotsocr_image.preprocess(sample_image(53, 37, seed=4), encoders()[0].cfg)
    assert pixels.shape == (3, 48, 64)
    check_rows_come_down_once(encoders, pixels)
