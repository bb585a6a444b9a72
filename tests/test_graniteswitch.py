"""Granite Switch (models/graniteswitch.py): Granite with LoRA adapters that control tokens switch on, routed by an
attention layer of its own.

The logits are llama.cpp's (tests/fixtures/arch_graniteswitch.npz, from ``tools/make_arch_fixtures.py graniteswitch``;
test_models.py's FIXTURE_MODELS test runs it too, prefill and decode); here: the fixture held in both chunkings, the
router's slots for its prompt, and the fixture failed without each of what sets Granite Switch apart; a missing tensor
or key, or adapter metadata llama.cpp refuses, in one line; ``kvrun info`` and ``kvrun run`` on the tiny file;
``--device gpu`` against the CPU, adapters switching in the prompt and in a replayed decode step.
"""

from __future__ import annotations

import numpy as np
import pytest
from arch_checks import _cfg, _layers, _model, _sees_apart, check_info_and_run, check_missing_tensor
from test_models import N_BATCH, N_CTX, _build, _run
from tiny_graniteswitch import ACTIVATE
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.cache.base import KVCache
from kvrun.cache.factory import make_cache
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.graniteswitch import LORA_PROJECTIONS, round_half_away

NAME = "graniteswitch"
#: 3x the largest relative logit error measured against llama.cpp 0.3.36 (8.4e-5: both runtimes' float16 K)
TOLERANCE = 3e-4
#: the fixture prompt's slots: the base model's until token 14 (adapter 1), then 1 until token 116 (adapter 3), then
#: the mean of the two seen, 2 (tiny_graniteswitch.py)
SLOTS = [0] * 8 + [1] * 19 + [2] * 13


def _fixture():
    return np.load(f"{__file__.rsplit('/', 1)[0]}/fixtures/arch_{NAME}.npz")


def _load(tmp_path, edit=lambda g: None):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", NAME))
    edit(g)
    return _model(tmp_path, NAME, g)


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    fix = _fixture()
    cfg, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS[NAME]))
    got = _run(model, cfg, fix["ids"], chunk)
    err = np.abs(got - fix["logits"]).max() / np.abs(fix["logits"]).max()
    assert err < TOLERANCE, f"max relative logit error {err:.2e}"  # (measured: 8.4e-5)
    assert (got.argmax(1) == fix["logits"].argmax(1)).all()


@pytest.mark.parametrize("chunk", [40, 5, 1])
def test_the_router_switches_at_the_control_tokens(tmp_path, chunk):
    """The router layer's attention over what the cache holds gives each token its slot, however the prompt is fed."""
    m, ids = _load(tmp_path), _fixture()["ids"]
    cache = KVCache(make_cache(m.layer_specs(), N_CTX, N_BATCH))
    pieces = [ids[s : s + chunk] for s in range(0, len(ids), chunk)]
    got = [m.route(p, np.arange(s * chunk, s * chunk + len(p), dtype=np.int32), cache) for s, p in enumerate(pieces)]
    assert np.concatenate(got).tolist() == SLOTS
    assert round_half_away(np.array([0.5, 1.5, 2.5, 2.4999, 3.0], np.float32)).tolist() == [1, 2, 3, 2, 3]  # (ggml_round's)


def test_the_fixture_sees_what_sets_graniteswitch_apart(tmp_path):
    """The control tokens' substitutes, the routing (the base model's slot everywhere instead, or the last control
    token's slot in place of the mean), each projection's adapters, slot 0's (the file's, not zeros), rope over pairs,
    Granite's four multipliers: each taken away costs whole logits."""

    def without(proj, slot=slice(None)):
        def edit(L):
            a, b = L.lora[proj]
            b = b.copy()
            b[slot] = 0.0
            return {**L.lora, proj: (a, b)}

        return _layers(lora=edit)

    def rerouted(fn):
        return lambda m: setattr(m, "route", (lambda route: lambda t, p, c: fn(route(t, p, c)))(m.route))

    drops = {
        "substitutes": lambda m: setattr(m, "substitute_of", {}),
        "routing": rerouted(lambda s: 0 * s),
        "the mean of two slots": rerouted(lambda s: np.where(s == 2, 3, s)),
        **{f"{p}'s adapters": without(p) for p in LORA_PROJECTIONS},
        "slot 0's adapters": lambda m: [without(p, 0)(m) for p in LORA_PROJECTIONS],
        "rope pairs": _cfg(rope_neox=True),
        "embedding scale": _cfg(embedding_scale=1.0),
        "residual scale": _cfg(residual_scale=1.0),
        "attention scale": _cfg(attention_scale=0.0),
        "logit scale": _cfg(logit_scale=1.0),
    }
    _sees_apart(tmp_path, NAME, drops, TOLERANCE)


