"""EAGLE-3 drafts (models/eagle3.py, llama.cpp's ``eagle3``), drafting for their target with ``-md``: the target's three
layers' states, the draft's g and its logits are llama.cpp's for the same tiny pair (a draft with its own embedding,
head, d2t, fc norm and rope factors; one sharing its target's, its residual normed), each thing that sets EAGLE-3
apart is seen by the fixture, the text is greedy decoding's, on ``--device gpu`` the drafts are the CPU's, and a draft
that is not whole, or does not fit its target (or runs alone), is refused in one line.

The fixtures: tools/make_eagle3_fixture.py (llama-cpp-python 0.3.36 as the oracle, driving llama.cpp's eagle3 encoder
and decoder as common/speculative.cpp's draft-eagle3 does)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from draft_checks import check_batched_rows_are_the_cpus, check_drafts_are_the_cpus, check_replays_bring_down_only_logits
from tiny_eagle3 import write_tiny_eagle3, write_tiny_eagle3_target

from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import model_class
from kvrun.models.common import make_rope
from kvrun.ops import get_backend
from kvrun.runtime.engine import Engine, GenRequest, GenStats
from kvrun.runtime.sampling import SamplerConfig

FIXTURES = Path(__file__).parent / "fixtures"
FIX = {v: np.load(FIXTURES / f"eagle3{'_' + v if v else ''}.npz") for v in ("", "shared")}
#: the largest relative errors measured against llama.cpp 0.3.36 (both runtimes' float16 K/V, the target's and the
#: draft's): the target's states 2.9e-4, g 4.0e-4, the draft's logits over the prompt from llama.cpp's g 7.0e-4 (its
#: steps 4.0e-4), from kvrun's own g (the whole path) 8.8e-4 and, the shared variant's, 2.9e-3; the smallest drop
#: below (the rope factors) costs 0.11
TOLERANCE = 5e-3
GREEDY = GenRequest(max_tokens=24, sampler=SamplerConfig(temperature=0), ignore_eos=True)
SHORT = GenRequest(max_tokens=14, sampler=SamplerConfig(temperature=0), ignore_eos=True)  # (the emulator's: CI time)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eagle3")
    return write_tiny_eagle3_target(d / "target.gguf"), {v: write_tiny_eagle3(d / f"draft{v}.gguf", v) for v in FIX}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want| over max |want|, where llama.cpp's is finite (inf where the -inf entries differ)."""
    fin = np.isfinite(want)
    if not (np.isfinite(got) == fin).all():
        return np.inf
    return float(np.abs(got[fin] - want[fin]).max() / np.abs(want[fin]).max())


def _path_error(e: Engine, fix) -> float:
    """The whole path's error: the target fed the prompt, its states fused into g by the tap, the drafter's pairs fed
    to a fresh draft cache up to the target's greedy token; the draft's logits at every position against llama.cpp's."""
    cache = e.new_cache()
    e.eval(cache, fix["prompt"].tolist())
    states = e.draft.catch_up(fix["prompt"].tolist() + [int(fix["first"])], cache)
    return _rel(e.draft.head.target_logits(states, e.draft.output), fix["logits"])


