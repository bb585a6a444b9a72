"""Audio in for dots.note (llama.cpp's audio projector type "dots3note_a", models/dots3note_audio.py): libmtmd's
per-60 s-chunk log10-mel spectrogram (200 samples reflected before a chunk, zeros after a partial one, Whisper's Slaney
bank and periodic window, the chunk's own clamp, n / 160 frames kept), the stem of three stride-2 convolutions, the
RMSNorm ViT with NEOX rope on half of each head and SwiGLU, the LayerNorm-GELU adapter, and ``<|audio_comp_start|>`` /
``<|audio_comp_end|>`` around the clip (runtime/audio.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_audio_dots3note.py (fixture: tools/make_audio_dots3note_fixtures.py) beside dots.note's own text model
(``dots3note``, models/dots3note.py), which takes the clip's rows through ``Model.input_embd``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_clip_rows, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip

from kvrun.models import dots3note_audio as d3a
from kvrun.models.dots3note_audio import Dots3NoteAudioEncoder, load_dots3note_audio_config, log_mel, n_rows
from kvrun.models.whisper_audio import load_wav
from tiny_audio_dots3note import A_EMBD, A_LAYER, C_CONV, N_MEL, N_TEXT, write_tiny_dots3note_mmproj, write_tiny_dots3note_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_dots3note_fixtures import N_CTX  # noqa: E402
from make_audio_fixtures import TOWER_PROMPTS as PROMPTS  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_dots3note.npz")
# CLIPS (audio_checks'): short: 1.3 s, 130 frames kept (n / 160); long: 31.5 s, 3150: one 60 s chunk each
FRAMES = {"short": 130, "long": 3150}
ROWS = {"short": 17, "long": 394}  # (ceil(frames / 8): three stride-2 convolutions)
#: the rows' bounds (tests/test_audio_granite.py's; measured from the WAV 1.9e-6 on the short clip, 1.7e-3 on the long
#: one, where a handful of rows' stem patches sit on an F16 rounding midpoint that libmtmd's float32 FFT tips over;
#: the median row 7e-6 off)
ATOL = {"short": 2e-4, "long": 2e-3}
#: the spectrogram's bounds, largest and mean (measured: 7.2e-7 and 2.5e-7 on both clips)
MEL_ATOL, MEL_MEAN = 1e-4, 1e-5


# the tiny text model and projector (the very bytes the fixture was made from), its CPU Dots3NoteAudioEncoder and Audio
pair, encoder, audio = tower_fixtures("dots3note", write_tiny_dots3note_text, write_tiny_dots3note_mmproj,
                                      FIX, Dots3NoteAudioEncoder, load_dots3note_audio_config, N_CTX)


def test_the_config_reads_the_stem_and_the_vit(pair):
    cfg = config_of(pair["mmproj"], load_dots3note_audio_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_conv, cfg.n_embd, cfg.n_layer, cfg.n_text_embd) == ("dots3note_a", N_MEL, C_CONV, A_EMBD, A_LAYER, N_TEXT)
    assert cfg.rows_per_chunk == 375 and cfg.eps == pytest.approx(1e-6)


def test_a_clip_is_cut_in_60_s_chunks_each_an_eighth_of_its_frames():
    """61 s: a full 60 s chunk (6000 frames, 750 rows) and 1 s (100 frames, 13 rows); a sub-hop tail adds none."""
    assert n_rows(61 * 16000) == 750 + 13
    assert n_rows(60 * 16000 + 100) == 750


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_spectrogram_is_libmtmds(name):
    """200 samples reflected before the clip and zeros after it, |FFT|^2 under the periodic Hann window, Slaney's
    bank, log10, clamped at the chunk's peak - 8 and (x + 4) / 4, n / 160 frames: libmtmd's within float32 noise."""
    (m,) = log_mel(load_wav(CLIPS[name]), N_MEL)
    want = FIX[f"mel_{name}"][0]
    assert m.shape == want.shape == (N_MEL, FRAMES[name])
    np.testing.assert_allclose(m, want, atol=MEL_ATOL)
    assert np.abs(m - want).mean() < MEL_MEAN


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The clip from the WAV end to end through the stem, the ViT and the adapter: libmtmd's rows within the bounds."""
    check_clip_rows(encoder, FIX, name, (ROWS[name], N_TEXT), ATOL[name])


def test_the_rows_fail_without_the_partial_rope(encoder, monkeypatch):
    """The distinguishing step of the ViT: NEOX rope on the first half of each head.  Without it the rows are far
    outside the bound."""
    monkeypatch.setattr(d3a, "partial_rope", lambda ops, q, k, cos, sin: (q, k))
    rows = encoder.encode(load_wav(CLIPS["short"]))
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


def test_a_lone_marker_is_the_clip_between_its_markers(audio):
    assert (audio.begin, audio.end) == ("<|audio_comp_start|>", "<|audio_comp_end|>")
    assert check_lone_marker(audio, FIX, "short") == ROWS["short"]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the markers, the clips' rows and the text: the same ids and positions,
    logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "dots3note_a", "conv stem and rotary ViT (dots.note)", "375 rows per 30 s")


def test_a_projector_without_its_adapter_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "mm.a.norm_pre.weight", "mm.a.norm_prX.weight", load_dots3note_audio_config)


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_dots3note_text(tmp_path / "text.gguf"), write_tiny_dots3note_mmproj, tmp_path)


def test_a_clip_under_one_frame_is_a_one_line_error(encoder):
    check_too_short(encoder, 100, "takes at least 160")


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    check_gpu_mel_rows(write_tiny_dots3note_mmproj, tmp_path, Dots3NoteAudioEncoder, load_dots3note_audio_config, FIX["mel_short"][0],
                       (ROWS["short"], N_TEXT))  # fmt: skip
