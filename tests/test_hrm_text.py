"""HRM-Text (llama.cpp's ``hrm_text``, models/hrm_text.py) on the tiny model of tiny_hrm_text.py.

The logits are llama.cpp's (fixture ``arch_hrm_text.npz`` from tools/make_arch_fixtures.py, which
test_models.test_forward_matches_llamacpp also holds), in one batch and token by token.  Each step that sets the
architecture apart, taken away, costs whole logits.  Besides: a missing tensor or key, a block count that is not the
cycles' cache slots, in one line; ``kvrun info`` and ``kvrun run``; the GPU (the emulator where there is none) against
the CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from arch_checks import (_cfg, _model, _sees_apart, check_info_and_run, check_logits_are_llamacpps, check_missing_key,
                         check_missing_tensor, check_refused)  # fmt: skip
from click.testing import CliRunner
from test_info_hooks import held_per_token, info_line
from test_models import N_BATCH, _fixture_error
from tiny_hrm_text import CYCLES
from tinymodel import write_tiny_model

from kvrun.cli import main
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models.hrm_text import REQUIRED_KEYS, HrmTextModel

ARCH = "hrm_text"
#: the largest relative logit error measured against llama.cpp 0.3.36 (both runtimes' float16 K/V)
TOLERANCE = 1e-3


@pytest.mark.parametrize("chunk", [N_BATCH, 1], ids=["prefill", "decode"])
def test_the_logits_are_llamacpps(tmp_path, chunk):
    check_logits_are_llamacpps(tmp_path, ARCH, chunk, TOLERANCE)  # (measured: 1.1e-4, 1.6e-3 of 15.1)


def test_the_fixture_sees_what_sets_hrm_text_apart(tmp_path, monkeypatch):
    """z_l_init, the embedding scale, the second high cycle, the low and high blocks where llama.cpp puts them, a cache
    slot of its own for each pass, the stacks' closing norms, the last one (the output's), the gate: each taken away
    costs whole logits."""
    import kvrun.models.hrm_text as hrm_text

    def no_z_l_init(m):
        m.z_l_init = np.zeros_like(m.z_l_init)

    def blocks_swapped(m):  # (the low passes on the high stack's blocks and the other way round)
        low, high = m.layers[: m.lps], m.layers[m.l_cycles * m.lps : (m.l_cycles + 1) * m.lps]
        m.layers = [(low if m.block_of(s) >= m.lps else high)[s % m.lps] for s in range(len(m.layers))]

    def shared_slots(m):  # (each stack's passes on the cache slots of its first pass)
        m.stack = lambda z, slot0, pos, cache, norm=True: HrmTextModel.stack(
            m, z, m.l_cycles * m.lps if m.block_of(slot0) >= m.lps else 0, pos, cache, norm)

    _sees_apart(tmp_path, ARCH, {
        "z_l_init": no_z_l_init,
        "embedding scale": _cfg(embedding_scale=1.0),
        "second high cycle": lambda m: setattr(m, "h_cycles", 1),
        "blocks where llama.cpp puts them": blocks_swapped,
        "a cache slot a pass": shared_slots,
        "stacks' closing norms": lambda m: setattr(m, "stack", lambda *a, norm=True: HrmTextModel.stack(m, *a, norm=False)),
        "the output's norm": lambda m: setattr(m, "final_norm", lambda x, out: np.copyto(out, x)),
    }, tol=TOLERANCE)  # fmt: skip
    monkeypatch.setattr(hrm_text, "_sigmoid", lambda x: np.float32(0.5))
    assert _fixture_error(tmp_path, ARCH, lambda m: None) > 10 * TOLERANCE, "attention gate"


def test_the_slots_run_llamacpps_blocks(tmp_path):
    """12 cache slots: per high cycle two low passes (blocks 0-1) and a high one (blocks 2-3), the layers shared."""
    m = _model(tmp_path, ARCH)
    assert [m.block_of(s) for s in range(12)] == [0, 1, 0, 1, 2, 3] * 2
    assert m.layers[0] is m.layers[2] is m.layers[6] and m.layers[4] is m.layers[10] and m.layers[0] is not m.layers[4]
    assert len(m.layer_specs()) == 12 and all(s.window == 0 for s in m.layer_specs())
    assert m.cfg.embedding_scale == 8.0 and m.output is not m.tok_embd


@pytest.mark.parametrize("tensor", ["hrm.z_l_init", "blk.0.attn_gate.weight", "blk.3.ffn_up.weight", "blk.2.attn_k.weight",
                                    "token_embd.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    check_missing_tensor(tmp_path, ARCH, tensor)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_missing_key_is_one_line(tmp_path, key):
    check_missing_key(tmp_path, ARCH, key)


def test_a_block_count_that_is_not_the_slots_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "m.gguf", ARCH))
    g.metadata[f"{ARCH}.block_count"] = 4  # (the file's blocks, not the passes' slots)
    check_refused(g, ARCH, GGUFError, r"block_count is 4, expected 12 cache slots")


def test_info_and_run(tmp_path):
    """The layers line says the file's 4 blocks, its two stacks and their cycles, and the 12 passes block_count counts;
    the KV cost is a cache a pass: what the runtime's cache holds a token."""
    info = check_info_and_run(tmp_path, ARCH)
    lps, h, lc = CYCLES
    assert info_line(info, "layers") == (f"{2 * lps}: a low and a high stack of {lps}, in {h} cycles of {lc} low passes "
                                         f"then a high one ({lps * h * (lc + 1)} layer passes)"), info  # fmt: skip
    facts = json.loads(CliRunner().invoke(main, ["info", "--json", str(tmp_path / f"{ARCH}.gguf")]).output)
    assert facts["n_layer"] == lps * h * (lc + 1)  # (the file's block_count, as llama.cpp reads it: the cache slots)
    assert facts["kv_bytes_per_token"]["16"] == held_per_token(tmp_path / f"{ARCH}.gguf")


def test_the_gpu_matches_the_cpu(gpu_env, tmp_path, capsys):
    """``--device gpu`` (the kernel emulator without a GPU): a prefill and decode steps, the first captured, the others
    replayed, within 2e-3 of the CPU's logits (the gate ``sigmoid_mul``, the copy of the stream a device kernel)."""
    from gpu_checks import check_prefill_and_replayed_decode

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / "m.gguf", ARCH), capsys=capsys, steps=(5, 9, 14))