@pytest.mark.parametrize("variant", FIX)
def test_the_states_g_and_logits_are_llamacpps(files, variant):
    fix, (target, drafts) = FIX[variant], files
    assert hashlib.sha256(target.read_bytes()).hexdigest() == str(fix["sha256_target"])
    assert hashlib.sha256(drafts[variant].read_bytes()).hexdigest() == str(fix["sha256_draft"])
    e = Engine(target, n_ctx=64, draft=drafts[variant], threads=1)
    prompt, n = fix["prompt"].tolist(), len(fix["prompt"])
    cache = e.new_cache()
    assert int(np.argmax(e.eval(cache, prompt)[-1])) == int(fix["first"])
    d = e.draft
    assert d.head.target_layers == tuple(fix["layers"].tolist())
    assert _rel(d.features[:n], fix["features"]) < TOLERANCE  # (the target's layer inputs, in the file's order)
    assert _rel(d.g_rows(cache, n), fix["g"]) < TOLERANCE
    # the decoder fed llama.cpp's g, pairs (token at P + 1, g at P): logits (-inf off the draft vocabulary) and states
    dc = d.head.new_cache()
    h = d.head.decode(np.array(prompt[1:] + [int(fix["first"])]), fix["g"], np.arange(n), dc, d.tok_embd)
    assert _rel(d.head.target_logits(h, d.output), fix["logits"]) < TOLERANCE
    assert _rel(h, fix["prenorm"]) < TOLERANCE
    prev = fix["prenorm"][-1:]
    for s, (tok, want, want_h) in enumerate(zip(fix["tokens"].tolist(), fix["step_logits"], fix["step_prenorm"])):
        h = d.head.decode(np.array([tok]), prev, np.array([n + s]), dc, d.tok_embd)  # (each step fed llama.cpp's state)
        assert _rel(d.head.target_logits(h, d.output)[0], want) < TOLERANCE and _rel(h[0], want_h) < TOLERANCE
        prev = want_h[None]
    assert _path_error(e, fix) < TOLERANCE
    # and the drafter (never unsure at p_min 0) drafts llama.cpp's tokens after the prompt and the target's pick
    d.p_min = 0.0
    assert d.draft(prompt + [int(fix["first"])], 3, cache) == fix["tokens"].tolist()


def test_the_fixture_sees_what_sets_eagle3_apart(files):
    """Each taken away costs > 10x the tolerance: the fc norm, g's own norm, the order Q/K/V read the two halves in,
    d2t, the rope factors, the order of the target's layers, their inputs (not their outputs), the token one position
    on; the shared variant's normed residual."""
    target, drafts = files

    def reorder(d, ils):
        d.slots = {il: [k] for k, il in enumerate(ils)}
        d.layers = frozenset(d.slots)

    def unscaled_rope(d):
        d.head.rope_cos, d.head.rope_sin = make_rope(d.head.cfg, 64, d.head.cfg.rope_theta)

    drops = {
        "": {
            "fc norm": lambda d: setattr(d.head, "enc_norm", None),
            "g's norm": lambda d: setattr(d.head.block, "attn_norm_2", np.ones(48, np.float32)),
            "halves' order": lambda d: setattr(d.head, "concat", lambda e, g: np.concatenate([g, e], axis=1)),
            "d2t": lambda d: setattr(d.head, "d2t", np.arange(96)),
            "rope factors": unscaled_rope,
            "layers' order": lambda d: reorder(d, [2, 1, 0]),
            "layer inputs": lambda d: reorder(d, [1, 2, 3]),
            "next token": lambda d: setattr(d, "pair_tokens", lambda t, lo, hi: np.asarray(t[lo:hi], np.int32)),
        },
        "shared": {"normed residual": lambda d: setattr(d.head, "norm_before_residual", False)},
    }
    for variant, ds in drops.items():
        assert _path_error(Engine(target, n_ctx=64, draft=drafts[variant], threads=1), FIX[variant]) < TOLERANCE
        for what, drop in ds.items():
            e = Engine(target, n_ctx=64, draft=drafts[variant], threads=1)
            drop(e.draft)
            assert _path_error(e, FIX[variant]) > 10 * TOLERANCE, what


