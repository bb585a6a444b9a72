"""Audio in for Granite Speech (llama.cpp's audio projector type "granite_speech", models/granite_speech_audio.py)
before its Granite text model: libmtmd's stacked log10-mel spectrogram (reflect padding, a periodic Hann window, the
HTK mel bank, Whisper's clamp, pairs of frames stacked), the conformer (macaron blocks attending within blocks of
frames with Shaw's relative positions, the CTC branch half way), the windowed Q-Former, and no text around the clip
(runtime/audio.py), held to llama.cpp's libmtmd on the tiny pair of tiny_audio_granite.py (fixture:
tools/make_audio_granite_fixtures.py).  The WAV files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_mel_rows, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip
from vision_checks import check_files

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import granite_speech_audio as gsa
from kvrun.models.granite_speech_audio import GraniteSpeechEncoder, load_granite_speech_config, log_mel
from kvrun.models.whisper_audio import load_wav, mel_filters
from kvrun.ops import get_backend
from tiny_audio_granite import A_EMBD, A_LAYER, CHUNK, N_MEL, N_TEXT, write_tiny_granite_speech_mmproj, write_tiny_granite_speech_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_granite_fixtures import N_CTX, PLUS, PROMPTS  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
FIX = np.load(FIXTURES / "audio_granite.npz")
# CLIPS (audio_checks'): short: 1.3 s, 131 mel frames; long: 31.5 s, 3151: one spectrogram each
FRAMES = {"short": 65, "long": 1575}  # (pairs of mel frames, an odd last one dropped)
ROWS = {"short": 15, "long": 315}  # (3 rows a started window of 15 stacked frames)
#: the rows' bounds (tests/test_audio2.py's for the long clip; measured 1e-6 on the short clip's windows but one: there
#: a Q-Former GELU input lies 1e-4 of an F16 step from a rounding midpoint, and ggml's float16-table GELU flips it,
#: 1.1e-4; 9.7e-4 on the long clip)
ATOL = {"short": 2e-4, "long": 2e-3}
#: the spectrogram's bounds, largest and mean: log10 and a clamp at the clip's peak - 8 leave libmtmd's float32 FFT
#: little to show (measured: 7.7e-7 and 2.5e-7 on both clips)
MEL_ATOL, MEL_MEAN = 1e-4, 1e-5


# the tiny text model and projector (the very bytes the fixture was made from), its CPU GraniteSpeechEncoder and Audio
pair, encoder, audio = tower_fixtures("granite_speech", write_tiny_granite_speech_text, write_tiny_granite_speech_mmproj,
                                      FIX, GraniteSpeechEncoder, load_granite_speech_config, N_CTX)


def test_the_config_reads_the_encoder_the_blocks_and_the_windows(pair):
    cfg = config_of(pair["mmproj"], load_granite_speech_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_layer, cfg.chunk, cfg.n_text_embd) == ("granite_speech", N_MEL, A_EMBD, A_LAYER, CHUNK, N_TEXT)
    assert (cfg.window, cfg.downsample, cfg.feature_layers, cfg.rows_per_chunk) == (15, 5, (), 300)


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_stacked_spectrogram_is_libmtmds(name):
    """Reflect-padded 256 samples each end, |FFT|^2 under a periodic Hann window, the HTK mel bank, log10, clamped at
    the peak - 8 and (x + 4) / 4, frames stacked in pairs: libmtmd's within its float32 FFT's noise."""
    m = log_mel(load_wav(CLIPS[name]), N_MEL)
    want = FIX[f"mel_{name}"][0]
    assert m.shape == want.shape == (2 * N_MEL, FRAMES[name])
    np.testing.assert_allclose(m, want, atol=MEL_ATOL)
    assert np.abs(m - want).mean() < MEL_MEAN


@pytest.mark.parametrize("swap", ["slaney_mel_bank", "symmetric_window"])
def test_the_spectrogram_fails_with_lfm2_audios_choices(monkeypatch, swap):
    """The distinguishing steps of the preprocessor: Granite's mel bank is HTK's without area norm and its window
    the periodic Hann, where libmtmd's other preprocessors (LFM2-Audio's, Whisper's) take Slaney's bank or the
    symmetric window.  Either swapped puts the spectrogram over ten times the bound off (measured: 1.3 and 2.8e-3)."""
    if swap == "slaney_mel_bank":
        monkeypatch.setattr(gsa, "htk_mel_filters", lambda n_mel: mel_filters(n_mel, gsa.N_FFT))
    else:
        periodic = gsa.hann_window
        monkeypatch.setattr(gsa, "hann_window", lambda periodic_=True: periodic(False))
    m = log_mel(load_wav(CLIPS["short"]), N_MEL)
    assert np.abs(m - FIX["mel_short"][0]).max() > 10 * MEL_ATOL


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The rows the conformer and Q-Former make of libmtmd's own spectrogram, and of the WAV end to end: libmtmd's
    within the audio bounds."""
    check_mel_rows(encoder, FIX, name, (ROWS[name], N_TEXT), ATOL[name], ATOL[name])


