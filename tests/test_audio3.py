"""Audio in for GLM-ASR (llama.cpp's audio projector type "glma") and Music Flamingo ("musicflamingo", the Audio
Flamingo 3 family): the Whisper encoder of models/whisper_audio.py, then

* GLM-ASR's adapter: a LayerNorm with bias on the encoder's rows, the rows stacked 4 at a time, a GELU(erf) MLP with
  biases, and the learned ``v.boi`` / ``v.eoi`` rows before and after each 30 s chunk's (1500 rows -> 375 + 2); no
  tokens around a clip;
* Music Flamingo's: clip.cpp's average pooling before the post LayerNorm (1500 rows -> 750), a GELU(erf) MLP with
  biases, after the ``<sound>`` token,

held to llama.cpp's libmtmd on the tiny pairs of tiny_audio3.py (fixtures: tools/make_audio3_fixtures.py), and on
the GPU (the kernel emulator) to the CPU's rows.  The spectrogram, the WAV files and where users put clips are
Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import CLIPS, audio_of, audio_pair, check_clip_rows, check_logits, check_lone_marker, check_run_takes_the_clip, config_of
from gpu_checks import check_encoder_rows
from vision_checks import one_line_error

from kvrun.models import whisper_audio
from kvrun.models.vit_ops import HostViT
from kvrun.models.whisper_audio import WhisperAudioEncoder, load_wav
from kvrun.ops import get_backend
from kvrun.runtime.audio import Audio
from kvrun.runtime.vision import Vision
from tiny_audio import A_EMBD, N_MEL
from tiny_audio3 import KINDS, STACK, write_tiny_audio3_mmproj, write_tiny_audio3_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio3_fixtures import N_CTX, PROMPTS, VARIANTS  # noqa: E402

FIX = {k: np.load(Path(__file__).parent / "fixtures" / f"audio_{k}.npz") for k in VARIANTS}
#: rows one 30 s chunk becomes: GLM-ASR's 1500 stacked by 4, with its boi and eoi rows; Music Flamingo's pooled
ROWS = {"glma": 1500 // STACK + 2, "musicflamingo": 750}


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory) -> dict:
    """A kind's tiny text model and projector, the very bytes its fixture was made from."""
    kind = request.param
    files = audio_pair(tmp_path_factory, kind, lambda p: write_tiny_audio3_text(p, kind), lambda p: write_tiny_audio3_mmproj(p, kind), FIX[kind])
    return {"kind": kind, "fix": FIX[kind], **files}


@pytest.fixture(scope="module")
def audio(pair) -> Audio:
    return audio_of(pair, N_CTX)


def test_the_config_counts_each_projectors_rows(pair):
    cfg = config_of(pair["mmproj"])
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_text_embd) == (pair["kind"], N_MEL, A_EMBD, 64)
    assert cfg.stack_factor == (STACK if pair["kind"] == "glma" else 1)  # (Music Flamingo stacks nothing)
    assert cfg.rows_per_chunk == ROWS[pair["kind"]]


@pytest.mark.parametrize("name, atol", [("short", 1e-4), ("long", 2e-3)])
def test_the_encoders_rows_are_libmtmds(audio, pair, name, atol):
    """Every 30 s chunk's rows in order (GLM-ASR's each between its boi and eoi rows); the long clip's first chunk,
    30 s of signal, a little further off where ggml's F16 im2col rounds a convolution input the other way."""
    check_clip_rows(audio.encoder, pair["fix"], name, ((1 if name == "short" else 2) * ROWS[pair["kind"]], 64), atol)


def test_glma_rows_miss_libmtmds_without_the_adapter_layernorm(tmp_path, monkeypatch):
    """The fixture tells the adapter's LayerNorm apart: skipped, the rows are far off libmtmd's (the boi / eoi rows
    alone still match)."""
    enc = WhisperAudioEncoder.load(write_tiny_audio3_mmproj(tmp_path / "g.gguf", "glma"), get_backend("cpu"))
    norm = HostViT.layer_norm
    monkeypatch.setattr(HostViT, "layer_norm", staticmethod(lambda x, w, b, eps: x if w is enc.norm_pre else norm(x, w, b, eps)))
    rows, want = enc.encode(load_wav(CLIPS["short"])), FIX["glma"]["embd_short"]
    np.testing.assert_allclose(rows[[0, -1]], want[[0, -1]], atol=1e-6)
    assert np.abs(rows - want).max() > 0.1


def test_musicflamingo_rows_need_the_pooling(tmp_path, monkeypatch):
    """Without clip.cpp's average pooling the chunk is 1500 rows, not libmtmd's 750."""
    monkeypatch.setattr(whisper_audio, "POOLED", ("qwen2a", "voxtral"))
    enc = WhisperAudioEncoder.load(write_tiny_audio3_mmproj(tmp_path / "m.gguf", "musicflamingo"), get_backend("cpu"))
    assert enc.encode(load_wav(CLIPS["short"])).shape[0] == 1500 != FIX["musicflamingo"]["embd_short"].shape[0]


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_after_its_layouts_marker_token(audio, pair, name):
    """GLM-ASR: the rows alone (their own boi / eoi rows); Music Flamingo: <sound> rows (mtmd.cpp's aud_beg)."""
    assert (audio.begin, audio.end) == {"glma": ("", ""), "musicflamingo": ("<sound>", "")}[pair["kind"]]
    check_lone_marker(audio, pair["fix"], name)


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, pair, k):
    """mtmd_helper_eval_chunks feeds the marker tokens, the clips' rows and the text: the same ids and positions,
    logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, pair["fix"], PROMPTS[pair["kind"]][k], k, VARIANTS[pair["kind"]])  # (the fixture's clips, taken in turn)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_a_glma_projector_without_its_boi_row_is_a_one_line_error(tmp_path):
    p = write_tiny_audio3_mmproj(tmp_path / "g.gguf", "glma")
    (tmp_path / "broken.gguf").write_bytes(p.read_bytes().replace(b"v.boi", b"v.bo_"))
    with one_line_error("'v.boi' is missing"):
        WhisperAudioEncoder.load(tmp_path / "broken.gguf", get_backend("cpu"))


def test_a_text_model_of_another_width_is_a_one_line_error(tmp_path):
    from kvrun.runtime.engine import Engine

    text = write_tiny_audio3_text(tmp_path / "text.gguf", "musicflamingo")
    mmproj = write_tiny_audio3_mmproj(tmp_path / "mm.gguf", "musicflamingo", n_text_embd=32)
    with one_line_error("not this model's mmproj"):
        Vision(Engine(text, n_ctx=64, threads=1), mmproj)


@pytest.mark.heavy_emulation  # (on the emulator, tens of seconds: tests/conftest.py's sample leaves it out)
@pytest.mark.parametrize("kind", KINDS)
def test_the_rows_on_the_gpu_are_the_cpus(tmp_path, emulated, kind):
    """Each encoder and projector (F16 weights) on the GPU backend (the kernel emulator here: models/vit_device.py
    runs the forward of models/whisper_audio.py): the CPU's rows within 2e-3, GLM-ASR's boi and eoi rows included."""
    from gguf import GGMLQuantizationType as Q

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = write_tiny_audio3_mmproj(tmp_path / f"{kind}.gguf", kind, Q.F16)
    cpu, gpu = WhisperAudioEncoder.load(path, get_backend("cpu")), WhisperAudioEncoder.load(path, get_backend("gpu"))
    check_encoder_rows(cpu, gpu, load_wav(CLIPS["short"]), (ROWS[kind], 64))