@pytest.mark.parametrize("variant", FIX)
def test_the_text_is_greedy_decodings_with_the_draft(files, variant, monkeypatch):
    target, drafts = files
    prompt = FIX[variant]["prompt"].tolist()
    ref = Engine(target, n_ctx=64, threads=1)
    plain = list(ref.generate_tokens(ref.new_cache(), prompt, GREEDY))
    e = Engine(target, n_ctx=64, threads=1, draft=drafts[variant], draft_max=3, draft_p_min=0.0)
    st = GenStats()
    assert list(e.generate_tokens(e.new_cache(), prompt, GREEDY, st)) == plain and st.n_drafted > 0
    # the tiny draft is random: the target keeps none of its tokens.  Each round it drafts (its cache fed, its steps
    # taken), then hands on two tokens of the greedy text (the target keeps them) and one it refuses
    draft, greedy = e.draft.draft, [prompt + plain]

    def part_kept(tokens, k, cache):
        return draft(tokens, k, cache) and greedy[0][len(tokens) : len(tokens) + 2] + [0]

    monkeypatch.setattr(e.draft, "draft", part_kept)
    cache, st = e.new_cache(), GenStats()
    assert list(e.generate_tokens(cache, prompt, GREEDY, st)) == plain and 0 < st.n_accepted < st.n_drafted
    # then the chat goes back (an edited turn: the target's cache cut below the draft's pairs) and on
    held, ids = prompt + plain, prompt + plain[:4] + [33, 34]
    greedy[0] = ids + list(ref.generate_tokens(ref.new_cache(), ids, GREEDY))
    assert ids + list(e.generate_reusing(cache, held, ids, GREEDY)) == greedy[0]
    # the draft's cache, fed round by round (each round's steps, refused pairs and the edited text's taken back), is
    # what the whole text's pairs fed at once make
    text = held + [0]  # (held: what the cache holds; any token after it, both sides pair it alike)
    step = e.draft.catch_up(text, cache)[-1]
    fresh = e.new_cache()
    e.eval(fresh, held)
    assert _rel(step, e.draft.catch_up(text, fresh)[-1]) < 1e-4


def test_a_batched_forward_files_each_sequences_states_apart(files):
    # (a server's slots share forwards, cache/batch.py: each sequence's g rows under its own cache at its positions)
    target, drafts = files
    e = Engine(target, n_ctx=64, threads=1, draft=drafts[""])
    a, b = [72, 101, 108, 108, 111], [33, 34, 35]
    c1, c2, d1, d2 = (e.new_cache() for _ in range(4))
    e.forward_batch([c1, c2], [np.array(a, np.int32), np.array(b, np.int32)], [len(a) - 1, len(b) - 1],
                    [np.empty((1, e.cfg.n_vocab), np.float32) for _ in range(2)])  # fmt: skip
    e.eval(d1, a)
    e.eval(d2, b)
    np.testing.assert_allclose(e.draft.g_rows(c1, 5), e.draft.g_rows(d1, 5), atol=1e-5)
    np.testing.assert_allclose(e.draft.g_rows(c2, 3), e.draft.g_rows(d2, 3), atol=1e-5)
    assert e.model.layer_tap is e.draft and "forward" not in vars(e.model) and "trace" not in vars(e.model)


def _texts(n_system: int, n_other: int) -> tuple[list[int], list[int]]:
    """A system prompt two conversations share and another conversation's text."""
    rng = np.random.default_rng(5)
    return rng.integers(3, 250, n_system).tolist(), rng.integers(3, 250, n_other).tolist()


