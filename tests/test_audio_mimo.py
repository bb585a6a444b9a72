"""Audio in for MiMo-V2.5 (llama.cpp's audio projector type "mimo_audio", models/mimo_audio.py) before its mimo2 text
model: libmtmd's WAV decoding to 24 kHz (miniaudio's linear resampler and its low-pass), the natural-log magnitude mel
spectrogram, the audio tokenizer's causal encoder (full and windowed layers, neox rope, the skip from layer 2), the
downsampling conv, the residual vector quantizer and the code tables, the input-local transformer over groups and the
projection, and ``<|mimo_audio_start|>`` / ``<|mimo_audio_end|>`` around the clip (runtime/audio.py), held to
llama.cpp's libmtmd on the tiny pair of tiny_audio_mimo.py (fixture: tools/make_audio_mimo_fixtures.py).  The WAV
files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_clip_rows, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip

from kvrun.models import mimo_audio as M
from kvrun.models.mimo_audio import MimoAudioEncoder, load_mimo_audio_config, log_mel, resample
from kvrun.models.whisper_audio import load_wav
from kvrun.ops import get_backend
from tiny_audio_mimo import A_EMBD, A_LAYER, BINS, GROUP, MARKERS, MODES, N_MEL, N_TEXT_EMBD, WINDOW
from tiny_audio_mimo import write_tiny_mimo_audio_mmproj, write_tiny_mimo_audio_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_fixtures import TOWER_PROMPTS as PROMPTS  # noqa: E402
from make_audio_mimo_fixtures import N_CTX  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_mimo.npz")
# CLIPS (audio_checks'): short 1.3 s (31200 samples at 24 kHz, 131 frames), long 31.5 s (756000, 3151): one spectrogram
ROWS = {"short": 11, "long": 263}  # (frames halved twice, one row a started group of 3)
#: the rows' bounds (tests/test_audio_granite.py's; measured 6.8e-6 and 1.1e-5: the quantizer's codes all agree)
ATOL = {"short": 2e-4, "long": 2e-3}
#: the spectrogram's bound: libmtmd's debug entry reads the 16 kHz samples as they are (no decoder in the way), so the
#: fixture's ``mel_*`` is the preprocessor alone on them, 87 and 2101 frames (measured 1.3e-6 and 1.4e-6)
MEL_ATOL = 1e-4


# the tiny text model and projector (the very bytes the fixture was made from), its CPU MimoAudioEncoder and Audio
pair, encoder, audio = tower_fixtures("mimo_audio", write_tiny_mimo_audio_text, write_tiny_mimo_audio_mmproj,
                                      FIX, MimoAudioEncoder, load_mimo_audio_config, N_CTX)


def test_the_config_reads_the_encoder_the_quantizer_and_the_groups(pair):
    cfg = config_of(pair["mmproj"], load_mimo_audio_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_layer, cfg.n_text_embd) == ("mimo_audio", N_MEL, A_EMBD, A_LAYER, N_TEXT_EMBD)
    assert (cfg.modes, cfg.window, cfg.bins, cfg.group, cfg.rows_per_chunk) == (tuple(MODES), WINDOW, tuple(BINS), GROUP, 250)


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_spectrogram_is_libmtmds(name):
    """Reflect-padded 480 samples each end, |FFT| under a periodic 960-sample Hann window, the HTK mel bank at 24 kHz,
    the natural log floored at 1e-7, no clamp: libmtmd's within its float32 FFT's noise."""
    m = log_mel(load_wav(CLIPS[name]), N_MEL)
    want = FIX[f"mel_{name}"][0]
    assert m.shape == want.shape
    np.testing.assert_allclose(m, want, atol=MEL_ATOL)


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The WAV resampled to 24 kHz, its spectrogram through the encoder, the quantizer and the local transformer:
    libmtmd's rows within the audio bounds."""
    assert encoder.n_rows(load_wav(CLIPS[name]).size) == ROWS[name]
    check_clip_rows(encoder, FIX, name, (ROWS[name], N_TEXT_EMBD), ATOL[name])


def test_the_resampler_makes_one_and_a_half_samples_a_sample():
    """miniaudio's count (floor(1.5 n) from 16 kHz) and its delay: the first output is the zero before the clip."""
    x = load_wav(CLIPS["short"])
    y = resample(x)
    assert y.size == x.size * 3 // 2 and y[0] == 0.0


def _far(encoder, atol: float) -> bool:
    rows = encoder.encode(load_wav(CLIPS["short"]))
    return bool(np.abs(rows - FIX["embd_short"]).max() > atol)


@pytest.mark.parametrize("drop", ["resampler_lowpass", "causal_masks", "mid_layer_skip", "local_rope_theta"])
def test_the_rows_fail_without_a_distinguishing_step(encoder, monkeypatch, drop):
    """Each of MiMo's own steps matters: miniaudio's low-pass after the linear interpolation, the encoder's causal
    (and windowed) masks, the skip taken from layer 2 (here layer 1's instead), and the local transformer's own rope
    base.  Any one changed puts the rows far outside the bound (measured: 9.6, 9.6, 11.4 and 0.79 off)."""
    if drop == "resampler_lowpass":
        monkeypatch.setattr(M, "lowpass_biquads", lambda r_in, r_out, order=4: np.array([[1, 0, 0, 0, 0]], np.float32))
    elif drop == "causal_masks":
        monkeypatch.setattr(M, "causal_masks", lambda T, window: (np.zeros((T, T), np.float32),) * 2)
    elif drop == "mid_layer_skip":
        monkeypatch.setattr(M, "SKIP_LAYER", 1)
    else:
        monkeypatch.setattr(M, "LOCAL_THETA", M.THETA)
    assert _far(encoder, 100 * ATOL["short"])


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_between_its_markers(audio, name):
    assert (audio.begin, audio.end) == MARKERS
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the clips' rows and the text to the mimo2 model: the same ids and
    positions, logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "mimo_audio, a 4-layer audio tokenizer and local transformer (MiMo-V2.5)", "250 rows per 30 s")


def test_a_projector_without_its_code_tables_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "mm.a.code_embd.weight", "mm.a.code_embX.weight", load_mimo_audio_config)


def test_a_projector_without_a_local_layer_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "mm.a.local_blk.1.ln2.weight", "mm.a.local_blk.1.lnX.weight",
                         lambda g: MimoAudioEncoder(g, load_mimo_audio_config(g), get_backend("cpu")))  # fmt: skip


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_mimo_audio_text(tmp_path / "text.gguf"), write_tiny_mimo_audio_mmproj, tmp_path)


def test_a_clip_under_three_frames_is_a_one_line_error(encoder):
    check_too_short(encoder, 300, "takes at least 20 ms")


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    mel = log_mel(resample(load_wav(CLIPS["short"])), N_MEL)
    check_gpu_mel_rows(write_tiny_mimo_audio_mmproj, tmp_path, MimoAudioEncoder, load_mimo_audio_config, mel, (ROWS["short"], N_TEXT_EMBD))
