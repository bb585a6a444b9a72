"""Picture encoders on `--device gpu`, round 2 (issue 5): Qwen2-VL's, Qwen2.5-VL's, Qwen3-VL's, GLM-4V's, Pixtral's (Mistral
Small 3.1+), LightOnOCR's, InternVL's, LLaVA's ("mlp"), MiniCPM-V's ("resampler") and Gemma 4's vision encoders run on
the GPU backend (each forward written once in the encoder's file against models/vit_ops.py's ops, on the device
models/vit_device.py's DeviceViT), on the kernel emulator against the CPU encoder and libmtmd (the first round, on
models/siglip.py's ViT: tests/test_gpu_vision_encoders.py).

What these add to the first round's ViT: the 2-D vision rope (host-built cos/sin tables, a row a patch, uploaded once a
picture and read by the backend's rope kernel), Qwen2.5-VL's windowed layers (each window's patches attend among
themselves: the windows of one size gathered as heads of one launch of encoder.cu's both-ways attention, at most four
sizes a picture), RMSNorm and the gated SiLU MLP, Qwen2-VL's float16-table GELU-quick, Qwen3-VL's fused QKV, learned
positions resized on the host and DeepStack mergers; GLM-4V's RMSNorms, SwiGLU and 2x2 downsampling conv (a product); Pixtral's RMSNorm blocks with clip.cpp's ``build_rope_2d`` (each
half of a head over adjacent pairs: the rope kernel with neox off over the whole head), SwiGLU, Mistral Small's patch
merger and the [IMG_BREAK] rows, made on the device; InternViT's CLS row, layer scales and (the 6B ViT's) RMSNorm and
QK norms; LLaVA's class token after the patches, its feature layers (Granite's, concatenated) and GELU-quick.
(MobileVLM's "ldp" and "ldpv2", LLaVA's encoder with convolutional projectors: tests/test_gpu_vision_encoders4.py.) MiniCPM-V's
bucketed positions and perceiver resampler (its queries attending to the patches: the same kernel, Tq != Tk); Gemma
4's per-head norms, halves of a head roped by column and row (device arithmetic on host-built tables), unscaled
attention and clamped products.  The activations stay device arrays, the rows come down once, and
they are the CPU encoder's within 2e-3 of their largest (measured on the tiny projectors: 7e-5 to 4e-4 with float32
weights, up to 6e-4 with F16).  Pictures through the text model, libmtmd's logits and decode from graphs for Qwen2-VL,
Qwen3-VL, GLM-4V (GLM-4.1V and 4.5V), Pixtral, InternVL and LLaVA: tests/test_gpu_vision2.py; Gemma 4: tests/test_gpu_pictures3.py (its rows now the GPU encoder's); Qwen2.5-VL's, LightOnOCR's and MiniCPM-V's here."""

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
STEPS = (5, 9, 14)  # decode steps after a picture prompt: the first captured, the rest replayed
#: pixels [3, H, W] each encoder reads (random: any values go through): Qwen2(.5)-VL's 14-pixel patches, 7 x 6 blocks
#: of 2x2 (Qwen2.5-VL's windows of 4 x 4 blocks: four sizes, 16, 12, 8 and 6 blocks); Qwen3-VL's 16-pixel patches,
#: 4 x 3 blocks (its 6 x 6 positions resized to 8 x 6 patches); GLM-4V's 3 x 2 blocks of 28 pixels (its positions
#: resized too); Pixtral's 8-pixel patches, 5 x 3 merged blocks (3 rows, 2 [IMG_BREAK] rows); InternVL's 32-pixel tile;
#: LLaVA's 32-pixel square; a MiniCPM-V part of 5 x 3 patches of 14, its own size; Gemma 4's 3 x 2 pooled blocks of 12
SHAPES = {
    "qwen2vl": (3, 168, 196), "qwen25vl": (3, 168, 196), "qwen3vl": (3, 96, 128), "glm4v": (3, 56, 84),
    "pixtral": (3, 48, 80), "pixtral-nomerge": (3, 48, 80), "lightonocr": (3, 48, 80), "internvl": (3, 32, 32),
    "llava": (3, 32, 32), "llava-feat": (3, 32, 32), "minicpmv": (3, 42, 70), "gemma4v": (3, 24, 36), "gemma4v-noclamp": (3, 24, 36),
}  # fmt: skip