def test_a_slot_that_takes_anothers_prefix_takes_the_drafts_rows(files):
    """(a server's slots, runtime/slots.py) a new conversation that takes another slot's system prompt without a
    forward (Engine.copy_prefix) lands in a slot that held another text, yet the g rows the draft pairs there and what
    it drafts are a fresh forward's of the prompt (the rows, and the draft cache's pairs of the prefix, copied over)."""
    from kvrun.runtime.api import Model
    from kvrun.runtime.slots import Slots

    target, drafts = files
    e = Engine(target, n_ctx=128, threads=1, draft=drafts[""], draft_p_min=0.0)
    system, other = _texts(48, 80)
    slots = Slots(Model(e), 2)
    for slot, text in zip(slots.slots, (system + [7, 8], other)):
        e.eval(slot.session.cache, text)
        slot.session.tokens = text
        assert len(e.draft.draft(text + [0], 3, slot.session.cache)) == 3  # (each draft cache holds its text's pairs)
    prompt = system + [9, 10, 11]
    with slots.take(prompt, id_slot=1) as slot:  # (the slot that held the other text)
        cache = slot.session.cache
        assert slots.n_shared == cache.offset == len(system)  # (copied from slot 0, not evaluated)
        e.eval(cache, prompt[len(system) :])
    fresh = e.new_cache()
    e.eval(fresh, prompt)
    np.testing.assert_allclose(e.draft.g_rows(cache, len(prompt)), e.draft.g_rows(fresh, len(prompt)), atol=1e-5)
    text = prompt + [0]
    assert _rel(e.draft.catch_up(text, cache)[-1], e.draft.catch_up(text, fresh)[-1]) < 1e-4
    assert e.draft.draft(text, 3, cache) == e.draft.draft(text, 3, fresh)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_a_prefix_copied_without_a_forward_takes_its_rows_on_either_device(gpu_env, files, device):
    """The tap's side of a prefix copy (Eagle3Draft.copy_prefix alone, the K/V here a forward's the tap does not see;
    Engine.copy_prefix's whole copy on the device: tests/test_gpu_copy_prefix.py): a cache that held another text
    takes a sequence's rows [0, n), on the device by a copy there, and the rows it pairs and its drafts are a fresh
    forward's."""
    target, drafts = files
    e = Engine(target, n_ctx=64, threads=1, device=device, draft=drafts[""], draft_p_min=0.0)
    d = e.draft
    system, other = _texts(24, 36)
    a, b, fresh = e.new_cache(), e.new_cache(), e.new_cache()
    for cache, text in ((a, system + [7, 8]), (b, other)):
        e.eval(cache, text)
        d.draft(text + [0], 3, cache)

    def unseen(cache, tokens):  # (K/V as a prefix copy gives them: no forward the tap sees)
        cache.truncate(0)
        e.model.layer_tap = None
        e.eval(cache, tokens)
        e.model.layer_tap = d

    unseen(b, system)
    d.copy_prefix(b, a, len(system))
    prompt = system + [9, 10, 11]
    e.eval(b, prompt[len(system) :])
    e.eval(fresh, prompt)
    np.testing.assert_allclose(d.g_rows(b, len(prompt)), d.g_rows(fresh, len(prompt)), atol=1e-4)
    text = prompt + [0]
    assert d.draft(text, 3, b) == d.draft(text, 3, fresh) and len(d.draft(text, 3, fresh)) == 3
    # the prefix of a cache the tap holds no rows of: the copy's rows are unfiled, the draft pairs none of them
    lone = e.new_cache()
    unseen(lone, system)
    unseen(b, system)
    d.copy_prefix(b, lone, len(system))
    e.eval(b, prompt[len(system) :])
    assert d.g_rows(b, len(prompt)) is None
    assert d.draft(text, 3, b) == []


def test_kvrun_run_drafts_with_eagle3_and_info_reads_the_draft(files):
    from click.testing import CliRunner

    from kvrun.cli import main

    target, drafts = files
    args = ["run", str(target), "-p", "Hello world!", "-n", "12", "--temp", "0", "--ignore-eos", "-c", "64"]
    plain = CliRunner().invoke(main, [*args, "--no-stats"])
    fast = CliRunner().invoke(main, [*args, "-md", str(drafts["shared"]), "--draft-max", "3", "--draft-p-min", "0"])
    assert fast.exit_code == 0 and "drafts: kept" in fast.output, fast.output
    assert fast.stdout.startswith(plain.stdout.rstrip("\n")), (plain.output, fast.output)  # (stdout: a cold cache's notice is on stderr)
    r = CliRunner().invoke(main, ["info", str(drafts[""])])
    assert r.exit_code == 0 and "eagle3" in r.output and "cannot run" not in r.output, r.output  # (d2t: a table, I64)
    r = CliRunner().invoke(main, ["run", str(drafts[""]), "-p", "hi", "-n", "2"])
    assert r.exit_code != 0 and "is a draft head, not a model" in r.output, r.output


