"""Audio in for LFM2-Audio (llama.cpp's audio projector type "lfm2a", models/lfm2a_audio.py) before its LFM2 text
model: libmtmd's NeMo spectrogram (pre-emphasis, a 512-point FFT under a 400-sample window, natural log, each mel bin
normalised over the clip), the FastConformer (conv subsampling by 8, macaron blocks with Transformer-XL relative
attention and the convolution module) and the adapter, and no text around the clip (runtime/audio.py), held to
llama.cpp's libmtmd on the tiny pair of tiny_audio_lfm2a.py (fixture: tools/make_audio_lfm2a_fixtures.py).  The
WAV files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_mel_rows, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip

from kvrun.models import lfm2a_audio
from kvrun.models.lfm2a_audio import Lfm2AudioEncoder, load_lfm2a_config, log_mel
from kvrun.models.whisper_audio import load_wav
from tiny_audio_lfm2a import A_EMBD, C_SUB, N_MEL, N_TEXT, write_tiny_lfm2a_mmproj, write_tiny_lfm2a_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_lfm2a_fixtures import N_CTX, PROMPTS  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_lfm2a.npz")
# CLIPS (audio_checks'): short: 1.3 s, 131 frames; long: 31.5 s, 3151 frames: one spectrogram each
ROWS = {"short": 17, "long": 394}  # (the frames halved three times, rounded up)
ATOL = {"short": 1e-4, "long": 2e-3}  # (tests/test_audio2.py's bounds, rows from libmtmd's spectrogram; measured 5e-6, 2e-5)
#: the spectrogram's bounds, largest and mean: libmtmd's float32 FFT leaves the lowest mel bin's dips (its power cut
#: by the pre-emphasis) ~1e-3 off a float64 one in normalised units (measured: 1.4e-3 short, 4.8e-3 long; 2.6e-5 and
#: 3.6e-5 mean); through the F16 patches of the first convolution that is 1.8e-3 (short) and 9e-3 (long) on the rows
#: made from the WAV end to end
MEL_ATOL, MEL_MEAN, WAV_ATOL = 1e-2, 1e-4, 2e-2


# the tiny text model and projector (the very bytes the fixture was made from), its CPU Lfm2AudioEncoder and Audio
pair, encoder, audio = tower_fixtures("lfm2a", write_tiny_lfm2a_text, write_tiny_lfm2a_mmproj,
                                      FIX, Lfm2AudioEncoder, load_lfm2a_config, N_CTX)


def test_the_config_reads_the_encoder_and_the_subsamplings_width(pair):
    cfg = config_of(pair["mmproj"], load_lfm2a_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_sub, cfg.n_text_embd) == ("lfm2a", N_MEL, A_EMBD, C_SUB, N_TEXT)


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_spectrogram_is_libmtmds(name):
    """Zero-padded 256 samples each end, pre-emphasis, |FFT|^2 under a symmetric Hann window, natural log, each mel
    bin normalised over the clip's n / 160 frames and the last frame zero: libmtmd's within its float32 FFT's noise."""
    m = log_mel(load_wav(CLIPS[name]), N_MEL)
    want = FIX[f"mel_{name}"][0]
    assert m.shape == want.shape == (N_MEL, {"short": 131, "long": 3151}[name])
    np.testing.assert_allclose(m, want, atol=MEL_ATOL)
    assert np.abs(m - want).mean() < MEL_MEAN and not m[:, -1].any()


def test_the_spectrogram_fails_with_a_periodic_window(monkeypatch):
    """The distinguishing step of the preprocessor: libmtmd's window is the symmetric Hann (cos(2 pi i / 399)); the
    periodic one puts the spectrogram's mean error ten times the bound off."""
    periodic = lfm2a_audio.hann_window
    monkeypatch.setattr(lfm2a_audio, "hann_window", lambda period: periodic(period + 1))
    m = log_mel(load_wav(CLIPS["short"]), N_MEL)
    assert np.abs(m - FIX["mel_short"][0]).mean() > 10 * MEL_MEAN


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The rows the FastConformer and adapter make of libmtmd's own spectrogram: libmtmd's within the audio bounds;
    from the WAV end to end within the spectrogram's noise carried through."""
    check_mel_rows(encoder, FIX, name, (ROWS[name], N_TEXT), ATOL[name], WAV_ATOL)


def test_the_rows_fail_without_the_relative_shift(encoder, monkeypatch):
    """The distinguishing step of the attention: Transformer-XL's shift, query i reading relative position i - j.
    Without it (each query reading the first T relative positions) the rows are far outside the bound."""
    monkeypatch.setattr(lfm2a_audio, "rel_shift", lambda xp, bd: bd[:, :, : bd.shape[1]])
    rows = encoder.encode_mel(FIX["mel_short"][0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * WAV_ATOL


def test_the_rows_fail_without_the_f16_patches(encoder, monkeypatch):
    """ggml_conv_2d rounds the first convolution's patches and kernel to F16 whatever the file stores: the float32
    convolution puts the rows 20 times the bound off."""
    from kvrun.models.deepseekocr_image import Kernel

    monkeypatch.setattr(encoder, "conv0", Kernel(encoder.conv0.w, False))
    rows = encoder.encode_mel(FIX["mel_short"][0])
    assert np.abs(rows - FIX["embd_short"]).max() > 10 * ATOL["short"]


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_alone(audio, name):
    assert (audio.begin, audio.end) == ("", "")
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the clips' rows and the text: the same ids and positions, logits within
    2e-3 of llama_get_logits_ith(-1)'s (measured: 1.7e-4 and 8.8e-4)."""
    check_logits(audio, FIX, PROMPTS[k], k)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "lfm2a, a 2-layer FastConformer")


def test_a_projector_without_its_subsampling_output_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.pre_encode.out.weight", "a.pre_encode.ouX.weight", load_lfm2a_config)


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_lfm2a_text(tmp_path / "text.gguf"), write_tiny_lfm2a_mmproj, tmp_path)


def test_a_clip_under_two_frames_is_a_one_line_error(encoder):
    check_too_short(encoder, 300, "takes at least 320")


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    check_gpu_mel_rows(write_tiny_lfm2a_mmproj, tmp_path, Lfm2AudioEncoder, load_lfm2a_config, FIX["mel_short"][0], (ROWS["short"], N_TEXT))
