"""Nanbeige's model (models/nanbeige.py): the Llama block, its layers run num_loops times over with output_norm between.

The logits are llama.cpp's (tests/fixtures/arch_nanbeige.npz and arch_nanbeige-skip.npz, from
``tools/make_arch_fixtures.py nanbeige nanbeige-skip``; test_models.py's FIXTURE_MODELS test runs them too, prefill and
decode); here: the fixture held in both chunkings, and failed without each of what sets Nanbeige apart (and with the
attention.scale llama.cpp leaves unread honoured); the loops' caches; a missing tensor or key in one line; ``kvrun info``
and ``kvrun run`` on the tiny file; the GPU (emulator where there is none) against the CPU.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from arch_checks import _cfg, _model, _sees_apart, check_info_and_run, check_missing_tensor
from click.testing import CliRunner
from test_info_hooks import held_per_token, info_line
from test_models import N_BATCH, N_CTX, _build, _run
from tiny_nanbeige import GEOMETRY, N_LOOPS
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cli import main
from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.common import make_rope
from kvrun.models.nanbeige import NanbeigeModel

NAME = "nanbeige"
#: the largest relative logit error measured against llama.cpp 0.3.36: 2.5e-4 (both runtimes' float16 K/V)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    fix = np.load(f"{__file__.rsplit('/', 1)[0]}/fixtures/arch_{NAME}.npz")
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[NAME]))
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < TOLERANCE, f"max relative logit error {err:.2e}"
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def _scale(s: float):
    def drop(m):
        specs = m.layer_specs()
        m.layer_specs = lambda: [dataclasses.replace(spec, scale=s) for spec in specs]

    return drop


def _rope_without_factors(m):
    m.rope_cos, m.rope_sin = make_rope(m.cfg, N_CTX, m.cfg.rope_theta)


def test_the_fixture_sees_what_sets_nanbeige_apart(tmp_path):
    """The second loop, the norm between the loops (and, where the file skips it, its absence), rope over consecutive
    pairs, the rope factors: each taken away costs whole logits; so does honouring the file's attention.scale."""
    drops = {
        "loops": lambda m: setattr(m, "n_loops", 1),
        "the norm between the loops": lambda m: setattr(m, "skip_loop_final_norm", True),
        "rope pairs": _cfg(rope_neox=True),
        "rope factors": _rope_without_factors,
        "attention.scale unread": _scale(0.5),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)
    _sees_apart(tmp_path, "nanbeige-skip", {"no norm between the loops": lambda m: setattr(m, "skip_loop_final_norm", False)}, TOLERANCE)


def test_every_loop_caches_its_own_layers(tmp_path):
    m = _model(tmp_path, NAME)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    assert (m.n_loops, m.skip_loop_final_norm, len(m.layers)) == (N_LOOPS, False, n_layer)
    assert len(m.layer_specs()) == n_layer * N_LOOPS and all(s.scale == pytest.approx(hd**-0.5) for s in m.layer_specs())
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    assert NanbeigeModel.cache_widths(load_config(g), g) == (n_head_kv * 2 * hd,) * (n_layer * N_LOOPS)
    assert m.output is m.tok_embd and not m.cfg.rope_neox  # (tied head; rope over consecutive pairs)


@pytest.mark.parametrize("tensor", ["output_norm.weight", "blk.0.attn_q.weight", "blk.2.ffn_down.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


def test_a_missing_key_or_no_loop_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    del g.metadata["nanbeige.attention.layer_norm_rms_epsilon"]
    with pytest.raises(GGUFError, match="metadata nanbeige.attention.layer_norm_rms_epsilon is missing") as e:
        _model(tmp_path, NAME, g)
    assert "\n" not in str(e.value)
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.metadata["nanbeige.num_loops"] = 0
    with pytest.raises(GGUFError, match="num_loops is 0; llama.cpp requires at least 1") as e:
        _model(tmp_path, NAME, g)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    """The layers line says the loops, and the KV cost is every pass's cache: what the runtime's cache holds a token."""
    info = check_info_and_run(tmp_path, NAME)
    n_layer = GEOMETRY[-1]
    assert info_line(info, "layers") == f"{n_layer}, run {N_LOOPS} times ({n_layer * N_LOOPS} passes)", info
    facts = json.loads(CliRunner().invoke(main, ["info", "--json", str(tmp_path / f"{NAME}.gguf")]).output)
    assert facts["kv_bytes_per_token"]["16"] == held_per_token(tmp_path / f"{NAME}.gguf")


def test_one_loop_is_the_plain_layer_count(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    g.metadata["nanbeige.num_loops"] = 1
    assert NanbeigeModel.layer_passes(load_config(g), g) is None  # (`kvrun info` then prints the file's block_count)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (Llama's kernels, the loops the same layers' calls again)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=(5, 9, 14))
