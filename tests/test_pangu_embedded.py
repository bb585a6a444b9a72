"""openPangu-Embedded (models/pangu_embedded.py).

The logits are llama.cpp's (the FIXTURE_MODELS test ``pangu-embedded``); here: the fixture fails without its biases or
its neox rope; a missing bias and FFN biases refused in one line; ``kvrun info`` and ``kvrun run`` on the tiny file.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend


def _layers(**fields):
    return lambda m: [setattr(L, f, v) for L in m.layers for f, v in fields.items()]


def test_the_fixture_sees_what_sets_pangu_apart(tmp_path):
    assert _fixture_error(tmp_path, "pangu-embedded", lambda m: None) < 1e-3
    for what, drop in {
        "attn_output bias": _layers(bo=None),
        "Q/K/V biases": _layers(bq=None, bk=None, bv=None),
        "neox rope": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, rope_neox=False)),
    }.items():
        assert _fixture_error(tmp_path, "pangu-embedded", drop) > 1e-2, what  # (10x the tolerance)


@pytest.mark.parametrize("tensor", ["blk.0.attn_q.bias", "blk.1.attn_v.bias", "blk.2.attn_output.bias", "blk.0.ffn_up.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "p.gguf", "pangu-embedded"))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class("pangu-embedded")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_ffn_biases_are_refused_in_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "p.gguf", "pangu-embedded"))
    g.tensors["blk.1.ffn_down.bias"] = g.tensors["blk.1.attn_output.bias"]
    with pytest.raises(UnsupportedModelError, match="'blk.1.ffn_down.bias': openPangu-Embedded with FFN or output biases") as e:
        model_class("pangu-embedded")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "p.gguf", "pangu-embedded"))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "pangu-embedded" in r.output, r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
