"""Audio in for NVIDIA's Parakeet encoder (llama.cpp's audio projector type "parakeet", models/parakeet_audio.py) before
its Nemotron-H text model: libmtmd's NeMo spectrogram from the file's own mel bank and window (pre-emphasis, natural
log of the sum plus 2^-24, every frame normalised by the clip's statistics), LFM2-Audio's FastConformer without biases
(its pointwise subsampling convolutions F16, the batch norm with its running statistics) and the RMSNorm / squared-ReLU
projector, no text around the clip (runtime/audio.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_audio_parakeet.py (fixture: tools/make_audio_parakeet_fixtures.py).  The WAV files and where users put clips are
Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_mel_rows, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip

from kvrun.models.parakeet_audio import ParakeetEncoder, load_parakeet_config, log_mel
from kvrun.models.whisper_audio import load_wav
from tiny_audio_parakeet import A_EMBD, C_SUB, K_DW, N_MEL, N_TEXT, write_tiny_parakeet_mmproj, write_tiny_parakeet_text
from vision_checks import one_line_error

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_parakeet_fixtures import N_CTX, PROMPTS  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_parakeet.npz")
# CLIPS (audio_checks'): short: 1.3 s, 131 frames; long: 31.5 s, 3151 frames: one spectrogram each
ROWS = {"short": 17, "long": 394}  # (the frames over 8, rounded up)
#: the rows' bounds from libmtmd's spectrogram (tests/test_audio2.py's long one; measured 3.7e-6 and 6.3e-4 on a VNNI host,
#: whose matrix products meet the activations as int8 as ggml's do; 5.1e-4 short on an AVX2 host, whose many-row
#: products meet them in float32)
ATOL = {"short": 1e-3, "long": 2e-3}
#: the spectrogram's bound (measured 1.3e-5: libmtmd's float32 FFT) and the rows' from the WAV end to end (measured
#: 5.6e-5 short, 8.7e-4 long)
MEL_ATOL, WAV_ATOL = 1e-4, 2e-3


# the tiny text model and projector (the very bytes the fixture was made from), its CPU ParakeetEncoder and Audio
pair, encoder, audio = tower_fixtures("parakeet", write_tiny_parakeet_text, write_tiny_parakeet_mmproj,
                                      FIX, ParakeetEncoder, load_parakeet_config, N_CTX)


def test_the_config_reads_the_encoder_the_subsamplings_width_and_the_kernel(pair):
    cfg = config_of(pair["mmproj"], load_parakeet_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_sub, cfg.kernel, cfg.n_text_embd) == ("parakeet", N_MEL, A_EMBD, C_SUB, K_DW, N_TEXT)
    assert cfg.eps == pytest.approx(1e-5) and cfg.rows_per_chunk == 376


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_spectrogram_is_libmtmds(encoder, name):
    """Pre-emphasis, 256 zeros each end, |FFT|^2 under the file's window, the file's mel bank, log of the sum plus
    2^-24, each bin normalised by the clip's n / 160 frames: libmtmd's within its float32 FFT's noise, the last frame
    normalised too (LFM2-Audio's preprocessor zeroes it)."""
    m = log_mel(load_wav(CLIPS[name]), encoder.filters, encoder.window)
    want = FIX[f"mel_{name}"][0]
    assert m.shape == want.shape == (N_MEL, {"short": 131, "long": 3151}[name])
    np.testing.assert_allclose(m, want, atol=MEL_ATOL)
    assert (m[:, -1] != 0).all()


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The rows the FastConformer and projector make of libmtmd's own spectrogram: libmtmd's within the audio bounds;
    from the WAV end to end too."""
    check_mel_rows(encoder, FIX, name, (ROWS[name], N_TEXT), ATOL[name], WAV_ATOL)


def test_the_rows_fail_with_float32_pointwise_convolutions(encoder, monkeypatch):
    """The distinguishing step of the subsampling: parakeet.cpp's pointwise convolutions are ggml_conv_2d (F16
    patches and kernel; LFM2-Audio's conformer.cpp runs them direct, in float32).  In float32 the rows are outside the
    bound, several times further from libmtmd's than the F16 ones (2.2e-3 against 5.1e-4 on an AVX2 host; on a VNNI
    host, against 3.7e-6)."""
    f16 = np.abs(encoder.encode_mel(FIX["mel_short"][0]) - FIX["embd_short"]).max()
    monkeypatch.delattr(encoder, "pw_kernels")
    f32 = np.abs(encoder.encode_mel(FIX["mel_short"][0]) - FIX["embd_short"]).max()
    assert f32 > ATOL["short"] and f32 > 4 * f16


def test_the_rows_fail_without_the_batch_norms_running_statistics(encoder, monkeypatch):
    """The distinguishing step of the convolution module: the batch norm unfolded, (x - mean) / sqrt(var) before its
    scale and shift.  Without the running statistics the rows are far off."""
    for L in encoder.layers:
        monkeypatch.setitem(L, "conv_dw_b", np.zeros_like(L["conv_dw_b"]))
    rows = encoder.encode_mel(FIX["mel_short"][0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_alone(audio, name):
    assert (audio.begin, audio.end) == ("", "")
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the clips' rows and the text to Nemotron-H: the same ids and positions,
    logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "parakeet, a 2-layer FastConformer (Parakeet)")


def test_a_projector_without_its_mel_bank_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.mel_filters", "a.mel_filterX", load_parakeet_config)


def test_a_text_model_of_another_width_is_a_one_line_error(pair, tmp_path):
    check_other_width(pair["text"], write_tiny_parakeet_mmproj, tmp_path)


def test_a_clip_under_two_frames_is_a_one_line_error(encoder):
    check_too_short(encoder, 300, "takes at least 320")


def test_a_clip_past_llama_cpps_windowed_attention_is_a_one_line_error(encoder):
    """Past 8192 rows parakeet.cpp attends within windows of +-128 rows, a graph llama.cpp 0.3.36 fails to build (a
    ggml_can_mul_mat assertion): kvrun refuses such a clip before any work."""
    with one_line_error("takes up to 8192 rows"):
        encoder.encode(np.broadcast_to(np.float32(0), (8192 * 8 * 160,)))


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    check_gpu_mel_rows(write_tiny_parakeet_mmproj, tmp_path, ParakeetEncoder, load_parakeet_config, FIX["mel_short"][0], (ROWS["short"], N_TEXT))
