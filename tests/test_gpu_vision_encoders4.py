"""Picture encoders on `--device gpu`, round 4 (issue 5): the last projectors that encoded on the CPU beside a GPU text
model run on the GPU backend, each forward written once against models/vit_ops.py's ops (models/vit_device.py's
DeviceViT here), on the kernel emulator against the CPU encoders.

What it adds to round 3's (tests/test_gpu_vision_encoders3.py): Step3-VL's learned positions resized on the host for
a picture of another grid and uploaded, LayerScale on both branches, and its projector's two 3x3 stride-2
convolutions (the im2col rows built on the device, rounded to F16, times the F16 kernels); Youtu-VL's SigLIP2 with
Qwen2-VL's vision rope (neox pairs) and Qwen2.5-VL's windows in the layers that do not see the whole picture, the
merger's RMSNorm over each block's 4 patches; CogVLM's EVA2-CLIP (a CLS row after the patches, post-norm blocks from
a fused QKV) and its GLU projector between the begin and end rows; DeepSeek-OCR's SAM (its patch convolution, attention
within windows and over the whole grid with the relative positions' products added to the scores, the neck's
convolutions and channel LayerNorms, all on the device) feeding CLIP-L and the projector; MobileVLM's projectors after
LLaVA's ViT ("ldp": depthwise 3x3 convolutions on F16 maps, LayerNorms over channels, hardswish, squeeze-excite with its
float64 mean, the residual and a stride-2 block; "ldpv2": 2x2 average pooling and the positional convolution); Gemma
3n's MobileNetV5 (convolutions with TF's SAME padding, full ones as products of im2col rows, depthwise ones as sums of
their taps, RMSNorm over each pixel's channels, multi-query attention over a downsampled key and value, the multi-scale
fusion upsampled, pooled) and its embedder; MiniMax-M3's (Qwen2-VL's ViT, its partial 2-D rope's row and column parts
each the backend's neox rope, the per-patch MLP, the 2x2 merger).  (MobileVLM's projectors share LLaVA's ViT, checked in float32 in round 2:
"ldp" here in F16, its float32 rows on the strict stand-in; "ldpv2" in float32.)  The rows come down once
and are the CPU encoder's within 2e-3 of their largest."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import check_encoder_rows, check_rows_come_down_once, rel_err
from tiny_vision import tiny_mmproj

from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

BOUND = 2e-3
#: pixels [3, H, W] each encoder reads (random: any values go through): Step3-VL's 56 x 112 (4 x 8 patches of 14: its
#: 8 x 8 position grid resized; 1 x 2 rows after the two stride-2 convolutions)
#: Youtu-VL's 64 x 96 (8 x 12 patches of 8, 2 x 3 windows of 2 x 2 blocks, its first layer windowed, the second whole)
#: CogVLM's 40 x 40 (its one size: 5 x 5 patches of 8 and the CLS row)
#: DeepSeek-OCR's 256-pixel view (its encoder takes any multiple of 64; libmtmd's are 1024 and 640, which the kernel
#: emulator's LayerNorm makes slow): SAM's 16 x 16 patches in 2 x 2 windows of 14 over the zero-padded grid, its
#: position grid, relative tables and CLIP's positions resized; 4 x 4 rows
#: MobileVLM's ("ldp", "ldpv2") 48 x 48 (24 x 24 patches of 2: libmtmd's graphs are built for 24; 12 x 12 rows);
#: Gemma 3n's 512 x 512, its one size (MobileNetV5's 4 stages down to 32 x 32, the fusion pooled to 16 x 16 rows)
#: MiniMax-M3's 96 x 128 (6 x 8 patches of 16, 3 x 4 rows: within clip.cpp's 8 to 576)
SHAPES = {"step3vl": (3, 56, 112), "youtuvl": (3, 64, 96), "cogvlm": (3, 40, 40), "deepseekocr": (3, 256, 256), "ldp": (3, 48, 48),
          "ldpv2": (3, 48, 48), "gemma3nv": (3, 512, 512), "minimax_m3": (3, 96, 128)}


def _encoders(path):
    """The CPU's encoder and the one runtime/projectors.py builds beside a text model on the GPU."""
    from kvrun.runtime.projectors import load_encoder

    return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))


