"""dots.note's text model (``dots3note``, models/dots3note.py) against llama.cpp 0.3.36: its tiny model's logits
(tests/fixtures/arch_dots3note.npz, tools/make_arch_fixtures.py) over a prompt longer than the window, as one batch and
token by token; the fixture fails without each step that sets dots.note apart from glm-dsa (the head gate, the rope key's
norm, the window layers' rope base and window); a missing tensor or key is named in one line, and what kvrun does not
run (the indexer's sparse choice past its top_k) is refused in one line; ``--device gpu`` gives the CPU's logits.
(test_models.test_forward_matches_llamacpp holds the fixture too, with every other architecture's.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from arch_checks import check_info_and_run
from test_models import N_BATCH, _build, _fixture_error, _run
from tiny_dots3note import FULL, SWA, SWA_PATTERN, WINDOW, write_tiny_dots3note
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.dots3note import Dots3NoteModel
from kvrun.ops import get_backend
from kvrun.ops.cpu.backend import CPUBackend


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_logits_match_llamacpp(tmp_path, chunk):
    """The largest error measured: 1.8e-4 of the largest logit (both runtimes keep K/V in float16)."""
    from pathlib import Path

    fix = np.load(Path(__file__).parent / "fixtures" / "arch_dots3note.npz")
    cfg, model = _build(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < 1e-3, f"max relative logit error {err:.2e} against llama.cpp"
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


def test_each_layer_has_its_kinds_geometry(tmp_path):
    cfg, model = _build(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
    assert cfg.n_layer == len(SWA_PATTERN)  # (the MTP layer past the trunk is not run)
    for swa, spec in zip(SWA_PATTERN, model.layer_specs()):
        n_head, nope, _, rank = SWA if swa else FULL
        assert (spec.n_head, spec.n_head_kv, spec.head_dim, spec.head_dim_v) == (n_head, 1, 8 + rank, rank)
        assert spec.window == (WINDOW if swa else 0) and spec.scale == pytest.approx((nope + 8) ** -0.5)
    g = GGUFFile(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
    assert Dots3NoteModel.cache_widths(cfg, g) == tuple(8 + (SWA if s else FULL)[3] for s in SWA_PATTERN)


def _no_gate(monkeypatch):
    return lambda m: monkeypatch.setattr(CPUBackend, "sigmoid_mul", lambda self, x, s: None)  # (every head's gate 1)


def _no_k_norm(m):
    for G in m.geom:
        G.k_norm = np.ones_like(G.k_norm)


def _global_rope_in_the_window(m):
    m.rope_swa = (m.rope_cos, m.rope_sin)


def _no_window(m):
    m.cfg = dataclasses.replace(m.cfg, sliding_window=0)


def _full_scale_in_the_window(m):
    specs = m.layer_specs()
    m.layer_specs = lambda: [dataclasses.replace(s, scale=(FULL[1] + 8) ** -0.5) for s in specs]


@pytest.mark.parametrize("what", ["gate", "k_norm", "rope_base_swa", "window", "scale_swa"])
def test_the_fixture_fails_without_each_of_dots_notes_steps(tmp_path, monkeypatch, what):
    drops = {"gate": _no_gate(monkeypatch), "k_norm": _no_k_norm, "rope_base_swa": _global_rope_in_the_window, "window": _no_window,
             "scale_swa": _full_scale_in_the_window}  # fmt: skip
    assert _fixture_error(tmp_path, "dots3note", drops[what]) > 1e-2


@pytest.mark.parametrize("key, tensor", [("attention.kv_lora_rank_swa", "attn_kv_a_mqa"), ("attention.key_length_mla_swa", "attn_q_b"),
                                         ("attention.value_length_mla_swa", "attn_output")])  # fmt: skip
def test_the_window_layers_are_read_at_their_own_sizes(tmp_path, key, tensor):
    """A file whose window layers stated the full layers' sizes: its window layers' weights do not fit, named in one line."""
    g = GGUFFile(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
    cfg, real = load_config(g), g.arch_get
    full = {k: real(k.replace("_swa", "")) for k in ("attention.kv_lora_rank_swa", "attention.key_length_mla_swa", "attention.value_length_mla_swa")}
    g.arch_get = lambda k, default=None: full[key] if k == key else real(k, default)
    with pytest.raises(GGUFError, match=f"blk.0.{tensor}.*expected") as e:
        Dots3NoteModel(g, cfg, get_backend("cpu"), 64, N_BATCH)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["blk.1.attn_k_norm.weight", "blk.2.attn_gate.weight", "blk.2.attn_k_b.weight", "blk.3.ffn_gate_shexp.weight"])
def test_a_missing_tensor_is_named_in_one_line(tmp_path, missing):
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        _build(write_tiny_dots3note(tmp_path / "d.gguf", drop=(missing,)))
    assert "\n" not in str(e.value)


def test_the_mtp_layer_and_the_indexer_are_never_read(tmp_path):
    """llama.cpp loads them and never runs them (the dense path chooses every key): a file without them runs alike."""
    drop = ("blk.4.nextn.eh_proj.weight", "blk.4.attn_q_b.weight", "blk.1.indexer.attn_k.weight", "blk.3.indexer.proj.weight")
    _build(write_tiny_dots3note(tmp_path / "d.gguf", drop=drop))


@pytest.mark.parametrize("key", ["attention.kv_lora_rank_swa", "attention.key_length_mla_swa", "rope.freq_base_swa", "expert_gating_func"])
def test_a_missing_key_is_named_in_one_line(tmp_path, key):
    g = GGUFFile(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
    cfg, real = load_config(g), g.arch_get
    g.arch_get = lambda k, default=None: None if k == key else real(k, default)
    with pytest.raises(GGUFError, match=f"{key}.*missing") as e:
        Dots3NoteModel(g, cfg, get_backend("cpu"), 64, N_BATCH)
    assert "\n" not in str(e.value)


def test_a_context_past_the_indexers_top_k_is_refused_in_one_line(tmp_path):
    """Up to top_k cached keys llama.cpp's indexer chooses them all (the dense MLA kvrun runs); past it kvrun refuses."""
    g = GGUFFile(write_tiny_dots3note(tmp_path / "d.gguf", top_k=32))
    cfg = load_config(g)
    Dots3NoteModel(g, cfg, get_backend("cpu"), 32, N_BATCH)
    with pytest.raises(UnsupportedModelError, match="dots3note's sparse attention past 32 tokens.*at most 32") as e:
        Dots3NoteModel(g, cfg, get_backend("cpu"), 64, N_BATCH)
    assert "\n" not in str(e.value)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill past the window and decode steps, the first
    captured, the others replayed, within 2e-3 of the CPU's logits (the rope key normed in kva's rows by mla.cu, the
    gate the backend's sigmoid_mul, the layers of both kinds at their own latent, heads and rope tables)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]), capsys=capsys, steps=(5, 9, 14))


