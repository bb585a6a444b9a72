"""RWKV-7 (models/rwkv7.py, cache/rwkv.py, ops/cpu/wkv7.py) and RWKV's World tokenizer (loaders/rwkv_vocab.py).

The logits are llama.cpp's (the FIXTURE_MODELS test ``rwkv7``); here: the fixture fails without each of what sets
RWKV-7 apart; the state in the cache fed in chunks or token by token alike, going back exactly from a kept copy,
further by starting over, saved and resumed (test_ssm.py's tests, run on the tiny RWKV-7); a missing tensor, a bad
head size refused in one line; the World tokenizer's ids and pieces equal llama.cpp's on a small
vocabulary (tests/fixtures/tokens_rwkv_world.json, from tools/make_rwkv_vocab_fixture.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import test_ssm
from test_models import N_BATCH, N_CTX, _fixture_error
from tiny_rwkv7 import world_vocab, write_world_vocab
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.rwkv_vocab import RwkvVocab, unescape
from kvrun.loaders.tokenizer import Tokenizer
from kvrun.models import model_class
from kvrun.ops import get_backend

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """The tiny RWKV-7, for test_ssm's state tests below."""
    return write_tiny_model(tmp_path_factory.mktemp("rwkv7") / "m.gguf", "rwkv7")


# the recurrent-state tests Mamba-2's and Gated DeltaNet's caches pass, on RWKV-7's (the same machinery)
test_chunks_and_single_tokens_give_the_same_logits = test_ssm.test_chunks_and_single_tokens_give_the_same_logits
test_going_back_is_exact_from_a_kept_copy_and_further_starts_over = test_ssm.test_going_back_is_exact_from_a_kept_copy_and_further_starts_over
test_refused_drafts_always_go_back_exactly = test_ssm.test_refused_drafts_always_go_back_exactly
test_lookup_and_chat_reuse_keep_greedy_text = test_ssm.test_lookup_and_chat_reuse_keep_greedy_text
test_a_chat_saved_and_resumed_goes_on_alike = test_ssm.test_a_chat_saved_and_resumed_goes_on_alike


def test_the_fixture_sees_what_sets_rwkv7_apart(tmp_path, monkeypatch):
    """Each of RWKV-7's features, taken away, costs whole logits against llama.cpp's: the token shift (of either
    mix), LN0, the value residual, the removal key (the delta rule's forgetting), the key's learning-rate scaling,
    the bonus, the group norm, the gate, and the decay's 1/sqrt(e) (exp(-sigmoid(w)) in its place)."""
    import kvrun.models.rwkv7 as rwkv7

    def layers(**fields):
        return lambda m: [setattr(L, f, v(L) if callable(v) else v) for L in m.layers for f, v in fields.items()]

    drops = {
        "time-mix shift": layers(lerp=lambda L: np.zeros_like(L.lerp)),
        "channel-mix shift": layers(cm_lerp=lambda L: np.zeros_like(L.cm_lerp)),
        "LN0": lambda m: setattr(m, "tok_norm", None),
        "value residual": layers(v1=None),
        "removal key": layers(k_k=lambda L: np.zeros_like(L.k_k)),
        "key scaling": layers(k_a=lambda L: np.zeros_like(L.k_a)),
        "bonus": layers(r_k=lambda L: np.zeros_like(L.r_k)),
        "group norm": layers(ln=None),
        "gate": layers(g1=None),
    }
    for what, drop in drops.items():
        assert _fixture_error(tmp_path, "rwkv7", drop) > 3e-2, what
    assert _fixture_error(tmp_path, "rwkv7", lambda m: None) < 1e-5
    monkeypatch.setattr(rwkv7, "DECAY_SCALE", np.float32(-1.0))
    assert _fixture_error(tmp_path, "rwkv7", lambda m: None) > 3e-2


def test_the_state_is_the_wkv_matrices_and_the_token_shift(tmp_path):
    """A layer keeps a [head_size, head_size] state per head and the kept inputs (8 x n_embd a position), never
    K/V; a batch of sequences cannot share a forward through it; compressed-cache options leave it alone."""
    from kvrun.cache.batch import batchable
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.cache.rwkv import RWKVLayerCache
    from kvrun.runtime.engine import Engine

    e = Engine(write_tiny_model(tmp_path / "r.gguf", "rwkv7"), n_ctx=64, kv=KVConfig.parse("4"))
    cache = e.new_cache()
    assert all(type(layer) is RWKVLayerCache for layer in cache.layers) and len(cache.layers) == 3
    assert cache[0].state.shape == (2, 64, 64) and cache[0].ring.shape[1] == 8 * 128
    assert not batchable(e.model.layer_specs()) and e.cfg.kv_bytes_per_token(16) == 0