def _pixels(name: str) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPES[name]).astype(np.float32)


@pytest.mark.parametrize("name,qtype", [("step3vl", Q.F32), ("step3vl", Q.F16), ("youtuvl", Q.F32), ("youtuvl", Q.F16),
                                        ("cogvlm", Q.F32), ("cogvlm", Q.F16), ("deepseekocr", Q.F32), ("deepseekocr", Q.F16),
                                        ("ldp", Q.F16), ("ldpv2", Q.F32), ("gemma3nv", Q.F32), ("gemma3nv", Q.F16)],
                         ids=["step3vl-f32", "step3vl-f16", "youtuvl-f32", "youtuvl-f16", "cogvlm-f32", "cogvlm-f16", "deepseekocr-f32",
                              "deepseekocr-f16", "ldp-f16", "ldpv2-f32", "gemma3nv-f32", "gemma3nv-f16"])
def test_an_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated, name, qtype):
    """The encoder beside a GPU text model holds its weights on the device and writes the CPU encoder's rows within
    2e-3 of their largest."""
    cpu, gpu = _encoders(tiny_mmproj(name, qtype, tmp_path))
    check_encoder_rows(cpu, gpu, _pixels(name), bound=BOUND)


@pytest.mark.parametrize("name", ["step3vl", "youtuvl", "cogvlm", "deepseekocr", "ldp", "gemma3nv"])
def test_an_encoder_on_the_gpu_brings_its_rows_down_once(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), a picture's forward makes one copy down, its rows: the tables go up, no activation visits the host."""
    path = tiny_mmproj(name, Q.F32, tmp_path)
    check_rows_come_down_once(lambda: _encoders(path), _pixels(name), BOUND)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16], ids=["f32", "f16"])
def test_minimax_m3s_encoder_runs_on_the_gpu_turning_its_rope_parts(tmp_path, emulated, qtype):
    """MiniMax-M3's encoder beside a GPU text model gives the CPU encoder's rows within 2e-3, bringing them down once
    (the strict stand-in); its rope dropped on the GPU puts them far off (the device turns the row's and the column's
    parts)."""
    from unittest import mock

    from tiny_vision_minimax_m3 import write_tiny_minimax_m3_mmproj

    from kvrun.models import minimax_m3_image

    path = write_tiny_minimax_m3_mmproj(tmp_path / "m.gguf", qtype)
    cpu, gpu = _encoders(path)
    px = _pixels("minimax_m3")
    check_encoder_rows(cpu, gpu, px, (12, 64), bound=BOUND)
    check_rows_come_down_once(lambda: _encoders(path), px, BOUND)
    want = cpu.encode(px)
    with mock.patch.object(minimax_m3_image, "rope", lambda ops, q, k, parts: (q, k)):
        assert rel_err(want, gpu.encode(px)) > 10 * BOUND


def _whole_everywhere(enc) -> None:  # (every Youtu-VL layer seeing the whole picture: no windows)
    enc.whole = set(range(len(enc.layers)))


def _no_relative_positions(enc) -> None:  # (SAM's relative position tables zero: nothing added to the scores)
    for L in enc.sam:
        L["pos_h"], L["pos_w"] = np.zeros_like(L["pos_h"]), np.zeros_like(L["pos_w"])


@pytest.mark.parametrize("name,drop", [("youtuvl", _whole_everywhere), ("deepseekocr", _no_relative_positions)],
                         ids=["youtuvl-windows", "deepseekocr-relpos"])
def test_the_checks_have_teeth_a_step_dropped_on_the_gpu_is_far_off(tmp_path, emulated, name, drop):
    """The GPU encoder with a distinguishing step dropped (Youtu-VL's windows, SAM's relative positions) puts the rows
    far past the bound: the device runs those steps, and the bound sees them."""
    cpu, gpu = _encoders(tiny_mmproj(name, Q.F32, tmp_path))
    px = _pixels(name)
    want = cpu.encode(px)
    drop(gpu)
    assert rel_err(want, gpu.encode(px)) > 10 * BOUND
