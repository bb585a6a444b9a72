"""Picture encoders on `--device gpu` (issue 5): Gemma 3's SigLIP, SmolVLM's (idefics3), Janus-Pro's, LFM2-VL's and
Hunyuan-VL's, the encoders on models/siglip.py's ViT block, run on the GPU backend (models/vit_device.py), as llama.cpp
runs its mmproj on the GPU; on the kernel emulator against the CPU encoder and libmtmd (Hunyuan-VL's whole pictures:
tests/test_gpu_pictures3.py).

The activations stay device arrays: the patches go up once a picture, the products are the GPU's matmul kernels, the
norms, the float16-table GELU and the attention both ways its kernels (ops/gpu/nn.cu, t5.cu, encoder.cu), and the rows
come down once.  The CPU encoder's F16 rounding of an activation before an F16 product is kept on the device, so
the rows are the CPU's within float32 noise: bounded by 2e-3 of their largest, the GPU text path's bound against the
CPU (tests/test_gpu_archs2.py; measured: 2e-5 to 3e-4 with float32 weights, at most 7e-4 with F16, up to 1.8e-3
without the rounding; the F32 cases' larger ones are the float16-table GELU's input landing on the other side of a
rounding boundary).
Every projector's encoder runs on the GPU (tests/test_gpu_vision2.py holds models/siglip.py ON_GPU to them all)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import rel_err, strict_stand_in
from tiny_vision import tiny_mmproj

from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOUND = 2e-3
STEPS = (5, 9, 14)  # decode steps after a picture prompt: the first captured, the rest replayed


def _pixels(cfg) -> np.ndarray:
    """A picture as the encoder reads it: one square tile; LFM2-VL's and Hunyuan-VL's, 48 x 64 pixels (any size in
    whole blocks)."""
    from tiny_vision import sample_image

    from kvrun.models.siglip import preprocess

    if cfg.projector_type in ("lfm2", "hunyuanvl"):
        return np.random.default_rng(0).standard_normal((3, 48, 64)).astype(np.float32)
    return preprocess(sample_image(300, 180, seed=1), cfg)


def _encoders(path: Path):
    """The CPU's encoder and the one runtime/projectors.py builds beside a text model on the GPU."""
    from kvrun.runtime.projectors import load_encoder

    return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("name,qtype", [("gemma3", Q.F32), ("gemma3", Q.F16), ("idefics3", Q.F32), ("janus", Q.F32), ("lfm2", Q.F32),
                                        ("hunyuanvl", Q.F32), ("hunyuanvl", Q.F16)],
                         ids=["gemma3-f32", "gemma3-f16", "idefics3-f32", "janus-f32", "lfm2-f32", "hunyuanvl-f32", "hunyuanvl-f16"])
def test_a_ported_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated, name, qtype):
    """The encoder beside a GPU text model holds its weights on the device and writes the CPU encoder's rows within
    2e-3 of their largest (F16: the activations rounded to F16 before each F16 product, as the CPU's and ggml's)."""
    cpu, gpu = _encoders(tiny_mmproj(name, qtype, tmp_path))
    assert type(gpu.be).__name__ == "GPUBackend"
    px = _pixels(cpu.cfg)
    want, got = cpu.encode(px), gpu.encode(px)
    assert isinstance(got, np.ndarray) and got.shape == want.shape and want.shape[1] == cpu.cfg.n_text_embd
    assert rel_err(want, got) < BOUND


def test_a_picture_too_large_for_the_attention_kernel_attends_on_the_host(tmp_path, emulated, monkeypatch):
    """Past encoder.cu's shared memory (over 12,000 patches) a block's attention runs on the host and goes back up:
    the same rows."""
    from kvrun.ops.gpu import encoder as E

    cpu, gpu = _encoders(tiny_mmproj("gemma3", Q.F32, tmp_path))
    px = _pixels(cpu.cfg)
    monkeypatch.setattr(E, "fits", lambda n_keys, head_dim: False)
    assert rel_err(cpu.encode(px), gpu.encode(px)) < BOUND


