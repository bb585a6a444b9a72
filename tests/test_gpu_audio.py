"""Audio encoders on `--device gpu` (issue 5): the Whisper encoder of Ultravox's, Qwen2-Audio's, Voxtral's and
Qwen2.5-Omni's audio mmproj files (models/whisper_audio.py) runs on the GPU backend (models/vit_device.py
whisper_rows), as llama.cpp runs its mmproj on the GPU; on the kernel emulator against the CPU encoder and libmtmd.

A 30 s chunk is 1500 rows through every block (32 of width 1280 in Whisper large: minutes on a CPU), so beside a GPU
text model the chunk's mel spectrogram (computed on the host) goes up once, both convolutions are products of their
F16 kernels over the unfolded frames, the blocks are models/vit_device.py's ops (the GPU's matmul kernels, nn.cu's
LayerNorm, encoder.cu's attention both ways) with Whisper's exact GELU (ops/gpu/whisper.cu), the pooling and the
projector run there too, and the clip's rows come down once.  The CPU encoder's F16 rounding of an activation before
an F16 product (and of the convolutions' input) is kept on the device, so the rows are the CPU's within float32
noise, bounded by 2e-3 of their largest (the GPU text path's bound against the CPU, tests/test_gpu_archs2.py;
measured on the tiny projectors: ~2e-6 with float32 weights, 4e-4 to 6e-4 with F16).  The rows then go into the GPU
text model as a picture's do (runtime/audio.py, runtime/omni.py: nothing there depends on the device).

Each encode here runs the real 1500 frames through the emulator (~10 s), so each projector is encoded once a side,
and Qwen2-Audio's encoder is checked as Qwen2.5-Omni's audio side (clip.cpp reads it as "qwen2a").
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import rel_err

from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOUND = 2e-3
STEPS = (5, 9, 14)  # decode steps after the prompt: the first captured, the rest replayed


def _encoders(path: Path):
    """The CPU's encoder and the one an engine on the GPU builds (runtime/audio.py hands it the engine's backend)."""
    from kvrun.models.whisper_audio import WhisperAudioEncoder

    return WhisperAudioEncoder.load(path, get_backend("cpu")), WhisperAudioEncoder.load(path, get_backend("gpu"))


def _clip() -> np.ndarray:
    from tiny_audio import sample_audio

    return sample_audio(1.3)  # (one 30 s chunk: the clip, then libmtmd's 30 s of padding)


def test_the_exact_gelu_kernel_is_the_cpus(emulated):
    """ops/gpu/whisper.cu's gelu_erf_f32, in place, against models/whisper_audio.py's gelu_erf (erf in float64 there):
    within 1e-6 over the MLPs' range and past it (measured: 2.4e-7; a large negative input gives 0, a large positive
    one itself)."""
    from kvrun.models import vit_device
    from kvrun.models.whisper_audio import gelu_erf

    be = get_backend("gpu")
    x = np.concatenate([np.random.default_rng(0).standard_normal(4096) * 4, [-30, -8, -1e-3, 0, 1e-3, 8, 30]]).astype(np.float32)
    got = be.to_host(vit_device.gelu_erf(be.vector(x)))
    np.testing.assert_allclose(got, gelu_erf(x), rtol=0, atol=1e-6)


@pytest.mark.heavy_emulation  # (on the emulator, over 10 s: tests/conftest.py's sample leaves it out)
def test_ultravox_rows_on_the_gpu_are_the_cpus_and_come_down_once(tmp_path, emulated):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), Ultravox's F16 projector encodes a clip with one copy down, its rows, which are the CPU encoder's within
    2e-3: the convolutions, blocks, stacking and SwiGLU projector all on the device."""
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import COPIES, StrictRuntime
    from tiny_audio import write_tiny_ultravox_mmproj

    from kvrun.ops.gpu import kernels as K

    path = write_tiny_ultravox_mmproj(tmp_path / "ultravox.gguf", Q.F16)
    x = _clip()
    prev = K.set_runtime(StrictRuntime())
    try:
        cpu, gpu = _encoders(path)
        assert type(gpu.be).__name__ == "GPUBackend"
        COPIES.clear()
        rows = gpu.encode(x)
        assert COPIES == [("asnumpy", rows.shape)]
    finally:
        K.set_runtime(prev)
    want = cpu.encode(x)
    assert rows.shape == want.shape == (cpu.cfg.rows_per_chunk, cpu.cfg.n_text_embd)
    assert rel_err(want, rows) < BOUND


