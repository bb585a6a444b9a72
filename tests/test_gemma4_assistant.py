"""Gemma 4's assistant, the MTP draft head (models/gemma4_assistant.py, llama.cpp's ``gemma4-assistant``), drafting
for its Gemma 4 with ``-md``: its logits and ``h_next`` are llama.cpp's for the same tiny pair (reading the target's
token embedding, hidden state and KV cache), the text is greedy decoding's, on ``--device gpu`` the drafts are the
CPU's, and an assistant that does not fit its target (or run alone) is refused in one line.

The fixture: tools/make_gemma4_assistant_fixture.py (llama-cpp-python 0.3.36 as the oracle)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from draft_checks import check_batched_rows_are_the_cpus, check_drafts_are_the_cpus, check_replays_bring_down_only_logits
from tiny_gemma4 import write_tiny_gemma4
from tiny_gemma4_assistant import write_tiny_gemma4_assistant
from tinymodel import write_tiny_model

from kvrun.loaders.errors import KvrunError
from kvrun.runtime.engine import Engine, GenRequest, GenStats
from kvrun.runtime.sampling import SamplerConfig

FIXTURES = Path(__file__).parent / "fixtures"
FIX = np.load(FIXTURES / "gemma4_assistant.npz")
GREEDY = GenRequest(max_tokens=24, sampler=SamplerConfig(temperature=0), ignore_eos=True)
SHORT = GenRequest(max_tokens=14, sampler=SamplerConfig(temperature=0), ignore_eos=True)  # (the emulator's: CI time)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("g4a")
    return write_tiny_gemma4(d / "target.gguf"), write_tiny_gemma4_assistant(d / "assistant.gguf")


def _gen(engine: Engine, prompt: list[int]) -> tuple[list[int], GenStats]:
    st = GenStats()
    return list(engine.generate_tokens(engine.new_cache(), prompt, GREEDY, st)), st


@pytest.mark.parametrize("variant", ["", "moe"])  # E2B's layout (K/V shared: the head reads their sources), 26B-A4B's
def test_the_heads_logits_and_h_next_are_llama_cpps(pair, tmp_path, variant):
    FIX = np.load(FIXTURES / f"gemma4_assistant{'_' + variant if variant else ''}.npz")
    assistant = pair[1]
    target = write_tiny_gemma4(tmp_path / "target.gguf", variant=variant)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == str(FIX["sha256_target"])
    assert hashlib.sha256(assistant.read_bytes()).hexdigest() == str(FIX["sha256_assistant"])
    e = Engine(target, n_ctx=64, draft=assistant, threads=1)
    prompt = FIX["prompt"].tolist()
    cache = e.new_cache()
    assert int(np.argmax(e.eval(cache, prompt)[-1])) == int(FIX["first"])
    h = e.draft.hidden_state(cache, len(prompt) - 1)  # the target's post-final-norm row (llama.cpp's h_nextn)
    np.testing.assert_allclose(h, FIX["h_target"], atol=5e-3)
    for tok, want, want_h in zip(FIX["tokens"].tolist(), FIX["logits"], FIX["h_next"]):
        # every step at the position after the cache's, fed the last step's h_next (as llama.cpp feeds the oracle's)
        logits, h_next = e.draft.head.step(tok, h, len(prompt), e.draft.target, cache, e.draft.sources)
        assert np.abs(logits - want).max() < 0.02 and int(np.argmax(logits)) == int(np.argmax(want))
        np.testing.assert_allclose(h_next, want_h, atol=0.01)
        h = want_h
    # and the drafter (never unsure at p_min 0) drafts those very tokens after the prompt and the target's first
    e.draft.p_min = 0.0
    assert e.draft.draft(prompt + [int(FIX["first"])], 2, cache) == FIX["tokens"][1:3].tolist()


def test_the_text_is_greedy_decodings_with_the_assistant(pair):
    target, assistant = pair
    prompt = FIX["prompt"].tolist()
    plain, _ = _gen(Engine(target, n_ctx=64, threads=1), prompt)
    out, st = _gen(Engine(target, n_ctx=64, threads=1, draft=assistant, draft_max=3, draft_p_min=0.0), prompt)
    assert out == plain and st.n_drafted > 0 and 0 <= st.n_accepted <= st.n_drafted


def test_a_batched_forward_keeps_each_sequences_hidden_rows_apart(tmp_path, pair):
    # (a server's slots share forwards, cache/batch.py: each draft must read its own sequence's rows)
    e = Engine(write_tiny_gemma4(tmp_path / "moe.gguf", variant="moe"), n_ctx=64, threads=1, draft=pair[1])
    a, b = [72, 101, 108, 108, 111], [33, 34, 35]
    c1, c2, d1, d2 = (e.new_cache() for _ in range(4))
    outs = [np.empty((1, e.cfg.n_vocab), np.float32) for _ in range(2)]
    e.forward_batch([c1, c2], [np.array(a, np.int32), np.array(b, np.int32)], [len(a) - 1, len(b) - 1], outs)
    e.eval(d1, a)
    e.eval(d2, b)
    np.testing.assert_allclose(e.draft.hidden_state(c1, 4), e.draft.hidden_state(d1, 4), atol=1e-5)
    np.testing.assert_allclose(e.draft.hidden_state(c2, 2), e.draft.hidden_state(d2, 2), atol=1e-5)


def test_the_targets_output_head_hands_each_sequences_rows_to_the_head_through_its_hidden_sink(tmp_path, pair):
    # (a hook on the model, models/common.py's Model.hidden_sink, no wrapper of its methods: one call per forward,
    # and a batched forward of two sequences files every wanted row under its own sequence's cache at its position)
    e = Engine(write_tiny_gemma4(tmp_path / "moe.gguf", variant="moe"), n_ctx=64, threads=1, draft=pair[1])
    assert e.model.hidden_sink == e.draft.keep_rows and "forward" not in vars(e.model) and "final_norm" not in vars(e.model)
    seen = []
    keep = e.model.hidden_sink
    e.model.hidden_sink = lambda rows, out_rows, pos, cache: (seen.append(np.asarray(out_rows).tolist()), keep(rows, out_rows, pos, cache))
    a, b = [72, 101, 108, 108, 111], [33, 34, 35]
    c1, c2 = e.new_cache(), e.new_cache()
    outs = [np.empty((3, e.cfg.n_vocab), np.float32), np.empty((1, e.cfg.n_vocab), np.float32)]
    e.forward_batch([c1, c2], [np.array(a, np.int32), np.array(b, np.int32)], [2, 2], outs)
    assert seen == [[2, 3, 4, 7]]  # (one call: batch rows 2..4 are the first sequence's, row 7 the second's)
    assert sorted(e.draft.hidden[id(c1)]) == [2, 3, 4] and sorted(e.draft.hidden[id(c2)]) == [2]
    d1, d2 = e.new_cache(), e.new_cache()
    e.forward_batch([d1], [np.array(a, np.int32)], [2], [np.empty((3, e.cfg.n_vocab), np.float32)])  # (each alone)
    e.eval(d2, b)
    for p in (2, 3, 4):
        np.testing.assert_allclose(e.draft.hidden_state(c1, p), e.draft.hidden_state(d1, p), atol=1e-5)
    np.testing.assert_allclose(e.draft.hidden_state(c2, 2), e.draft.hidden_state(d2, 2), atol=1e-5)
    assert e.draft.hidden_state(c1, 1) is None and e.draft.hidden_state(c2, 1) is None  # (rows not wanted: not normed)


def test_kvrun_run_drafts_with_the_assistant_and_prints_its_acceptance(pair):
    from click.testing import CliRunner

    from kvrun.cli import main

    target, assistant = pair
    args = ["run", str(target), "-p", "Hello world!", "-n", "12", "--temp", "0", "--ignore-eos", "-c", "64"]
    plain = CliRunner().invoke(main, [*args, "--no-stats"])
    fast = CliRunner().invoke(main, [*args, "-md", str(assistant), "--draft-max", "3", "--draft-p-min", "0"])
    assert fast.exit_code == 0 and "drafts: kept" in fast.output, fast.output
    assert fast.stdout.startswith(plain.stdout.rstrip("\n")), (plain.output, fast.output)  # (stdout: a cold cache's notice is on stderr)


@pytest.mark.parametrize("variant", ["", "moe"])
def test_the_gpu_drafts_the_cpus_tokens(gpu_env, pair, tmp_path, variant):
    """``--device gpu`` (the kernel emulator without a GPU), the head beside its Gemma 4 on the device, reading its
    device cache: round by round the drafted tokens and the kept counts are the CPU's (from the hidden rows of the
    target's replayed decode steps too), and the text is greedy decoding's."""
    check_drafts_are_the_cpus(write_tiny_gemma4(tmp_path / "target.gguf", variant=variant), pair[1], FIX["prompt"].tolist())


def test_a_drafted_token_on_the_gpu_asks_the_backend_for_no_array(gpu_env, pair, monkeypatch):
    """On ``--device gpu`` each op of a draft step writes one of the head's fixed buffers, made at its first step: a
    second draft of the same text asks the backend for no array and drafts the same tokens."""
    from kvrun.ops.gpu.backend import GPUBackend

    asked, zeros = [], GPUBackend.zeros  # (every device array the backend makes, the buffers' too)
    monkeypatch.setattr(GPUBackend, "zeros", lambda be, *a, **k: (asked.append(a), zeros(be, *a, **k))[1])
    target, assistant = pair
    e = Engine(target, n_ctx=64, threads=1, device="gpu", draft=assistant, draft_p_min=0.0)
    prompt = FIX["prompt"].tolist()
    cache = e.new_cache()
    e.eval(cache, prompt)
    text = prompt + [int(FIX["first"])]
    first = e.draft.draft(text, 3, cache)
    asked.clear()
    assert e.draft.draft(text, 3, cache) == first and len(first) == 3
    assert asked == []


def test_a_batched_forward_on_the_gpu_files_each_sequences_hidden_rows_as_the_cpu(gpu_env, tmp_path, pair):
    """(a server's slots on the device: a batched prefill, then one-token steps of both together, the first captured
    as a batch graph, the others replayed) each sequence's hidden rows at the last position are the CPU's."""
    target = write_tiny_gemma4(tmp_path / "moe.gguf", variant="moe")
    check_batched_rows_are_the_cpus(target, pair[1], lambda e, c, n: e.draft.hidden_state(c, n - 1))


def test_the_targets_replayed_decode_steps_bring_down_only_their_logits(monkeypatch, pair):
    """On the strict CuPy stand-in (a copy while a graph is captured refused, every copy down logged): with the head's
    hidden sink in the target's output head, a decode step is captured and each replay brings down its logits alone;
    the row the last replay filed on the device is the one the CPU's head drafts from (the same tokens), each step's
    logits one copy down."""
    target, assistant = pair
    check_replays_bring_down_only_logits(monkeypatch, target, assistant, FIX["prompt"].tolist(), lambda e: e.draft.head.tok_embd.n_rows)


def test_an_assistant_that_does_not_fit_is_refused_in_one_line(pair, tmp_path):
    target, assistant = pair
    llama = write_tiny_model(tmp_path / "llama.gguf", "llama")
    with pytest.raises(KvrunError, match="fits a gemma4 model 64 wide; the target is llama"):
        Engine(llama, draft=assistant)
    wide = write_tiny_gemma4_assistant(tmp_path / "wide.gguf", n_embd_out=96)
    with pytest.raises(KvrunError, match="fits a gemma4 model 96 wide; the target is gemma4 64 wide"):
        Engine(target, draft=wide)
    with pytest.raises(KvrunError, match="is a draft head, not a model"):
        e = Engine(assistant, n_ctx=32)
        e.eval(e.new_cache(), [1, 2, 3])


def test_kvrun_info_counts_no_kv_cache_for_the_head(tmp_path):
    """The head's blocks read its target's K/V and store none: `kvrun info`'s KV cost is 0 at every width."""
    from click.testing import CliRunner

    from kvrun.cli import main
    from tiny_gemma4_assistant import write_tiny_gemma4_assistant

    r = CliRunner().invoke(main, ["info", str(write_tiny_gemma4_assistant(tmp_path / "a.gguf"))])
    assert r.exit_code == 0 and "16-bit 0 B  8-bit 0 B  4-bit 0 B  2-bit 0 B" in r.output, r.output
