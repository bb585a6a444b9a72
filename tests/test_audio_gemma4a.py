"""Audio in for Gemma 4 E2B/E4B (llama.cpp's audio projector type "gemma4a", models/gemma4a_audio.py) before its
Gemma 4 text model: libmtmd's spectrogram (30 s pieces, a 320-sample window in a 512-point FFT, magnitudes, an HTK
mel bank, natural log), the conformer (two convolutions with channel LayerNorms, blocks of half FFNs, chunked local
attention with relative positions, a causal convolution module, all RMSNorms, clippable products) and the embedder,
``<|audio>`` and ``<audio|>`` around the clip and its rows read causally (runtime/audio.py), held to llama.cpp's
libmtmd on the tiny pair of tiny_audio_gemma4a.py (fixture: tools/make_audio_gemma4a_fixtures.py).  The WAV files
and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from audio_checks import (CLIPS, check_gpu_mel_rows, check_info, check_logits, check_lone_marker, check_mel_rows, check_missing_tensor,
                          check_other_width, check_run_takes_the_clip, check_too_short, config_of, needs_gpu, tower_fixtures)  # fmt: skip

from kvrun.models import gemma4a_audio
from kvrun.models.gemma4a_audio import Gemma4AudioEncoder, load_gemma4a_config, log_mel
from kvrun.models.whisper_audio import load_wav
from tiny_audio_gemma4a import A_EMBD, AUDIO_TOKENS, N_MEL, N_TEXT, write_tiny_gemma4a_mmproj, write_tiny_gemma4a_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_gemma4a_fixtures import N_CTX, PROMPTS  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_gemma4a.npz")
# CLIPS (audio_checks'): short: 1.3 s, one piece of 129 frames; long: 31.5 s, pieces of 2999 and 149 frames
FRAMES = {"short": [129], "long": [2999, 149]}
ROWS = {"short": 33, "long": 788}  # (each piece's frames halved twice, rounded up: 33; 750 + 38)
ATOL = {"short": 1e-4, "long": 2e-3}  # (tests/test_audio2.py's bounds, rows from libmtmd's spectrogram; measured 3e-6, 1.9e-4)
#: the spectrogram's bound: libmtmd's float32 FFT against a float64 one (measured 2.7e-6); the rows from the WAV end
#: to end (measured 3e-6 and 3e-5: the fixture's spectrogram is printed with 6 decimals, the WAV's is not rounded)
MEL_ATOL, WAV_ATOL = 1e-4, 2e-3
LOGITS_ATOL = 1e-2


# the tiny text model and projector (the very bytes the fixture was made from), its CPU Gemma4AudioEncoder and Audio
pair, encoder, audio = tower_fixtures("gemma4a", write_tiny_gemma4a_text, write_tiny_gemma4a_mmproj,
                                      FIX, Gemma4AudioEncoder, load_gemma4a_config, N_CTX)


def pieces_of(name: str) -> list[np.ndarray]:
    """The fixture's spectrogram of each 30 s piece of a clip (a shorter piece's zeros past its end cut off)."""
    return [FIX[f"mel_{name}"][i][:, :n] for i, n in enumerate(FRAMES[name])]


def test_the_config_reads_the_encoder_and_the_text_width(pair):
    cfg = config_of(pair["mmproj"], load_gemma4a_config)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_text_embd, cfg.rows_per_chunk) == ("gemma4a", N_MEL, A_EMBD, N_TEXT, 750)


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_spectrogram_is_libmtmds(name):
    """Each 30 s piece: 160 zeros in front, frames of 512 samples every 160 under a 320-sample periodic Hann window,
    magnitudes through an HTK mel bank, natural log floored at 1e-3, no normalisation: libmtmd's within its float32
    FFT's noise."""
    mels = log_mel(load_wav(CLIPS[name]), N_MEL)
    want = pieces_of(name)
    assert [m.shape for m in mels] == [w.shape for w in want] == [(N_MEL, n) for n in FRAMES[name]]
    for m, w in zip(mels, want):
        np.testing.assert_allclose(m, w, atol=MEL_ATOL)


def test_the_spectrogram_fails_with_the_power_spectrum(monkeypatch):
    """The distinguishing step of the preprocessor: gemma4a's mel bank reads |FFT|, not |FFT|^2 as every other audio
    preprocessor of libmtmd's does: the power puts the spectrogram far off."""
    monkeypatch.setattr(gemma4a_audio, "magnitude", lambda power: power)
    m = log_mel(load_wav(CLIPS["short"]), N_MEL)[0]
    assert np.abs(m - pieces_of("short")[0]).max() > 1000 * MEL_ATOL