def test_a_gpu_decode_step_brings_down_only_its_logits(monkeypatch, tmp_path):
    """On the strict CuPy stand-in (no copy while a graph is captured): the rope key's norm and the gate are kernels."""
    from gpu_checks import check_decode_copies_only_logits

    from kvrun.ops.gpu import emulate

    if not emulate.available():
        pytest.skip("no host C++ compiler for the emulator")
    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"]))
def test_a_pictures_rows_go_in_on_the_gpu_as_on_the_cpu(gpu_env, tmp_path):
    """Rows fed in place of tokens (Engine.eval_embd: a picture's or a clip's, the backend's copy on the device) after a
    prompt, then text: the GPU's logits within 2e-3 of the CPU's."""
    from gpu_checks import rel_err

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = write_tiny_model(tmp_path / "d.gguf", **FIXTURE_MODELS["dots3note"])
    rows = np.random.default_rng(5).standard_normal((7, 64)).astype(np.float32)
    got = []
    for device in ("cpu", "gpu"):
        eng = Engine(path, device=device, n_ctx=64, n_batch=16)
        cache = eng.new_cache()
        eng.eval(cache, [1, 2, 3])
        eng.eval_embd(cache, rows)
        got.append(eng.eval(cache, [4, 5], logits_all=True))
    assert rel_err(*got) < 2e-3


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, "dots3note")