@pytest.mark.parametrize("tensor", ["fc.weight", "enc.output_norm.weight", "blk.0.attn_norm_2.weight", "blk.0.attn_q.weight"])
def test_a_missing_tensor_is_one_line(tmp_path, tensor):
    _refused(write_tiny_eagle3(tmp_path / "d.gguf", drop=(tensor,)), f"'{tensor}' is missing")


@pytest.mark.parametrize("key, says", [("target_layers", "eagle3.target_layers is missing"),
                                       ("target_hidden_size", "eagle3.target_hidden_size is missing"),
                                       ("attention.layer_norm_rms_epsilon", "layer_norm_rms_epsilon is missing")])  # fmt: skip
def test_a_missing_key_is_one_line(tmp_path, key, says):
    _refused(write_tiny_eagle3(tmp_path / "d.gguf", drop_keys=(key,)), says)


def test_what_llama_cpp_refuses_is_one_line(tmp_path):
    _refused(write_tiny_eagle3(tmp_path / "a.gguf", target_layers=(1, 2)), "exactly 3 target layers")
    _refused(write_tiny_eagle3(tmp_path / "b.gguf", n_layer=2), "one decoder block")


@pytest.mark.parametrize("variant", FIX)
def test_the_gpu_drafts_the_cpus_tokens(gpu_env, files, variant):
    """``--device gpu`` (the kernel emulator without a GPU), the head beside its target on the device: round by round
    the drafted tokens and the kept counts are the CPU's (the rows of the target's replayed decode steps among those
    they pair), and the text is greedy decoding's."""
    target, drafts = files
    check_drafts_are_the_cpus(target, drafts[variant], FIX[variant]["prompt"].tolist())


def test_a_batched_forward_on_the_gpu_files_each_sequences_states_as_the_cpu(gpu_env, files):
    """(a server's slots on the device: a batched prefill, then one-token steps of both together, the first captured
    as a batch graph, the others replayed) each sequence's g rows [0, n) are the CPU's."""
    check_batched_rows_are_the_cpus(files[0], files[1][""], lambda e, c, n: e.draft.g_rows(c, n))


def test_the_targets_replayed_decode_steps_bring_down_only_their_logits(monkeypatch, files):
    """On the strict CuPy stand-in (a copy while a graph is captured refused, every copy down logged): with the head's
    tap in the target's forward, a decode step is captured and each replay brings down its logits alone; the rows the
    replays filed on the device are those the CPU's head drafts from (the same tokens), each drafted token's draft
    logits one copy down."""
    target, drafts = files
    check_replays_bring_down_only_logits(monkeypatch, target, drafts[""], FIX[""]["prompt"].tolist(), lambda e: e.draft.head.n_draft_vocab)


def test_a_draft_that_does_not_fit_its_target_is_refused_in_one_line(tmp_path, files):
    from tinymodel import write_tiny_model

    drafts = files[1]
    for path, says in [  # (tinymodel's llama: 2 layers; gemma2's forward hands over nothing)
        (write_tiny_model(tmp_path / "llama.gguf", "llama"), r"reads target layers \[1, 2, 3\]; of this 2-layer target"),
        (write_tiny_model(tmp_path / "gemma2.gguf", "gemma2"), "gemma2's forward in kvrun does not hand EAGLE-3"),
    ]:
        with pytest.raises(KvrunError, match=says) as e:
            Engine(path, n_ctx=64, draft=drafts[""])
        assert "\n" not in str(e.value)


def _refused(path: Path, says: str) -> None:
    g = GGUFFile(path)
    with pytest.raises(GGUFError, match=says) as e:
        model_class("eagle3")(g, load_config(g), get_backend("cpu"), 64, 64)
    assert "\n" not in str(e.value)