@pytest.mark.parametrize("tensor", ["token_embd_norm.bias", "blk.0.time_mix_lerp_fused.weight", "blk.1.time_mix_v1.weight",
                                    "blk.2.time_mix_k_k.weight", "blk.1.channel_mix_value.weight", "output.weight"])  # fmt: skip
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    g = GGUFFile(write_tiny_model(tmp_path / "r.gguf", "rwkv7"))
    cfg = load_config(g)
    del g.tensors[tensor]
    with pytest.raises(GGUFError, match=f"tensor '{tensor}' is missing") as e:
        model_class("rwkv7")(g, cfg, get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)


def test_layer_0_needs_no_value_residual_and_a_bad_head_size_is_one_line(tmp_path):
    g = GGUFFile(write_tiny_model(tmp_path / "r.gguf", "rwkv7"))
    for n in ("v0", "v1", "v2"):  # (the converter's dummies: unused, as llama.cpp leaves them)
        del g.tensors[f"blk.0.time_mix_{n}.weight"]
    m = model_class("rwkv7")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert m.layers[0].v1 is None and m.layers[1].v1 is not None
    g.metadata["rwkv7.wkv.head_size"] = 48
    with pytest.raises(GGUFError, match="head_size 48 does not divide embedding_length 128") as e:
        model_class("rwkv7")(g, load_config(g), get_backend("cpu"), N_CTX, N_BATCH)
    assert "\n" not in str(e.value)



def test_info_and_run_on_the_tiny_file(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = str(write_tiny_model(tmp_path / "r.gguf", **FIXTURE_MODELS["rwkv7"]))
    r = CliRunner().invoke(main, ["info", path])
    assert r.exit_code == 0 and "rwkv7" in r.output, r.output
    # no heads, rope or KV cache: the state a layer keeps (2 heads of 64: 64 x 64 floats each, two shifts of 128)
    assert "recurrent state  2 WKV heads of 64; 33.00 KiB a layer" in r.output and "KV cache / token" not in r.output and "rope" not in r.output
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- the World tokenizer
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    fix = json.loads((FIX / "tokens_rwkv_world.json").read_text())
    path = write_world_vocab(tmp_path_factory.mktemp("world") / "world.gguf")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fix["sha256"], "tiny_rwkv7.py writes another vocabulary now: regenerate the fixture"
    return Tokenizer.from_metadata(GGUFFile(path).metadata), fix


def test_world_tokenizer_ids_equal_llamacpp(world):
    tk, fix = world
    assert tk.kind == "rwkv" and tk.bos_id is None and tk.eos_id is None and not tk.add_bos
    assert sorted(tk.eot_ids) == fix["eog_ids"]
    for case in fix["cases"]:
        for add in (True, False):
            for special in (True, False):
                want = case[f"ids_add{int(add)}_special{int(special)}"]
                assert tk.encode(case["text"], add_bos=add, parse_special=special) == want, (case["text"], add, special)


def test_world_tokenizer_pieces_equal_llamacpp(world):
    tk, fix = world
    assert [tk.token_bytes(i).decode("latin-1") for i in range(tk.n_vocab)] == fix["pieces_latin1"]
    ids = tk.encode("é中文 it's\n\n")
    assert tk.decode(ids) == "é中文 it's\n\n"


def test_world_tokens_unescape_as_llamacpp_reads_them():
    toks, _ = world_vocab()
    assert [unescape(t) for t in toks[1:257]] == [bytes([b]) for b in range(256)]
    assert unescape("\\x61\\x62") == b"ab" and unescape("a\\'b\"") == b"a'b\"" and unescape("\\\\\\\\") == b"\\\\"
    v = RwkvVocab(["a", "abc", "\\x61\\x62"])  # (no "b", no "c": "abd" is "ab" then nothing for "d")
    assert v.encode("abcab") == [1, 2] and v.encode("abd") == [2]
    assert RwkvVocab(["a"], unk_id=0).encode("ab") == [0, 0]
