"""What the tests of audio projectors held to libmtmd's ``audio_<name>.npz`` fixtures share (test_audio*.py): the
clips (tools/make_audio_fixtures.py's), the tiny pair written again and checked against the fixture's digests, a
projector's config, a clip's rows and its layout behind a lone marker, the logits after clips and text, and
``kvrun run --audio``.  One body for every projector, so a check tightened here is tightened for all."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vision_checks import check_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_fixtures import clips  # noqa: E402

CLIPS = clips()  # name: WAV bytes (short: 1.3 s, one 30 s chunk; long: 31.5 s, two)


def audio_pair(tmp_path_factory, name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[[Path], Path], fx) -> dict:
    """The tiny text model and projector written into a new folder ``name``, the very bytes ``fx`` was made from, and
    the short clip as a WAV file there: ``{"short", "text", "mmproj"}``."""
    d = tmp_path_factory.mktemp(name)
    files = check_files({"text": write_text(d / "text.gguf"), "mmproj": write_mmproj(d / "mmproj.gguf")}, fx)
    (d / "short.wav").write_bytes(CLIPS["short"])
    return {"short": d / "short.wav", **files}


def audio_of(pair: dict, n_ctx: int):
    """The pair's text model on the CPU with its projector: runtime/audio.py's Audio (through Vision)."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=n_ctx, n_batch=64, threads=1), pair["mmproj"])


def config_of(path: Path, load: Callable | None = None) -> Any:
    """The projector file's config as ``load`` (models/whisper_audio.py's load_audio_config unless told) reads it."""
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.models.whisper_audio import load_audio_config

    g = GGUFFile(path)
    try:
        return (load or load_audio_config)(g)
    finally:
        g.close()


def check_clip_rows(encoder, fx, name: str, shape: tuple[int, int], atol: float) -> None:
    """The clip ``name`` encoded is ``embd_<name>`` of ``fx``, of ``shape``, within ``atol``."""
    from kvrun.models.whisper_audio import load_wav

    rows, want = encoder.encode(load_wav(CLIPS[name])), fx[f"embd_{name}"]
    assert rows.shape == want.shape == shape
    np.testing.assert_allclose(rows, want, atol=atol)


def check_lone_marker(audio, fx, name: str) -> int:
    """A lone media marker with the clip ``name`` laid out as libmtmd's ``ids_<name>`` (-1 for each of the clip's
    rows, the layout's marker tokens around them); returns how many rows."""
    from kvrun.models.whisper_audio import load_wav
    from kvrun.runtime.vision import MARKER

    segs = audio.segments(MARKER, [CLIPS[name]], encode=False)
    n = audio.image_positions(load_wav(CLIPS[name]))
    ids = [t for s in segs for t in (s if isinstance(s, list) else [-1] * n)]
    assert ids == fx[f"ids_{name}"].tolist()
    return n


def check_logits(audio, fx, prompt: str, k: int, names: Sequence[str] = ("short", "long")) -> None:
    """``prompt`` with the clips ``names`` taken in turn at its markers, as mtmd_helper_eval_chunks feeds it: the ids
    and positions ``pids_<k>``, the cache at ``npast_<k>``, the logits within 2e-3 of ``logits_<k>``, the same argmax."""
    from kvrun.runtime.vision import MARKER

    given = [CLIPS[names[j % len(names)]] for j in range(prompt.count(MARKER))]
    segs = audio.segments(prompt, given)
    assert [t for s in segs for t in (s if isinstance(s, list) else [-1] * len(s))] == fx[f"pids_{k}"].tolist()
    cache = audio.engine.new_cache()
    logits = audio.engine.eval(cache, audio.prefill(cache, segs))[-1]
    assert cache.offset == int(fx[f"npast_{k}"])
    np.testing.assert_allclose(logits, fx[f"logits_{k}"], atol=2e-3)
    assert logits.argmax() == fx[f"logits_{k}"].argmax()


def check_run_takes_the_clip(pair: dict, n_ctx: int) -> None:
    """``kvrun run --audio`` with the pair's short clip: it runs and writes the prompt, then its reply."""
    from click.testing import CliRunner

    from kvrun.cli import main
    from kvrun.runtime.vision import MARKER

    prompt = f"Hear: {MARKER} what?"
    args = ["run", str(pair["text"]), "--mmproj", str(pair["mmproj"]), "-p", prompt, "--audio", str(pair["short"]),
            "-n", "4", "--temp", "0", "--no-stats", "-c", str(n_ctx)]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.stdout.startswith(prompt), r.output
