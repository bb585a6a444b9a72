"""GPT-2, StarCoder2 and GPT-NeoX (models/gpt2.py, starcoder2.py, gptneox.py): their llama.cpp fixtures
(tests/test_models.py's test_forward_matches_llamacpp) fail without what sets each apart, and their files'
faults are one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_models import N_BATCH, N_CTX, _build, _fixture_error
from tiny_gpt2 import GPT2_CONTEXT, GPTNEOX_ROPE_DIM
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.ops import get_backend


def test_gpt2_family_fixtures_see_what_sets_them_apart(tmp_path):
    """GPT-2's learned positions and its output head (tied, or its own); StarCoder2's neox rope over the whole
    head, its ignored window (llama.cpp attends over all 40 tokens though the file states 8); GPT-NeoX's
    residual, parallel or not as the file says, and its rope over a quarter of each head."""

    def err(name, drop):
        return _fixture_error(tmp_path, name, drop)

    def no_positions(m):
        m.pos_embd = None

    def head(tied):
        return lambda m: setattr(m, "output", m.tok_embd if tied else m.output)

    def rope_pairs(m):  # consecutive pairs (Llama's layout) in place of halves
        m.cfg = dataclasses.replace(m.cfg, rope_neox=False)

    def window(m):
        m.layer_specs = lambda: [dataclasses.replace(s, window=8) for s in type(m).layer_specs(m)]

    def flip_residual(m):
        m.parallel_residual = not m.parallel_residual

    def full_rope(m):
        m.rope_cos, m.rope_sin = make_rope(dataclasses.replace(m.cfg, rope_dim=m.cfg.head_dim), m.n_ctx, m.cfg.rope_theta)

    assert err("gpt2", no_positions) > 3e-2
    assert err("gpt2-output-head", head(tied=True)) > 3e-2
    assert err("starcoder2", rope_pairs) > 3e-2
    assert err("starcoder2-swa", window) > 3e-2
    assert err("starcoder2-swa", head(tied=True)) > 3e-2
    for name in ("gptneox", "gptneox-sequential"):
        assert err(name, flip_residual) > 3e-2, name
        assert err(name, full_rope) > 3e-2, name
        assert err(name, rope_pairs) > 3e-2, name


def test_gpt2_family_configs(tmp_path):
    """What each file states and kvrun reads: GPT-2 multi-head, tied, its positions GPT2_CONTEXT rows; StarCoder2's
    window dropped (llama.cpp's n_swa is 0); GPT-NeoX's parallel residual both ways and its partial rope."""
    cfg, m = _build(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["gpt2"]))
    assert (cfg.n_head_kv, cfg.n_ctx_train, m.pos_embd.shape[0]) == (cfg.n_head, GPT2_CONTEXT, GPT2_CONTEXT)
    assert m.output is m.tok_embd and m.output_b is None
    cfg, m = _build(write_tiny_model(tmp_path / "s.gguf", **FIXTURE_MODELS["starcoder2-swa"]))
    assert cfg.sliding_window == 0 and not any(cfg.swa_layers) and all(s.window == 0 for s in m.layer_specs())
    assert m.pos_embd is None and m.output is not m.tok_embd and cfg.rope_dim == cfg.head_dim
    for name, parallel in (("gptneox", True), ("gptneox-sequential", False)):
        cfg, m = _build(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
        assert m.parallel_residual is parallel and cfg.rope_dim == GPTNEOX_ROPE_DIM and m.rope_cos.shape[1] == GPTNEOX_ROPE_DIM // 2


@pytest.mark.parametrize("arch,tensor", [
    ("gpt2", "position_embd.weight"), ("gpt2", "blk.1.attn_qkv.bias"), ("gpt2", "blk.0.ffn_norm.bias"),
    ("starcoder2", "blk.0.attn_q.bias"), ("starcoder2", "blk.1.ffn_up.bias"), ("starcoder2", "output_norm.bias"),
    ("gptneox", "output.weight"), ("gptneox", "blk.0.attn_qkv.bias"), ("gptneox", "blk.1.attn_output.bias"),
])  # fmt: skip
def test_gpt2_family_missing_tensor_is_one_line(tmp_path, arch, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"'{tensor}' is missing") as e:
        model_class(arch)(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_gptneox_needs_its_residual_stated(tmp_path):
    """llama.cpp requires gptneox.use_parallel_residual; so does kvrun, in one line."""
    g = GGUFFile(write_tiny_model(tmp_path / "n.gguf", "gptneox", parallel_residual=None))
    with pytest.raises(GGUFError, match="gptneox.use_parallel_residual is missing"):
        model_class("gptneox")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)


def test_gpt2_refuses_positions_past_its_table(tmp_path):
    """GPT-2 has a learned row for each of its n_ctx_train positions and none past: a longer context is refused
    at load, a position past the table at eval (one line each, not an index error)."""
    from kvrun.cache.base import KVCache
    from kvrun.cache.factory import make_cache

    path = write_tiny_model(tmp_path / "g.gguf", "gpt2")
    g = GGUFFile(path)
    cfg = load_config(g)
    with pytest.raises(KvrunError, match=f"learned positions for {GPT2_CONTEXT} tokens .* use --ctx-size {GPT2_CONTEXT} or less"):
        model_class("gpt2")(g, cfg, get_backend("cpu"), GPT2_CONTEXT + 1, N_BATCH)
    m = model_class("gpt2")(g, cfg, get_backend("cpu"), GPT2_CONTEXT, N_BATCH)
    cache = KVCache(make_cache(m.layer_specs(), GPT2_CONTEXT + 8, N_BATCH))
    out = np.zeros((1, cfg.n_vocab), np.float32)
    with pytest.raises(KvrunError, match=f"position {GPT2_CONTEXT} is past the {GPT2_CONTEXT} positions"):
        m.forward(np.array([5], np.int32), np.array([GPT2_CONTEXT], np.int32), cache, np.arange(1), out)


@pytest.mark.parametrize("name", ["gpt2", "starcoder2-swa", "gptneox-sequential"])
def test_gpt2_family_info_and_run(tmp_path, name):
    """``kvrun info`` describes the tiny file (GPT-2: no rope; StarCoder2: no window) and ``kvrun run`` generates from it."""
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and FIXTURE_MODELS[name]["arch"] in r.output, r.output
    if name == "gpt2":
        assert "none (learned positions" in r.output, r.output
    if name.startswith("starcoder2"):
        assert "sliding window" in r.output and "none" in r.output.split("sliding window", 1)[1].splitlines()[0], r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4", "--temp", "0"])
    assert r.exit_code == 0, r.output


def _gpu_or_emulator(monkeypatch) -> None:
    """The device where there is one, else the kernel emulator (the CUDA sources compiled for the CPU)."""
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available():
        if not emulate.available():
            pytest.skip("no GPU and no host C++ compiler for the emulator")
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")


@pytest.mark.parametrize("name", ["gpt2", "gpt2-output-head", "starcoder2", "starcoder2-swa", "gptneox", "gptneox-sequential"])
def test_gpt2_family_on_gpu_matches_cpu(monkeypatch, tmp_path, name):
    """``--device gpu`` runs all three (LayerNorms, biases, GELU, learned positions, partial rope, either residual)."""
    from gguf import GGMLQuantizationType as Q

    from kvrun.runtime.engine import Engine

    _gpu_or_emulator(monkeypatch)
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name], qtype=Q.Q4_0)
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    a, b = (Engine(path, device=dev, n_ctx=64, n_batch=16) for dev in ("cpu", "gpu"))
    la, lb = a.eval(a.new_cache(), ids, logits_all=True), b.eval(b.new_cache(), ids, logits_all=True)
    assert np.abs(la - lb).max() / np.abs(la).max() < 2e-2


@pytest.fixture(params=["device", "strict"])
def capture_runtime(request, monkeypatch):
    """The device (or the plain emulator), then the strict CuPy stand-in (tests/devicexp.py: host and device arrays
    apart, no copy either way while capturing, as on CUDA), as tests/test_gpu_engine.py's graph_runtime."""
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import kernels as K

    _gpu_or_emulator(monkeypatch)
    if request.param == "device":
        yield
        return
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import StrictRuntime

    prev = K.set_runtime(StrictRuntime())
    try:
        yield
    finally:
        K.set_runtime(prev)


@pytest.mark.parametrize("name", ["gpt2", "gptneox"])
def test_gpt2_family_decode_graphs_equal_eager_steps(capture_runtime, monkeypatch, tmp_path, name):
    """Decode steps replayed from a captured graph (runtime/graphs.py) give the eager steps' logits: GPT-2's
    position row is looked up from the buffer each replay refills, not fixed at the capture's position."""
    from gguf import GGMLQuantizationType as Q

    from kvrun.runtime.engine import Engine

    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name], qtype=Q.Q4_0)
    ids = [int(t) for t in np.random.default_rng(3).integers(0, 200, 40)]
    runs = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("KVRUN_CUDA_GRAPHS", graphs)
        eng = Engine(path, device="gpu", n_ctx=64, n_batch=16)
        cache = eng.new_cache()
        eng.eval(cache, ids[:10])
        runs[graphs] = np.concatenate([eng.eval(cache, [t]) for t in ids[10:]])
        assert eng.graphs.enabled == (graphs == "1") and eng.graphs.n_replays == (29 if graphs == "1" else 0)
    np.testing.assert_array_equal(runs["1"], runs["0"])
