"""Audio in for Qwen2-Audio (llama.cpp's audio projector type "qwen2a"), Voxtral ("voxtral") and Qwen2.5-Omni's audio
tower ("qwen2.5o", read as qwen2a, before an M-RoPE qwen2vl text model: a clip's rows take one position each, all
M-RoPE sections alike, as mtmd's set_position_mrope_1d gives them): the Whisper encoder of
models/whisper_audio.py with clip.cpp's average pooling before the post LayerNorm, Qwen2-Audio's linear projector and
Voxtral's stacked GELU MLP, and each layout's marker tokens around a clip (runtime/audio.py), held to llama.cpp's
libmtmd on the tiny pairs of tiny_audio2.py (fixtures: tools/make_audio2_fixtures.py).  The spectrogram, the WAV
files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import audio_of, audio_pair, check_clip_rows, check_logits, check_lone_marker, check_run_takes_the_clip, config_of

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.whisper_audio import WhisperAudioEncoder, load_audio_config
from kvrun.ops import get_backend
from kvrun.runtime.audio import Audio
from tiny_audio import A_EMBD, N_MEL
from tiny_audio2 import STACK, write_tiny_audio2_mmproj, write_tiny_audio2_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio2_fixtures import N_CTX, PROMPTS, VARIANTS  # noqa: E402

FIX = {k: np.load(Path(__file__).parent / "fixtures" / f"audio_{k}.npz") for k in VARIANTS}
#: rows one 30 s chunk becomes: 1500 encoder rows pooled to 750, Voxtral's then stacked
ROWS = {"qwen2a": 750, "voxtral": 750 // STACK, "qwen25o": 750}
#: the projector type clip.cpp reads (Qwen2.5-Omni's audio side is Qwen2-Audio's)
PTYPE = {"qwen2a": "qwen2a", "voxtral": "voxtral", "qwen25o": "qwen2a"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory) -> dict:
    """A kind's tiny text model and projector, the very bytes its fixture was made from."""
    kind = request.param
    files = audio_pair(tmp_path_factory, kind, lambda p: write_tiny_audio2_text(p, kind), lambda p: write_tiny_audio2_mmproj(p, kind), FIX[kind])
    return {"kind": kind, "fix": FIX[kind], **files}


@pytest.fixture(scope="module")
def audio(pair) -> Audio:
    return audio_of(pair, N_CTX)


def test_the_config_counts_the_pooled_rows(pair):
    cfg = config_of(pair["mmproj"])
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.n_text_embd) == (PTYPE[pair["kind"]], N_MEL, A_EMBD, 64)
    assert cfg.stack_factor == (STACK if pair["kind"] == "voxtral" else 1)  # (Qwen2-Audio stacks nothing)
    assert cfg.rows_per_chunk == ROWS[pair["kind"]]


@pytest.mark.parametrize("name, atol", [("short", 1e-4), ("long", 2e-3)])
def test_the_encoders_rows_are_libmtmds(pair, name, atol):
    """Pooled, post-normed and projected rows, every 30 s chunk's in order (the long clip's first chunk, 30 s of
    signal, a little further off where ggml's F16 im2col rounds a convolution input the other way)."""
    if name not in VARIANTS[pair["kind"]]:
        pytest.skip(f"{pair['kind']}'s fixture holds no {name} clip")
    enc = WhisperAudioEncoder.load(pair["mmproj"], get_backend("cpu"))
    check_clip_rows(enc, pair["fix"], name, ((1 if name == "short" else 2) * ROWS[pair["kind"]], 64), atol)


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_between_its_layouts_marker_tokens(audio, pair, name):
    """Qwen2-Audio: <|audio_bos|> rows <|audio_eos|>; Voxtral: [BEGIN_AUDIO] rows (mtmd.cpp's aud_beg, aud_end)."""
    if name not in VARIANTS[pair["kind"]]:
        pytest.skip(f"{pair['kind']}'s fixture holds no {name} clip")
    assert (audio.begin, audio.end) == {"qwen2a": ("<|audio_bos|>", "<|audio_eos|>"), "voxtral": ("[BEGIN_AUDIO]", "")}[PTYPE[pair["kind"]]]
    check_lone_marker(audio, pair["fix"], name)


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, pair, k):
    """mtmd_helper_eval_chunks feeds the marker tokens, the clips' rows and the text: the same ids and positions,
    logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    check_logits(audio, pair["fix"], PROMPTS[pair["kind"]][k], k, VARIANTS[pair["kind"]])  # (the fixture's clips, taken in turn)


def test_kvrun_run_takes_the_clip(pair):
    check_run_takes_the_clip(pair, N_CTX)


def test_a_projector_without_its_projection_is_a_one_line_error(tmp_path):
    """A Voxtral projector without its stack factor is incomplete (Qwen2-Audio's needs none)."""
    p = write_tiny_audio2_mmproj(tmp_path / "v.gguf", "voxtral")
    raw = p.read_bytes().replace(b"clip.audio.projector.stack_factor", b"clip.audio.projector.stack_factoX")
    (tmp_path / "broken.gguf").write_bytes(raw)
    g = GGUFFile(tmp_path / "broken.gguf")
    with pytest.raises(KvrunError, match="stack_factor is missing") as e:
        load_audio_config(g)
    g.close()
    assert "\n" not in str(e.value)