@pytest.mark.parametrize("name", ["short", "long"])
def test_the_encoders_rows_are_libmtmds(encoder, name):
    """The rows the conformer and embedder make of libmtmd's own spectrogram, piece by piece: libmtmd's within the
    audio bounds; from the WAV end to end within the spectrogram's noise carried through."""
    check_mel_rows(encoder, FIX, name, (ROWS[name], N_TEXT), ATOL[name], WAV_ATOL, pieces_of(name))


def test_the_rows_fail_without_the_blocked_relative_shift(encoder, monkeypatch):
    """The distinguishing step of the attention: key k of query q reads the relative distance 12 - (k - q) of its
    13 sinusoids (Transformer-XL's shift, blocked).  Each query reading them unshifted puts the rows far off."""
    monkeypatch.setattr(gemma4a_audio, "shift_index", lambda: np.minimum(np.arange(24)[None].repeat(12, 0), 13))
    rows = encoder.encode_mel(pieces_of("short")[0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


def test_the_rows_fail_without_the_clippable_bounds(encoder, monkeypatch):
    """Gemma4ClippableLinear: the tiny projector's bounds on attn_q's input and ffn_down_1's output bite; dropped,
    the rows are outside the bound."""
    monkeypatch.setattr(encoder, "clamps", {})
    rows = encoder.encode_mel(pieces_of("short")[0])
    assert np.abs(rows - FIX["embd_short"]).max() > 100 * ATOL["short"]


def test_the_rows_fail_without_the_f16_patches(encoder, monkeypatch):
    """ggml_conv_2d rounds the subsampling's patches and kernels to F16 whatever the file stores: float32
    convolutions put the rows 1.6e-3 off (ten times the bound)."""
    from kvrun.models.deepseekocr_image import Kernel

    monkeypatch.setattr(encoder, "convs", [(Kernel(k.w, False), b, n) for k, b, n in encoder.convs])
    rows = encoder.encode_mel(pieces_of("short")[0])
    assert np.abs(rows - FIX["embd_short"]).max() > 10 * ATOL["short"]


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_between_the_audio_markers(audio, name):
    """<|audio>, every piece's rows, <audio|>: mtmd_tokenize's ids (-1 a row)."""
    assert (audio.begin, audio.end) == AUDIO_TOKENS
    assert check_lone_marker(audio, FIX, name) == ROWS[name]


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the text, the clips' rows (causally: gemma4a's are not decoded non-causally)
    and the text: the same ids and positions, logits within 1e-2 of llama_get_logits_ith(-1)'s (logits ~17; measured
    3.8e-3 and 2.2e-3: llama.cpp's F16 K/V cache)."""
    check_logits(audio, FIX, PROMPTS[k], k, atol=LOGITS_ATOL)


def test_logits_fail_when_the_rows_see_each_other_both_ways(audio, monkeypatch):
    """(libmtmd decodes gemma4a's rows causally, unlike gemma4v's pictures.)  Fed as models/gemma4.py feeds a picture,
    each forward's rows seeing each other both ways, the logits are far from llama.cpp's (measured 0.53)."""
    monkeypatch.setattr(audio.encoder, "feed_context", lambda model: nullcontext())
    segs = audio.segments(PROMPTS[0], [CLIPS["short"]])
    cache = audio.engine.new_cache()
    logits = audio.engine.eval(cache, audio.prefill(cache, segs))[-1]
    assert np.abs(logits - FIX["logits_0"]).max() > 20 * LOGITS_ATOL


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_kvrun_info_describes_the_encoder(pair):
    check_info(pair, "gemma4a, a 2-layer Gemma 4 audio conformer")


def test_a_projector_without_its_input_projection_is_a_one_line_error(pair, tmp_path):
    check_missing_tensor(pair["mmproj"], tmp_path, "a.input_projection.weight", "a.input_projectioX.weight", load_gemma4a_config)


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    check_other_width(write_tiny_gemma4a_text(tmp_path / "text.gguf"), write_tiny_gemma4a_mmproj, tmp_path)


def test_a_clip_too_short_for_a_frame_is_a_one_line_error(encoder):
    check_too_short(encoder, 100, "takes at least 321")


@needs_gpu
def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator here), F16 matrices: the CPU's rows within 2e-3
    of their largest (tests/test_gpu_audio.py's bound)."""
    check_gpu_mel_rows(write_tiny_gemma4a_mmproj, tmp_path, Gemma4AudioEncoder, load_gemma4a_config, pieces_of("short")[0], (ROWS["short"], N_TEXT))
