"""Audio in for Qwen2-Audio (llama.cpp's audio projector type "qwen2a"), Voxtral ("voxtral") and Qwen2.5-Omni's audio
tower ("qwen2.5o", read as qwen2a, before an M-RoPE qwen2vl text model: a clip's rows take one position each, all
M-RoPE sections alike, as mtmd's set_position_mrope_1d gives them): the Whisper encoder of
models/whisper_audio.py with clip.cpp's average pooling before the post LayerNorm, Qwen2-Audio's linear projector and
Voxtral's stacked GELU MLP, and each layout's marker tokens around a clip (runtime/audio.py), held to llama.cpp's
libmtmd on the tiny pairs of tiny_audio2.py (fixtures: tools/make_audio2_fixtures.py).  The spectrogram, the WAV
files and where users put clips are Ultravox's (tests/test_audio.py)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.whisper_audio import WhisperAudioEncoder, load_audio_config, load_wav
from kvrun.ops import get_backend
from kvrun.runtime.audio import Audio
from kvrun.runtime.vision import MARKER, Vision
from tiny_audio import A_EMBD, N_MEL
from tiny_audio2 import STACK, write_tiny_audio2_mmproj, write_tiny_audio2_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio2_fixtures import N_CTX, PROMPTS, VARIANTS  # noqa: E402
from make_audio_fixtures import clips  # noqa: E402

FIX = {k: np.load(Path(__file__).parent / "fixtures" / f"audio_{k}.npz") for k in VARIANTS}
CLIPS = clips()  # name: WAV bytes (short: 1.3 s, one 30 s chunk; long: 31.5 s, two)
#: rows one 30 s chunk becomes: 1500 encoder rows pooled to 750, Voxtral's then stacked
ROWS = {"qwen2a": 750, "voxtral": 750 // STACK, "qwen25o": 750}
#: the projector type clip.cpp reads (Qwen2.5-Omni's audio side is Qwen2-Audio's)
PTYPE = {"qwen2a": "qwen2a", "voxtral": "voxtral", "qwen25o": "qwen2a"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory) -> dict:
    """A kind's tiny text model and projector, the very bytes its fixture was made from."""
    kind = request.param
    d = tmp_path_factory.mktemp(kind)
    files = {"text": write_tiny_audio2_text(d / "text.gguf", kind), "mmproj": write_tiny_audio2_mmproj(d / "mmproj.gguf", kind)}
    for k, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[kind][f"sha256_{k}"]), f"{kind} {k}: not the fixture's file"
    (d / "short.wav").write_bytes(CLIPS["short"])
    return {"kind": kind, "fix": FIX[kind], "short": d / "short.wav", **files}


@pytest.fixture(scope="module")
def audio(pair) -> Audio:
    from kvrun.runtime.engine import Engine

    return Vision(Engine(pair["text"], n_ctx=N_CTX, n_batch=64, threads=1), pair["mmproj"])


def test_the_config_counts_the_pooled_rows(pair):
    g = GGUFFile(pair["mmproj"])
    cfg = load_audio_config(g)
    g.close()
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
    rows = enc.encode(load_wav(CLIPS[name]))
    want = pair["fix"][f"embd_{name}"]
    assert rows.shape == want.shape == ((1 if name == "short" else 2) * ROWS[pair["kind"]], 64)
    np.testing.assert_allclose(rows, want, atol=atol)


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clip_between_its_layouts_marker_tokens(audio, pair, name):
    """Qwen2-Audio: <|audio_bos|> rows <|audio_eos|>; Voxtral: [BEGIN_AUDIO] rows (mtmd.cpp's aud_beg, aud_end)."""
    if name not in VARIANTS[pair["kind"]]:
        pytest.skip(f"{pair['kind']}'s fixture holds no {name} clip")
    assert (audio.begin, audio.end) == {"qwen2a": ("<|audio_bos|>", "<|audio_eos|>"), "voxtral": ("[BEGIN_AUDIO]", "")}[PTYPE[pair["kind"]]]
    segs = audio.segments(MARKER, [CLIPS[name]], encode=False)
    n = audio.image_positions(load_wav(CLIPS[name]))
    ids = [t for s in segs for t in (s if isinstance(s, list) else [-1] * n)]
    assert ids == pair["fix"][f"ids_{name}"].tolist()


@pytest.mark.parametrize("k", range(2))
def test_logits_after_audio_and_text_match_llama_cpp(audio, pair, k):
    """mtmd_helper_eval_chunks feeds the marker tokens, the clips' rows and the text: the same ids and positions,
    logits within 2e-3 of llama_get_logits_ith(-1)'s."""
    prompt, fix = PROMPTS[pair["kind"]][k], pair["fix"]
    names = list(VARIANTS[pair["kind"]])  # (the fixture's clips, taken in turn)
    given = [CLIPS[names[j % len(names)]] for j in range(prompt.count(MARKER))]
    segs = audio.segments(prompt, given)
    assert [t for s in segs for t in (s if isinstance(s, list) else [-1] * len(s))] == fix[f"pids_{k}"].tolist()
    cache = audio.engine.new_cache()
    logits = audio.engine.eval(cache, audio.prefill(cache, segs))[-1]
    assert cache.offset == int(fix[f"npast_{k}"])
    np.testing.assert_allclose(logits, fix[f"logits_{k}"], atol=2e-3)
    assert logits.argmax() == fix[f"logits_{k}"].argmax()


def test_kvrun_run_takes_the_clip(pair):
    prompt = f"Hear: {MARKER} what?"
    args = ["run", str(pair["text"]), "--mmproj", str(pair["mmproj"]), "-p", prompt, "--audio", str(pair["short"]),
            "-n", "4", "--temp", "0", "--no-stats", "-c", str(N_CTX)]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.stdout.startswith(prompt), r.output


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
