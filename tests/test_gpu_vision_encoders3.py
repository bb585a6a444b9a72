"""Picture encoders on `--device gpu`, round 3 (issue 5): Llama 4's, Kimi-VL's and PaddleOCR-VL's vision encoders run on
the GPU backend (their forwards on models/vit_device.py's DeviceViT ops, models/vit_ops.py), on the kernel emulator
against the CPU encoders (models/llama4_image.py, models/kimivl_image.py, models/paddleocr_image.py).

What it adds to round 2's (tests/test_gpu_vision_encoders2.py): a CLS row after the patches roped at position 0 while
the patches are turned by their column + 1 and row + 1 (clip.cpp's ``build_rope_2d``: the host-built [T, D/2] table
read by the backend's rope kernel, neox off, as Pixtral's), a patch product rounded to F16 only for an F16 kernel,
Llama 4's column-major pixel shuffle and its GELU adapter; Kimi-VL's MoonViT (the same blocks, roped from 0, its
position grid resized on the host and uploaded) and its per-patch LayerNorm after the 2x2 merge; PaddleOCR-VL's NaViT
(the same blocks with Qwen2-VL's vision rope: neox pairs, the rope kernel with neox on), made on the device.  The rows come down once and are the
CPU encoder's within 2e-3 of their largest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import check_encoder_rows, check_rows_come_down_once, rel_err
from tiny_vision import tiny_mmproj

from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOUND = 2e-3
#: pixels [3, H, W] each encoder reads (random: any values go through): Llama 4's 32-pixel tile of 8-pixel patches;
#: Kimi-VL's and PaddleOCR-VL's 10 x 6 patches of 8 (their 8 x 8 and 6 x 6 position grids resized), 5 x 3 merged blocks
#: MiniCPM-V 4.6's part of 8 x 4 patches of 14 (4 x 2 after its ViT merger, 2 x 1 rows); its scale-2 file's 6 x 4 (3 x 2 rows)
SHAPES = {"llama4": (3, 32, 32), "kimivl": (3, 48, 80), "paddleocr": (3, 48, 80), "minicpmv46": (3, 56, 112), "minicpmv46-x2": (3, 56, 84)}


def _encoders(path: Path):
    """The CPU's encoder and the one runtime/projectors.py builds beside a text model on the GPU."""
    from kvrun.runtime.projectors import load_encoder

    return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))


def _pixels(name: str) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPES[name]).astype(np.float32)


@pytest.mark.parametrize("name,qtype", [("llama4", Q.F32), ("llama4", Q.F16), ("kimivl", Q.F32), ("kimivl", Q.F16),
                                        ("paddleocr", Q.F32), ("paddleocr", Q.F16), ("minicpmv46", Q.F32), ("minicpmv46", Q.F16),
                                        ("minicpmv46-x2", Q.F32)],
                         ids=["llama4-f32", "llama4-f16", "kimivl-f32", "kimivl-f16", "paddleocr-f32", "paddleocr-f16",
                              "minicpmv46-f32", "minicpmv46-f16", "minicpmv46-x2-f32"])
def test_an_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated, name, qtype):
    """The encoder beside a GPU text model holds its weights on the device and writes the CPU encoder's rows within
    2e-3 of their largest."""
    cpu, gpu = _encoders(tiny_mmproj(name, qtype, tmp_path))
    check_encoder_rows(cpu, gpu, _pixels(name), bound=BOUND)


def test_llama4s_rope_has_teeth_its_halves_turned_by_row_then_column_are_far_off(tmp_path, emulated, monkeypatch):
    """The device reads the host's table as it is: a table whose halves are swapped (the head's first half turned by
    the patch's row, the second by its column) puts the rows far past the bound."""
    from kvrun.models import llama4_image

    cpu, gpu = _encoders(tiny_mmproj("llama4", Q.F32, tmp_path))
    px = _pixels("llama4")
    want = cpu.encode(px)
    real = llama4_image.rope_2d
    monkeypatch.setattr(llama4_image, "rope_2d", lambda ys, xs, D: real(xs, ys, D))
    assert rel_err(want, gpu.encode(px)) > 10 * BOUND


@pytest.mark.parametrize("name", ["llama4", "kimivl", "paddleocr", "minicpmv46"])
def test_an_encoder_on_the_gpu_brings_its_rows_down_once(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), a picture's forward makes one copy down, its rows: the rope tables go up, no activation visits the host."""
    path = tiny_mmproj(name, Q.F32, tmp_path)
    check_rows_come_down_once(lambda: _encoders(path), _pixels(name), BOUND)


def test_minicpmv46s_vit_merger_attends_within_windows_raster_runs_of_four_are_far_off(tmp_path, emulated, monkeypatch):
    """MiniCPM-V 4.6's ViT merger attends within each 2 x 2 window: groups of four patches in raster order instead
    (the window order dropped) put the rows far past the bound."""
    from kvrun.models import minicpmv46_image

    cpu, gpu = _encoders(tiny_mmproj("minicpmv46", Q.F32, tmp_path))
    px = _pixels("minicpmv46")
    want = cpu.encode(px)
    monkeypatch.setattr(minicpmv46_image, "window_order", lambda ny, nx: np.arange(ny * nx))
    assert rel_err(want, gpu.encode(px)) > 10 * BOUND