def test_the_layers_and_the_router_layer(tmp_path):
    m = _load(tmp_path)
    specs = m.layer_specs()
    assert len(specs) == 4 and (specs[-1].n_head, specs[-1].n_head_kv, specs[-1].head_dim, specs[-1].scale) == (1, 1, 16, 1.0)
    assert m.cache_widths(m.cfg, GGUFFile(write_tiny_model(tmp_path / "w.gguf", NAME)))[-1] == 32
    assert all(L.rope for L in m.layers) and m.router_gain == 15.0 and m.slot_of == {14: 1, 0: 2, 116: 3}
    assert all(L.lora["ffn_down"][0].shape == (4, 4, 96) and L.lora["ffn_down"][1].shape == (4, 64, 4) for L in m.layers)

    def plain(g):
        g.metadata[f"{NAME}.rope.scaling.finetuned"] = False  # (Granite's switch: no rope)
        del g.metadata[f"{NAME}.adapters.router_gain"]

    m = _load(tmp_path, plain)
    assert not any(L.rope for L in m.layers) and m.router_gain == 15.0


@pytest.mark.parametrize("tensor", ["blk.0.attn_qkv.weight", "blk.1.attn_v.lora_a", "blk.2.ffn_down.lora_b", "output_norm.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, NAME, tensor)


@pytest.mark.parametrize("key", ["logit_scale", "adapters.count", "adapters.lora_rank", "adapters.token_ids_activate",
                                 "adapters.token_ids_substitute"])  # fmt: skip
def test_a_missing_key_is_one_line(tmp_path, key):
    with pytest.raises(GGUFError, match=f"metadata {NAME}.{key} is missing") as e:
        _load(tmp_path, lambda g: g.metadata.pop(f"{NAME}.{key}"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key, value, message", [
    ("adapters.token_ids_substitute", [200, 201], "do not match adapter count 3"),
    ("adapters.token_ids_substitute", [200, 201, 262], "substitute token id 262 is out of range"),
    ("adapters.count", 5000, "at most 4096"),
    ("adapters.lora_rank", 8, r"lora_a' has shape \(4, 4, 64\), expected \(4, 8, 64\)"),
])  # fmt: skip
def test_adapter_metadata_llamacpp_refuses_is_one_line(tmp_path, key, value, message):
    with pytest.raises(GGUFError, match=message) as e:
        _load(tmp_path, lambda g: g.metadata.__setitem__(f"{NAME}.{key}", value))
    assert "\n" not in str(e.value)


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the control tokens' lookups, the router's rounding and the adapters'
    products in lora.cu).  The prompt switches adapter 3 on at its token 116; the replayed step of token 14 switches
    adapter 1 on too, the step after it routed to the mean of the two, 2: what the device's slots buffer holds last,
    from the router's output 2 within 1e-5 (its layer's one head unscaled: scaled by 1/sqrt(head_dim) it would weigh
    the 21 other tokens in: 1.988)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    steps = (5, ACTIVATE[0], 9)
    assert ACTIVATE[2] in np.random.default_rng(3).integers(0, 200, 20)  # (gpu_checks' prompt)
    gpu, _ = check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", NAME), capsys=capsys, steps=steps)
    assert gpu.backend.to_host(gpu.model.buf.get("slots", 1, dtype=np.int32)).tolist() == [2]
    assert abs(float(gpu.backend.to_host(gpu.model.buf.get("router_o", 1, 1, gpu.cfg.head_dim)).reshape(-1)[0]) - 2.0) < 1e-5


def test_a_replayed_decode_step_copies_only_its_logits(tmp_path, monkeypatch):
    """On the strict CuPy stand-in: steps that switch adapters (a control token, then the mean of two) bring down their
    logits and nothing else: every lookup reads the step's token id on the device."""
    from gpu_checks import check_decode_copies_only_logits

    check_decode_copies_only_logits(monkeypatch, write_tiny_model(tmp_path / "m.gguf", NAME), prompt=[3, ACTIVATE[2], 27, 9],
                                    steps=(ACTIVATE[0], 5, ACTIVATE[1]))  # fmt: skip


def test_info_and_run(tmp_path):
    check_info_and_run(tmp_path, NAME)
