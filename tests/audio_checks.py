"""What the tests of audio projectors held to libmtmd's ``audio_<name>.npz`` fixtures share (test_audio*.py): the
clips (tools/make_audio_fixtures.py's), the tiny pair written again and checked against the fixture's digests, a
projector's config and CPU encoder, a clip's rows (from the WAV, or from libmtmd's own spectrogram) and its layout
behind a lone marker, the logits after clips and text, ``kvrun run --audio`` and ``kvrun info``, the one-line errors
every tower gives (a tensor missing, a text model of another width, a clip too short) and the encoder's rows on the
GPU (the emulator without one).  One body for every projector, so a check tightened here is tightened for all."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vision_checks import check_files, one_line_error

from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_fixtures import clips  # noqa: E402

CLIPS = clips()  # name: WAV bytes (short: 1.3 s, one 30 s chunk; long: 31.5 s, two)
#: a test of the encoder on the GPU: skipped with neither a GPU nor the host C++ compiler the emulator needs
needs_gpu = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")


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


def cpu_encoder(path: Path, encoder: Callable, load: Callable) -> Any:
    """The projector file's ``encoder`` (a tower's class) on the CPU, its config as ``load`` reads it."""
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.ops import get_backend

    g = GGUFFile(path)
    return encoder(g, load(g), get_backend("cpu"))


def tower_fixtures(name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[[Path], Path], fx, tower: Callable,
                   load: Callable, n_ctx: int) -> tuple[Callable, Callable, Callable]:  # fmt: skip
    """A tower's three module fixtures, ``pair, encoder, audio = tower_fixtures(...)`` in its test file: ``pair`` the
    tiny text model and projector written into a folder ``name`` (:func:`audio_pair`: the very bytes ``fx`` was made
    from), ``encoder`` the projector's ``tower`` on the CPU (:func:`cpu_encoder`, its config as ``load`` reads it),
    ``audio`` the text model of ``n_ctx`` with its projector (:func:`audio_of`)."""

    @pytest.fixture(scope="module")
    def pair(tmp_path_factory) -> dict:
        return audio_pair(tmp_path_factory, name, write_text, write_mmproj, fx)

    @pytest.fixture(scope="module")
    def encoder(pair) -> Any:
        return cpu_encoder(pair["mmproj"], tower, load)

    @pytest.fixture(scope="module")
    def audio(pair):
        return audio_of(pair, n_ctx)

    return pair, encoder, audio


def check_clip_rows(encoder, fx, name: str, shape: tuple[int, int], atol: float) -> None:
    """The clip ``name`` encoded is ``embd_<name>`` of ``fx``, of ``shape``, within ``atol``."""
    from kvrun.models.whisper_audio import load_wav

    rows, want = encoder.encode(load_wav(CLIPS[name])), fx[f"embd_{name}"]
    assert rows.shape == want.shape == shape
    np.testing.assert_allclose(rows, want, atol=atol)


def check_mel_rows(encoder, fx, name: str, shape: tuple[int, int], atol: float, wav_atol: float,
                   mels: Sequence[np.ndarray] | None = None) -> None:  # fmt: skip
    """libmtmd's own spectrogram of the clip ``name`` (``mel_<name>``, or its pieces ``mels`` in turn) encoded is
    ``embd_<name>`` of ``fx``, of ``shape``, within ``atol``; the clip from the WAV end to end within ``wav_atol``."""
    want = fx[f"embd_{name}"]
    rows = np.concatenate([encoder.encode_mel(m) for m in ([fx[f"mel_{name}"][0]] if mels is None else mels)])
    assert rows.shape == want.shape == shape
    np.testing.assert_allclose(rows, want, atol=atol)
    check_clip_rows(encoder, fx, name, shape, wav_atol)


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


def check_logits(audio, fx, prompt: str, k: int, names: Sequence[str] = ("short", "long"), atol: float = 2e-3) -> None:
    """``prompt`` with the clips ``names`` taken in turn at its markers, as mtmd_helper_eval_chunks feeds it: the ids
    and positions ``pids_<k>``, the cache at ``npast_<k>``, the logits within ``atol`` of ``logits_<k>``, the same
    argmax."""
    from kvrun.runtime.vision import MARKER

    given = [CLIPS[names[j % len(names)]] for j in range(prompt.count(MARKER))]
    segs = audio.segments(prompt, given)
    assert [t for s in segs for t in (s if isinstance(s, list) else [-1] * len(s))] == fx[f"pids_{k}"].tolist()
    cache = audio.engine.new_cache()
    logits = audio.engine.eval(cache, audio.prefill(cache, segs))[-1]
    assert cache.offset == int(fx[f"npast_{k}"])
    np.testing.assert_allclose(logits, fx[f"logits_{k}"], atol=atol)
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


def check_info(pair: dict, *says: str) -> None:
    """``kvrun info`` on the pair's projector: it runs and says each of ``says``."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["mmproj"])])
    assert r.exit_code == 0 and all(t in r.output for t in says), r.output


def check_missing_tensor(mmproj: Path, tmp_path: Path, name: str, renamed: str, load: Callable) -> None:
    """The projector with its tensor ``name`` renamed ``renamed`` (the same length): ``load`` (a config's loader, or an
    encoder's from the opened file) says in one line that ``name`` is missing."""
    from kvrun.loaders.gguf_file import GGUFFile

    (tmp_path / "broken.gguf").write_bytes(mmproj.read_bytes().replace(name.encode(), renamed.encode()))
    g = GGUFFile(tmp_path / "broken.gguf")
    try:
        with one_line_error(f"'{name}' is missing"):
            load(g)
    finally:
        g.close()


def check_other_width(text: Path, write_mmproj: Callable[..., Path], tmp_path: Path) -> None:
    """A projector making rows 48 wide beside the text model ``text`` (64 wide): a one-line error."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    engine = Engine(text, n_ctx=256, threads=1)
    with one_line_error("makes rows 48 wide"):
        Vision(engine, write_mmproj(tmp_path / "mm.gguf", n_text_embd=48))


def check_too_short(encoder, n_samples: int, says: str) -> None:
    """A clip of ``n_samples`` zeros, too short for the encoder: a one-line error that ``says``."""
    with one_line_error(says):
        encoder.encode(np.zeros(n_samples, np.float32))


def check_gpu_mel_rows(write_mmproj: Callable[..., Path], tmp_path: Path, encoder: Callable, load: Callable, mel: np.ndarray,
                       shape: tuple[int, int]) -> None:  # fmt: skip
    """The projector with F16 matrices: its ``encoder`` on the GPU (the emulator without one; models/vit_device.py's
    ops) makes the CPU one's rows of ``mel``, of ``shape``, brought down as a host array, within 2e-3 of their largest
    (tests/test_gpu_audio.py's bound)."""
    from gguf import GGMLQuantizationType as Q
    from gpu_checks import rel_err

    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.ops import get_backend

    path = write_mmproj(tmp_path / "f16.gguf", Q.F16)
    cpu, gpu = (encoder(GGUFFile(path), load(GGUFFile(path)), get_backend(d)) for d in ("cpu", "gpu"))
    assert type(gpu.be).__name__ == "GPUBackend"
    want, got = cpu.encode_mel(mel), gpu.encode_mel(mel)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == shape
    assert rel_err(want, got) < 2e-3
