"""What the tests of tinymodel's FIXTURE_MODELS architectures share (test_moe3.py, test_moe4.py): drops that take a
feature of a built model away, the check that the fixture sees each, the model built on the CPU, the one-line
refusals, ``kvrun info`` and ``kvrun run`` on the tiny files."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

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


def check_missing_tensor(tmp_path, arch, tensor, **kw):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch, **kw))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        _model(tmp_path, arch, g)
    assert "\n" not in str(e.value)


def check_gpu_refused(tmp_path, arch):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    gpu = types.SimpleNamespace(name="gpu", zeros=np.zeros)
    with pytest.raises(UnsupportedModelError, match="CPU only") as e:
        model_class(arch)(g, load_config(g), gpu, N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def check_info_and_run(tmp_path, arch):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and arch in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
