"""Audio in for Qwen3-Omni (llama.cpp's audio projector type "qwen3a", models/qwen3a_audio.py) before its M-RoPE text
model: libmtmd's own spectrogram windows (800 frames, zero-padded to 100-frame chunks), three conv2d downsamplings a
chunk, the encoder over each window, the GELU projector, and ``<|audio_start|>`` rows ``<|audio_end|>`` around the
clip (runtime/audio.py), held to llama.cpp's libmtmd on the tiny pair of tiny_audio_qwen3a.py (fixture:
tools/make_audio_qwen3a_fixtures.py).  The WAV files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, audio_of, audio_pair, check_clip_rows, check_info, check_logits, check_lone_marker, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, config_of, cpu_encoder, needs_gpu)  # fmt: skip
from gguf import GGMLQuantizationType as Q

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import qwen3a_audio
from kvrun.models.qwen3a_audio import Qwen3AudioEncoder, load_qwen3a_config, log_mel_windows
from kvrun.models.whisper_audio import load_wav
from kvrun.ops import get_backend
from kvrun.runtime.audio import Audio
from kvrun.runtime.vision import Vision
from tiny_audio_qwen3a import A_EMBD, C_DOWN, N_MEL, write_tiny_qwen3a_mmproj, write_tiny_qwen3a_text
from vision_checks import one_line_error

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_qwen3a_fixtures import N_CTX, PROMPTS  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_qwen3a.npz")
# CLIPS (audio_checks'): short: 1.3 s, 131 frames, one window of 2 chunks; long: 31.5 s, 3151 frames, 4 windows
ROWS = {"short": 2 * 13, "long": (3 * 8 + 8) * 13}  # (the last window's 751 frames padded to 8 chunks)
ATOL = {"short": 1e-4, "long": 2e-3}  # (tests/test_audio2.py's bounds; measured: 3e-6 and 4e-4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """The tiny text model and projector, the very bytes the fixture was made from."""
    return audio_pair(tmp_path_factory, "qwen3a", write_tiny_qwen3a_text, write_tiny_qwen3a_mmproj, FIX)


@pytest.fixture(scope="module")
def encoder(pair) -> Qwen3AudioEncoder:
    return cpu_encoder(pair["mmproj"], Qwen3AudioEncoder, load_qwen3a_config)


@pytest.fixture(scope="module")
def audio(pair) -> Audio:
    return audio_of(pair, N_CTX)


def test_the_config_reads_the_tower_and_the_convolutions_width(pair):
    cfg = config_of(pair["mmproj"], load_qwen3a_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_down, cfg.n_text_embd) == ("qwen3a", N_MEL, A_EMBD, C_DOWN, 64)


def test_the_spectrogram_window_is_libmtmds():
    """Reflected 200 samples each end, Whisper's log-mel clamped at the clip's max - 8, the 131 frames of 1.3 s
    padded with zeros to two 100-frame chunks: libmtmd's to the 6 decimals its debug dump prints."""
    (w,) = log_mel_windows(load_wav(CLIPS["short"]), N_MEL)
    assert w.shape == FIX["mel_short"][0].shape == (N_MEL, 200)
    np.testing.assert_allclose(w, FIX["mel_short"][0], atol=2e-6)
    assert not w[:, 131:].any()


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """Every window's rows in order: 13 a 100-frame chunk (the long clip's four windows, the last padded)."""
    check_clip_rows(encoder, FIX, name, (ROWS[name], 64), ATOL[name])


def test_the_fixture_fails_when_windows_attend_across(encoder, monkeypatch):
    """The distinguishing step: attention within each 800-frame window only.  One window over the whole long clip
    (the chunks otherwise the same) is far outside the bound."""
    monkeypatch.setattr(qwen3a_audio, "WINDOW", 3200)
    rows = encoder.encode(load_wav(CLIPS["long"]))
    assert rows.shape == FIX["embd_long"].shape and np.abs(rows - FIX["embd_long"]).max() > 50 * ATOL["long"]


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_between_audio_start_and_end(audio, name):
    assert (audio.begin, audio.end) == ("<|audio_start|>", "<|audio_end|>")
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the markers, the clips' rows (one M-RoPE position a row, all sections alike)
    and the text: the same ids and positions, logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k, ("short", "long"))


def test_the_logits_fail_when_the_rows_turn_as_text(audio, monkeypatch):
    """The distinguishing step of the layout: libmtmd gives a clip's rows all four M-RoPE positions (p, p, p, p), so
    the rope pairs past the sections turn too.  Fed with text's (p, p, p, 0) the logits are far outside the bound."""
    from contextlib import nullcontext

    monkeypatch.setattr("kvrun.models.qwen3a_audio.Qwen3AudioEncoder.feed_context", lambda self, model: nullcontext())
    segs = audio.segments(PROMPTS[0], [CLIPS["short"]])
    cache = audio.engine.new_cache()
    logits = audio.engine.eval(cache, audio.prefill(cache, segs))[-1]
    assert np.abs(logits - FIX["logits_0"]).max() > 0.5


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_tower(pair):
    check_info(pair, "qwen3a, a ", "Qwen3-Omni audio encoder")


def test_a_projector_without_its_conv_out_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.conv_out.weight", "a.conv_ouX.weight", load_qwen3a_config)


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_qwen3a_text(tmp_path / "text.gguf"), write_tiny_qwen3a_mmproj, tmp_path)


def test_a_text_model_with_deepstack_levels_is_a_one_line_error(pair, tmp_path):
    """A Qwen3-VL text model taking DeepStack levels embeds rows wider than the tower's (libmtmd refuses the pair)."""
    from kvrun.runtime.engine import Engine

    engine = Engine(write_tiny_qwen3a_text(tmp_path / "ds.gguf", deepstack=2), n_ctx=256, threads=1)
    audio = Vision(engine, pair["mmproj"])
    with one_line_error("not this model's projector"):
        audio.prefill(engine.new_cache(), audio.segments(PROMPTS[0], [CLIPS["short"]]))


@needs_gpu
def test_the_tower_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    from gpu_checks import check_encoder_rows

    path = write_tiny_qwen3a_mmproj(tmp_path / "f16.gguf", Q.F16)
    cpu, gpu = (Qwen3AudioEncoder(GGUFFile(path), load_qwen3a_config(GGUFFile(path)), get_backend(d)) for d in ("cpu", "gpu"))
    check_encoder_rows(cpu, gpu, load_wav(CLIPS["short"]), (ROWS["short"], 64))


@needs_gpu
def test_a_clip_beside_a_gpu_text_model_gives_libmtmds_logits(pair, emulated):
    """Beside a text model on the GPU the tower encodes there and the rows turn by their (p, p, p, p) positions on
    the device too: libmtmd's logits within the CPU's 2e-3."""
    from kvrun.runtime.engine import Engine

    gpu = Vision(Engine(pair["text"], device="gpu", n_ctx=N_CTX, n_batch=64, threads=1), pair["mmproj"])
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    cache = gpu.engine.new_cache()
    logits = gpu.engine.eval(cache, gpu.prefill(cache, gpu.segments(PROMPTS[0], [CLIPS["short"]])))[-1]
    np.testing.assert_allclose(logits, FIX["logits_0"], atol=2e-3)