@pytest.mark.parametrize("name", ["gemma3", "idefics3", "janus", "lfm2", "hunyuanvl"])
def test_an_encoder_on_the_gpu_brings_its_rows_down_once(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), a picture's forward makes one copy down, its rows: no activation visits the host."""
    path = tiny_mmproj(name, Q.F32, tmp_path)
    with strict_stand_in() as copies:
        cpu, gpu = _encoders(path)
        px = _pixels(cpu.cfg)
        copies.clear()
        rows = gpu.encode(px)
        assert copies == [("asnumpy", rows.shape)]
    assert rel_err(cpu.encode(px), rows) < BOUND


# ---------------------------------------------------------------- whole pictures through the text model


def _check(fx, pics: dict, prompt: str, key: str, tol: float, text: Path, mmproj: Path, n_ctx: int = 1024, **kw) -> None:
    """``prompt`` with pictures on both backends: libmtmd's ids and logits within ``tol`` (vision_checks.check_logits),
    the GPU's within 2e-3 of the CPU's, then decode steps, the GPU's replayed from captured graphs."""
    from vision_checks import check_logits

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    cpu, gpu = (Vision(Engine(text, device=d, n_ctx=n_ctx, n_batch=64, threads=1), mmproj) for d in ("cpu", "gpu"))
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    ca = check_logits(cpu, fx, pics, prompt, key, tol, **{k: f(cpu) for k, f in kw.items()})
    cb = check_logits(gpu, fx, pics, prompt, key, tol, **{k: f(gpu) for k, f in kw.items()})
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1


def test_janus_pictures_encoded_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path_factory, emulated):
    """Two pictures of Janus-Pro's (its rows fed as a block, the encoder and MLP projector on the GPU): libmtmd's
    logits within test_vision_janus.py's 2e-2, the CPU's within 2e-3, then decode steps from graphs."""
    from make_vision_janus_fixtures import IMAGES, PROMPTS
    from tiny_vision_janus import write_tiny_janus_mmproj, write_tiny_janus_text
    from vision_checks import fixture, pictures, tiny_pair

    fx = fixture("janus")
    files = tiny_pair(tmp_path_factory, "janus", write_tiny_janus_text, write_tiny_janus_mmproj, fx)
    _check(fx, pictures(IMAGES), PROMPTS[1], "1", 2e-2, files["text"], files["f32"])


@pytest.mark.heavy_emulation  # (on the emulator, over 10 s: tests/conftest.py's sample leaves it out)
def test_lfm2vl_pictures_encoded_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path_factory, emulated):
    """Two pictures of LFM2-VL's (its blocks between image markers, an LFM2 text model): libmtmd's logits within
    test_vision_lfm2.py's 1.5e-2, the CPU's within 2e-3, then decode steps from graphs."""
    from make_vision_lfm2_fixtures import IMAGES, PROMPTS
    from tiny_vision_lfm2 import write_tiny_lfm2_mmproj, write_tiny_lfm2vl
    from vision_checks import block_ids, fixture, pictures, tiny_pair

    fx = fixture("lfm2")
    files = tiny_pair(tmp_path_factory, "lfm2", write_tiny_lfm2vl, write_tiny_lfm2_mmproj, fx)
    _check(fx, pictures(IMAGES), PROMPTS[1], "1", 1.5e-2, files["text"], files["f32"], 4096, ids=block_ids)


def test_a_gemma3_chat_with_its_picture_encoded_on_the_gpu_writes_the_cpus_text(tmp_path, emulated):
    """A whole chat turn (kvrun.load, session.send) with Gemma 3's picture encoded on the GPU: the CPU's reply."""
    import kvrun
    from tiny_vision import sample_image, write_tiny_gemma3_vl

    text, mmproj = write_tiny_gemma3_vl(tmp_path / "text.gguf"), tiny_mmproj("gemma3", Q.F32, tmp_path)
    kw = {"n_ctx": 256, "n_batch": 64, "threads": 1, "mmproj": str(mmproj)}
    cpu, gpu = kvrun.load(str(text), **kw), kvrun.load(str(text), device="gpu", **kw)
    assert type(gpu.vision.encoder.be).__name__ == "GPUBackend"
    sample = {"max_tokens": 8, "temperature": 0, "repeat_penalty": 3.0}
    pic = sample_image(300, 180, seed=1)
    want, got = cpu.session(), gpu.session()
    assert got.send("describe", images=[pic], **sample) == want.send("describe", images=[pic], **sample)
