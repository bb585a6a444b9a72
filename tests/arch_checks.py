"""What the tests of tinymodel's FIXTURE_MODELS architectures share (test_moe3.py, test_moe4.py, test_maple.py...): the
logits held to llama.cpp's fixture, drops that take a feature of a built model away, the check that the fixture sees
each, the model built on the CPU, the one-line refusals, ``kvrun info`` and ``kvrun run`` on the tiny files.

Where a check takes ``where``: the folder to write the tiny file in (a test's ``tmp_path``), or the tiny file itself (a
module's fixture, a ``.gguf`` path)."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error, _run
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]


def _moe(**fields):
    return lambda m: [setattr(L.moe, f, v) for L in m.layers if getattr(L, "moe", None) is not None for f, v in fields.items()]


def _cfg(**fields):
    return lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, **fields))


def _sees_apart(tmp_path, name, drops, tol: float = 1e-3):
    assert _fixture_error(tmp_path, name, lambda m: None) < tol
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, name, drop) > 1e-2, what  # (10x the tolerance)


def _model(tmp_path, arch, g=None, **kw):
    g = g or GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch, **kw))
    return model_class(arch)(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


def _tiny_file(where: Path, arch: str, **kw) -> Path:
    return where if where.suffix == ".gguf" else write_tiny_model(where / f"{arch}.gguf", arch, **kw)


def check_logits_are_llamacpps(where: Path, name: str, chunk: int, tol: float) -> None:
    """FIXTURE_MODELS[name]'s tiny model run ``chunk`` tokens a step: its logits within ``tol`` of llama.cpp's (relative
    to their largest; fixtures/arch_<name>.npz), each position's argmax llama.cpp's."""
    fix = np.load(Path(__file__).parent / "fixtures" / f"arch_{name}.npz")
    path = where if where.suffix == ".gguf" else write_tiny_model(where / f"{name}.gguf", **FIXTURE_MODELS[name])
    cfg, model = _build(path)
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < tol, f"max relative logit error {err:.2e}"
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def check_refused(g: GGUFFile, arch: str, error: type[Exception], match: str, n_ctx: int = N_CTX, backend=None) -> None:
    """``arch``'s model of ``g`` (on the CPU unless ``backend``) refused with ``error`` saying ``match``, in one line."""
    with pytest.raises(error, match=match) as e:
        model_class(arch)(g, load_config(g), backend or get_backend("cpu"), n_ctx, N_BATCH)
    assert "\n" not in str(e.value)


def check_missing_tensor(where: Path, arch: str, tensor: str, named: str | None = None, **kw) -> None:
    """The tiny file without ``tensor`` refused in one line naming it (or ``named``: the one asked for in its place)."""
    g = GGUFFile(_tiny_file(where, arch, **kw))
    del g.tensors[tensor]
    check_refused(g, arch, GGUFError, f"'{named or tensor}' is missing")


def check_missing_key(where: Path, arch: str, key: str, says: str | None = None, **kw) -> None:
    """The tiny file without the metadata ``<arch>.<key>`` refused in one line naming it (or saying ``says``)."""
    g = GGUFFile(_tiny_file(where, arch, **kw))
    del g.metadata[f"{arch}.{key}"]
    check_refused(g, arch, GGUFError, says or f"metadata {arch}.{key} is missing")


def check_gpu_refused(where: Path, arch: str) -> None:
    gpu = types.SimpleNamespace(name="gpu", zeros=np.zeros)
    check_refused(GGUFFile(_tiny_file(where, arch)), arch, UnsupportedModelError, "CPU only", backend=gpu)


def check_info_and_run(where: Path, arch: str, *run_options: str) -> str:
    """``kvrun info`` names the tiny file's architecture, ``kvrun run`` (with ``run_options``) generates 4 tokens; what
    ``info`` said, for a test to read on."""
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(_tiny_file(where, arch))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and arch in r.output, r.output
    info = r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4", *run_options])
    assert r.exit_code == 0, r.output
    return info