def _encoders(path: Path):
    """The CPU's encoder and the one runtime/projectors.py builds beside a text model on the GPU."""
    from kvrun.runtime.projectors import load_encoder

    return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))


def _pixels(name: str) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPES[name]).astype(np.float32)


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("name,qtype", [("qwen2vl", Q.F32), ("qwen2vl", Q.F16), ("qwen25vl", Q.F32), ("qwen25vl", Q.F16), ("qwen3vl", Q.F32),
                                        ("qwen3vl", Q.F16), ("glm4v", Q.F32), ("glm4v", Q.F16), ("pixtral", Q.F32), ("pixtral", Q.F16), ("pixtral-nomerge", Q.F32), ("lightonocr", Q.F32),
                                        ("internvl", Q.F32), ("internvl", Q.F16), ("llava", Q.F32), ("llava", Q.F16), ("llava-feat", Q.F32),
                                        ("minicpmv", Q.F32), ("minicpmv", Q.F16), ("gemma4v", Q.F32), ("gemma4v", Q.F16), ("gemma4v-noclamp", Q.F32)],
                         ids=["qwen2vl-f32", "qwen2vl-f16", "qwen25vl-f32", "qwen25vl-f16", "qwen3vl-f32", "qwen3vl-f16", "glm4v-f32", "glm4v-f16", "pixtral-f32", "pixtral-f16",
                              "pixtral-nomerge-f32", "lightonocr-f32", "internvl-f32", "internvl-f16", "llava-f32", "llava-f16",
                              "llava-feat-f32", "minicpmv-f32", "minicpmv-f16", "gemma4v-f32",
                              "gemma4v-f16", "gemma4v-noclamp-f32"])  # fmt: skip
def test_an_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated, name, qtype):
    """The encoder beside a GPU text model holds its weights on the device and writes the CPU encoder's rows (Qwen3-VL's
    DeepStack levels beside its main rows, Pixtral's [IMG_BREAK] rows between its rows of blocks) within 2e-3 of their
    largest."""
    cpu, gpu = _encoders(tiny_mmproj(name, qtype, tmp_path))
    check_encoder_rows(cpu, gpu, _pixels(name), bound=BOUND)


def test_qwen25vls_windows_have_teeth_the_whole_picture_in_every_layer_is_far_off(tmp_path, emulated, monkeypatch):
    """Qwen2.5-VL's windowed layer attending over the whole picture instead (the windows dropped) puts the rows far
    past the bound: the windows are what the device's rows agree on."""
    from kvrun.models import vit_device

    cpu, gpu = _encoders(tiny_mmproj("qwen25vl", Q.F32, tmp_path))
    px = _pixels("qwen25vl")
    monkeypatch.setattr(vit_device, "_attend_windows", lambda enc, q, k, v, groups, scale: vit_device.of(enc).attend(q, k, v, scale))
    assert rel_err(cpu.encode(px), gpu.encode(px)) > 50 * BOUND


def test_internvits_6b_norms_on_the_gpu_give_the_cpus_rows(tmp_path, emulated):
    """The 6B InternViT's RMSNorm and its QK norms over the whole width (clip.cpp knows the ViT by its shape, 3200 wide
    and 45 deep: switched on here in both encoders of the tiny file, the same QK norm weights in each): the CPU's rows."""
    cpu, gpu = _encoders(tiny_mmproj("internvl", Q.F32, tmp_path))
    rng = np.random.default_rng(3)
    for a, b in zip(cpu.layers, gpu.layers):
        a["q_norm"] = b["q_norm"] = (1.0 + 0.3 * rng.standard_normal(cpu.cfg.n_embd)).astype(np.float32)
        a["k_norm"] = b["k_norm"] = (1.0 + 0.3 * rng.standard_normal(cpu.cfg.n_embd)).astype(np.float32)
    cpu.rms = gpu.rms = True
    px = _pixels("internvl")
    assert rel_err(cpu.encode(px), gpu.encode(px)) < BOUND


