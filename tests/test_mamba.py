"""Mamba 1 (models/mamba.py, ops/cpu/mamba.py, cache/mamba.py).

The logits are llama.cpp's (the FIXTURE_MODELS tests ``mamba`` and ``mamba-falcon``); here: the fixtures fail without
each of what sets Mamba 1 apart; the state in the cache fed in chunks or token by token alike, going back exactly
from a kept copy, further by starting over, saved and resumed (test_ssm.py's tests, run on the tiny Mamba); a missing
tensor; ``kvrun info`` and ``kvrun run`` on the tiny file (the GPU: tests/test_gpu_ssm.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import test_ssm
from test_models import N_BATCH, N_CTX, _fixture_error
from tinymodel import write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.ops import get_backend


@pytest.fixture(scope="module", params=["", "falcon"])
def path(request, tmp_path_factory):
    """The tiny Mamba and Falcon-Mamba, for test_ssm's state tests below."""
    return write_tiny_model(tmp_path_factory.mktemp("mamba") / "m.gguf", "mamba", variant=request.param)


# the recurrent-state tests Mamba-2's, Gated DeltaNet's and RWKV's caches pass, on Mamba 1's (the same machinery)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike


def _layers(**fields):
    return lambda m: [setattr(L, f, v(L)) for L in m.layers for f, v in fields.items()]


def test_the_fixtures_see_what_sets_mamba_apart(tmp_path):
    """Each of Mamba 1's features, taken away, costs whole logits against llama.cpp's: A's decay per channel and state
    (one per channel, as a Mamba-2 head's, fails), D's skip, the convolution's bias, the time step's bias; Falcon-Mamba's
    RMS norms of dt, B and C (and the plain Mamba's fixture fails with them)."""
    drops = {
        "A per state": _layers(A=lambda L: np.repeat(L.A.mean(1, keepdims=True), L.A.shape[1], 1)),
        "D": _layers(D=lambda L: np.zeros_like(L.D)),
        "conv bias": _layers(conv_b=lambda L: np.zeros_like(L.conv_b)),
        "dt bias": _layers(dt_b=lambda L: np.zeros_like(L.dt_b)),
    }
    for name in ("mamba", "mamba-falcon"):
        assert _fixture_error(tmp_path, name, lambda m: None) < 1e-4
        for what, drop in drops.items():
            assert _fixture_error(tmp_path, name, drop) > 3e-2, (name, what)
    assert _fixture_error(tmp_path, "mamba-falcon", lambda m: setattr(m, "dt_b_c_rms", False)) > 3e-2
    assert _fixture_error(tmp_path, "mamba", lambda m: setattr(m, "dt_b_c_rms", True)) > 3e-2


def test_the_layers_and_their_state(tmp_path):
    """A layer keeps a state [d_inner, d_state] and the kept inputs (x, dt: d_inner each, B and C: d_state each), no K/V."""
    from kvrun.cache.mamba import MambaLayerCache
    from kvrun.runtime.engine import Engine

    e = Engine(write_tiny_model(tmp_path / "m.gguf", "mamba"), n_ctx=64)
    cache = e.new_cache()
    assert all(type(layer) is MambaLayerCache for layer in cache.layers) and len(cache.layers) == 3
    assert cache[0].state.shape == (128, 16) and cache[0].ring.shape[1] == 2 * 128 + 2 * 16
    assert e.cfg.kv_bytes_per_token(16) == 0


@pytest.mark.parametrize("tensor", ["blk.0.ssm_in.weight", "blk.1.ssm_x.weight", "blk.2.ssm_dt.weight", "blk.0.ssm_dt.bias",
                                    "blk.1.ssm_a", "blk.2.ssm_d", "blk.0.ssm_conv1d.bias", "blk.1.ssm_out.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", "mamba"))
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class("mamba")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_a_bad_shape_or_missing_size_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", "mamba"))
    g.metadata["mamba.ssm.time_step_rank"] = 8
    with pytest.raises(GGUFError, match=r"blk.0.ssm_x.weight has shape \(36, 128\), expected \(40, 128\)") as e:
        model_class("mamba")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)
    del g.metadata["mamba.ssm.state_size"]
    with pytest.raises(GGUFError, match="must all be stated") as e:
        model_class("mamba")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_info_and_run(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "m.gguf", "mamba", variant="falcon"))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "mamba" in r.output, r.output
    # no heads, FFN or KV cache: each layer's mixer and the state it keeps (the scan's 128 x 16 floats, 3 inputs of 128)
    assert "every layer a Mamba 1 mixer (d_inner 128, state 16, convolution 4); 9.50 KiB of state a layer" in r.output
    assert "KV cache / token" not in r.output and "heads (q / kv)" not in r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output