@pytest.mark.heavy_emulation  # (on the emulator, over 10 s: tests/conftest.py's sample leaves it out)
def test_voxtrals_pooled_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """Voxtral's encoder (F16) pools the 1500 rows to 750 before the post LayerNorm, then stacks them into its
    GELU(erf) MLP, all on the device: the CPU's rows within 2e-3.  (Qwen2-Audio's pooled encoder and its linear
    projector: Qwen2.5-Omni's audio side, below.)"""
    from tiny_audio2 import write_tiny_audio2_mmproj

    cpu, gpu = _encoders(write_tiny_audio2_mmproj(tmp_path / "voxtral.gguf", "voxtral", Q.F16))
    x = _clip()
    want, got = cpu.encode(x), gpu.encode(x)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (cpu.cfg.rows_per_chunk, cpu.cfg.n_text_embd)
    assert rel_err(want, got) < BOUND


def test_a_mel_chunk_of_the_wrong_shape_is_a_one_line_error_on_the_gpu(tmp_path, emulated):
    from tiny_audio import N_MEL, write_tiny_ultravox_mmproj
    from vision_checks import one_line_error

    _, gpu = _encoders(write_tiny_ultravox_mmproj(tmp_path / "ultravox.gguf"))
    with one_line_error(r"takes a mel chunk \[16, 3000\]"):
        gpu.encode_chunk(np.zeros((N_MEL, 2000), np.float32))


@pytest.mark.heavy_emulation  # (on the emulator, tens of seconds: tests/conftest.py's sample leaves it out)
def test_qwen25_omni_picture_and_clip_on_the_gpu_give_libmtmds_and_the_cpus_logits(tmp_path, emulated):
    """Qwen2.5-Omni's prompt with a picture and a clip (tests/test_omni.py's first), beside a GPU text model: the
    clip encoded on the GPU (the audio side, read as qwen2a), the picture too (its Qwen2.5-VL encoder: ON_GPU), the
    clip's rows the CPU's within 2e-3, libmtmd's logits within test_omni.py's 2e-3, the CPU's within 2e-3, then
    decode steps, the GPU's replayed from captured graphs."""
    from make_audio_fixtures import clips
    from make_omni_fixtures import MEDIA, N_CTX, PROMPTS, picture
    from tiny_omni import write_tiny_omni_mmproj, write_tiny_omni_text

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    fx = np.load(Path(__file__).parent / "fixtures" / "omni_qwen25o.npz")
    text, mmproj = write_tiny_omni_text(tmp_path / "text.gguf"), write_tiny_omni_mmproj(tmp_path / "mmproj.gguf")
    for k, p in (("text", text), ("mmproj", mmproj)):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(fx[f"sha256_{k}"]), f"{k}: not the fixture's file"
    media = [picture() if m == "picture" else clips(("short",))["short"] for m in MEDIA[0]]
    cpu, gpu = (Vision(Engine(text, device=d, n_ctx=N_CTX, n_batch=64, threads=1), mmproj) for d in ("cpu", "gpu"))
    assert type(gpu.audio.encoder.be).__name__ == "GPUBackend"
    caches, last = [], []
    for side in (cpu, gpu):
        segs = side.segments(PROMPTS[0], media)
        cache = side.engine.new_cache()
        logits = side.engine.eval(cache, side.prefill(cache, segs))[-1]
        np.testing.assert_allclose(logits, fx["logits_0"], atol=2e-3)
        assert logits.argmax() == fx["logits_0"].argmax()
        caches.append(cache)
        last.append((segs, logits))
    (cs, cl), (gs, gl) = last
    at = [i for i, s in enumerate(cs) if not isinstance(s, list)][MEDIA[0].index("clip")]  # (the clip's segment)
    assert cs[at].shape == gs[at].shape == (750, cpu.engine.cfg.n_embd) and rel_err(cs[at], gs[at]) < BOUND
    assert rel_err(cl, gl) < BOUND
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(caches[0], [tok])[-1], gpu.engine.eval(caches[1], [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1