@pytest.mark.parametrize("name", ["qwen2vl", "qwen25vl", "qwen3vl", "glm4v", "pixtral", "internvl", "llava", "minicpmv", "gemma4v"])
def test_an_encoder_on_the_gpu_brings_its_rows_down_once(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), a picture's forward makes one copy down, its rows: the rope tables, window indices and positions go up,
    no activation visits the host."""
    path = tiny_mmproj(name, Q.F32, tmp_path)
    check_rows_come_down_once(lambda: _encoders(path), _pixels(name), BOUND)


# ---------------------------------------------------------------- whole pictures through the text model


def test_qwen25vl_pictures_encoded_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path_factory, emulated):
    """Two pictures of Qwen2.5-VL's (M-RoPE rows, the windowed encoder on the GPU): libmtmd's ids and logits within
    test_vision_qwen2vl.py's 1.5e-2, the CPU's within 2e-3, then decode steps, the GPU's replayed from graphs."""
    from make_vision_qwen2vl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair
    from vision_checks import check_files, check_logits, fixture, pictures

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    fx = fixture("qwen2vl")
    files = check_files(write_pair(tmp_path_factory.mktemp("gpu_encoders2_q25")), fx)
    cpu, gpu = (Vision(Engine(files["text"], device=d, n_ctx=512, n_batch=64, threads=1), files[PAIRS["q25"]]) for d in ("cpu", "gpu"))
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    pics = pictures(IMAGES)
    ca = check_logits(cpu, fx, pics, PROMPTS[1], "q25_1", 1.5e-2)
    cb = check_logits(gpu, fx, pics, PROMPTS[1], "q25_1", 1.5e-2)
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1


def test_lightonocr_pictures_encoded_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path_factory, emulated):
    """Two pictures of LightOnOCR's (Pixtral's encoder on the GPU, no [IMG_BREAK] rows, a Qwen3 text model): libmtmd's
    ids and logits within test_vision_lightonocr.py's 1e-2, the CPU's within 2e-3, then decode steps from graphs."""
    from make_vision_lightonocr_fixtures import IMAGES, PROMPTS, write_pair
    from vision_checks import check_files, check_logits, fixture, pictures

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    fx = fixture("lightonocr")
    files = check_files(write_pair(tmp_path_factory.mktemp("gpu_encoders2_lightonocr")), fx)
    cpu, gpu = (Vision(Engine(files["text"], device=d, n_ctx=1024, n_batch=64, threads=1), files["f32"]) for d in ("cpu", "gpu"))
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    pics = pictures(IMAGES)
    ca = check_logits(cpu, fx, pics, PROMPTS[1], "1", 1e-2)
    cb = check_logits(gpu, fx, pics, PROMPTS[1], "1", 1e-2)
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1


def test_minicpmv_pictures_encoded_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path_factory, emulated):
    """Two pictures of MiniCPM-V 4.5's (an overview and slices each, every part encoded and resampled on the GPU, fed
    as causal blocks into Qwen3): libmtmd's ids and logits within test_vision_minicpmv.py's 2.5e-2, the CPU's within
    2e-3, then decode steps from graphs."""
    from make_vision_minicpmv_fixtures import IMAGES, PAIRS, PROMPTS, write_pair
    from vision_checks import block_ids, check_files, check_logits, fixture, pictures

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    fx = fixture("minicpmv")
    files = check_files(write_pair(tmp_path_factory.mktemp("gpu_encoders2_minicpmv")), fx)
    cpu, gpu = (Vision(Engine(files["text"], device=d, n_ctx=1024, n_batch=64, threads=1), files[PAIRS["mc"]]) for d in ("cpu", "gpu"))
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    pics = pictures(IMAGES)
    ca = check_logits(cpu, fx, pics, PROMPTS[1], "mc_1", 2.5e-2, ids=block_ids(cpu))
    cb = check_logits(gpu, fx, pics, PROMPTS[1], "mc_1", 2.5e-2, ids=block_ids(gpu))
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1