def test_the_rows_fail_without_shaws_relative_positions(encoder, monkeypatch):
    """The distinguishing step of the attention: q . R[i - j] added to each block's scores.  Without it the rows are
    far outside the bound."""
    monkeypatch.setattr(gsa, "shaw_scores", lambda xp, q, rel: 0)
    rows = encoder.encode_mel(FIX["mel_short"][0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


def test_the_rows_fail_without_the_ctc_branch(encoder, monkeypatch):
    """The CTC head's softmax brought back and added after block n_layer / 2: without it the rows are far off."""
    monkeypatch.setattr(gsa, "ctc_branch", lambda ops, enc, x: 0)
    rows = encoder.encode_mel(FIX["mel_short"][0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


def test_granite_speech_plus_concatenates_its_feature_layers(tmp_path):
    """``clip.audio.feature_layer`` (Granite Speech Plus): the input projection's and block 2's outputs (before the
    CTC branch) beside the last block's, the Q-Former's keys and values three times as wide: libmtmd's rows."""
    plus = np.load(FIXTURES / "audio_granite_plus.npz")
    path = check_files({"mmproj": write_tiny_granite_speech_mmproj(tmp_path / "plus.gguf", feature_layers=PLUS)}, plus)["mmproj"]
    g = GGUFFile(path)
    cfg = load_granite_speech_config(g)
    assert cfg.feature_layers == PLUS
    rows = GraniteSpeechEncoder(g, cfg, get_backend("cpu")).encode(load_wav(CLIPS["short"]))
    np.testing.assert_allclose(rows, plus["embd_short"], atol=ATOL["short"])


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_alone(audio, name):
    assert (audio.begin, audio.end) == ("", "")
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the clips' rows and the text: the same ids and positions, logits within
    2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "granite_speech, a 3-layer conformer and Q-Former (Granite Speech)", "300 rows per 30 s")


def test_a_projector_without_its_queries_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.proj_query", "a.proj_queXy", load_granite_speech_config)


def test_a_projector_without_a_blocks_positions_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.blk.1.attn_rel_pos_emb", "a.blk.1.attn_rel_pos_emX",
                         lambda g: GraniteSpeechEncoder(g, load_granite_speech_config(g), get_backend("cpu")))  # fmt: skip


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_granite_speech_text(tmp_path / "text.gguf"), write_tiny_granite_speech_mmproj, tmp_path)


def test_a_clip_under_one_frame_is_a_one_line_error(encoder):
    check_too_short(encoder, 100, "takes at least 160")


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    check_gpu_mel_rows(write_tiny_granite_speech_mmproj, tmp_path, GraniteSpeechEncoder, load_granite_speech_config, FIX["mel_short"][0],
                       (ROWS["short"], N_TEXT))  # fmt: skip
