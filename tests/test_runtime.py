"""Engine, sampling, sessions and the CLI on a tiny random model."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.sampling import Sampler, SamplerConfig, greedy


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("rt") / "tiny.gguf", "llama")


@pytest.fixture(scope="module")
def model(tiny_path):
    return Model(Engine(tiny_path, n_ctx=512, n_batch=64))


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(greedy())(logits) == 1


def test_same_seed_same_tokens():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    cfg = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    a = [Sampler(cfg)(logits) for _ in range(1)] + [Sampler(cfg)(logits)]
    s1, s2 = Sampler(cfg), Sampler(cfg)
    assert [s1(logits) for _ in range(20)] == [s2(logits) for _ in range(20)]
    assert a[0] == a[1]


def test_seed_minus_one_is_a_random_seed_as_in_llama_cpp():
    logits = np.zeros(1000, np.float32)  # every token equally likely
    cfg = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=-1)
    draws = {tuple(Sampler(cfg)(logits) for _ in range(4)) for _ in range(3)}
    assert len(draws) > 1  # three samplers seeded at random (equal draws: odds 1e-12)


def test_top_k_and_min_p_restrict_candidates():
    logits = np.array([5.0, 4.0, 0.0, -5.0], np.float32)
    s = Sampler(SamplerConfig(temperature=5.0, top_k=2, top_p=1.0, min_p=0.0, seed=1))
    assert {s(logits) for _ in range(200)} <= {0, 1}
    s = Sampler(SamplerConfig(temperature=5.0, top_k=0, top_p=1.0, min_p=0.5, seed=1))
    assert {s(logits) for _ in range(200)} <= {0, 1}


def test_repeat_penalty_discourages_history():
    logits = np.array([2.0, 1.9], np.float32)
    s = Sampler(SamplerConfig(temperature=0.0, repeat_penalty=1.5))
    assert s(logits, history=[0]) == 1


@pytest.mark.parametrize(
    "cfg",
    [greedy(), SamplerConfig(seed=3), SamplerConfig(top_k=0, seed=3), SamplerConfig(repeat_penalty=1.3, seed=3)],
    ids=["greedy", "top-k", "no-top-k", "penalty"],
)
def test_sample_from_an_array_module_draws_what_the_host_sampler_draws(cfg):
    """Sampler.sample (device logits: only the id or the top-k candidates come down) follows __call__ draw for draw
    (a device's array module: numpy's functions under another module)."""
    logits = (np.random.default_rng(1).standard_normal(5000) * 3).astype(np.float32)
    host, dev = Sampler(cfg), Sampler(SamplerConfig(**vars(cfg)))
    pulled = []

    def to_host(a):
        pulled.append(np.shape(a))
        return np.asarray(a)

    history = [5, 9, 9]
    xp = SimpleNamespace(argmax=np.argmax, argpartition=np.argpartition, concatenate=np.concatenate, float64=np.float64)
    assert [host(logits, history) for _ in range(30)] == [dev.sample(logits, history, xp, to_host) for _ in range(30)]
    want = {"greedy": (), "top-k": (2 * cfg.top_k,)}.get("greedy" if cfg.temperature <= 0 else "top-k")
    if cfg.repeat_penalty == 1.0 and cfg.top_k:
        assert set(pulled) == {want}
    else:  # penalties and an untruncated draw need every logit
        assert set(pulled) == {(5000,)}


def test_bad_sampling_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="top-p"):
        SamplerConfig(top_p=0.0).validate()


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda m: m.complete("the", max_tokens=2, temprature=0), "unknown sampling option 'temprature'; known: temperature, top_k"),
        (lambda m: m.complete("the", max_tokens=2, temperature="hot"), "temperature must be a number, got 'hot'"),
        (lambda m: m.complete("the", max_tokens=2, stop=5), "stop must be a string or a list of strings, got 5"),
        (lambda m: m.chat("hello", max_tokens=2), "messages must be a list of"),
        (lambda m: m.logits([1.5, 2.0]), "token ids must be integers, got float64"),
    ],
)
def test_a_mistaken_api_call_says_what_is_wrong_in_one_line(model, call, says):
    """Not a TypeError from deep inside (SamplerConfig, a comparison, np.asarray truncating floats to ids)."""
    with pytest.raises((ValueError, KvrunError), match=re.escape(says)) as e:
        call(model)
    assert "\n" not in str(e.value)
    assert model.complete("the", max_tokens=2, temperature=np.float32(0), top_k=np.int64(5))  # numpy scalars are numbers


def test_generation_is_deterministic_and_stops(model):
    a = model.complete("the", max_tokens=12, temperature=0)
    b = model.complete("the", max_tokens=12, temperature=0)
    assert a == b and len(model.tokenize(a, add_bos=False)) > 0
    assert model.last_stats.n_gen <= 12


def test_stop_string_is_not_printed(model):
    full = model.complete("the", max_tokens=12, temperature=0)
    stop = full[3:5]
    if not stop.strip():
        pytest.skip("degenerate continuation")
    cut = model.complete("the", max_tokens=12, temperature=0, stop=stop)
    assert stop not in cut and full.startswith(cut)


def test_logits_cover_every_position(model):
    ids = model.tokenize("the cat", add_bos=False)
    lg = model.logits(ids)
    assert lg.shape == (len(ids), model.config.n_vocab) and lg.dtype == np.float32
    # the last row equals a fresh single evaluation of the same prefix
    cache = model.new_cache()
    last = model.engine.eval(cache, ids)[-1]
    np.testing.assert_allclose(lg[-1], last, rtol=1e-4, atol=1e-4)


def test_session_keeps_cache_between_turns(model):
    s = model.session(system="sys")
    s.send("hello", max_tokens=4, temperature=0)
    first = s.last_stats.n_prompt
    held = s.cache.offset
    s.send("again", max_tokens=4, temperature=0)
    # the second turn prefills only what is new, not the whole conversation
    assert s.last_stats.n_prompt < held
    assert first > 0


def test_max_tokens_minus_one_generates_until_the_context_is_full(tiny_path):
    from kvrun.runtime.engine import GenRequest, GenStats

    eng = Engine(tiny_path, n_ctx=48, n_batch=16)
    stats = GenStats()
    out = list(eng.generate_tokens(eng.new_cache(), [1, 2, 3], GenRequest(max_tokens=-1, sampler=greedy(), ignore_eos=True), stats))
    assert len(out) == 48 - 3 + 1 and stats.stop_reason == "context full"  # the last one is sampled, never stored


def test_a_bad_request_leaves_the_session_as_it_was(model):
    s = model.session(system="sys")
    s.send("hello", max_tokens=3, temperature=0)
    before = (list(s.messages), list(s.tokens), s.cache.offset)
    for bad in (dict(max_tokens=-2), dict(temperature=-1.0), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            s.send("again", **bad)
        assert (s.messages, s.tokens, s.cache.offset) == before, bad
    assert s.send("again", max_tokens=-1, temperature=0, stop=["v"]) is not None  # -1: no limit


def test_chat_leaves_its_stats_on_the_model(model):
    model.chat([{"role": "user", "content": "hello"}], max_tokens=3, temperature=0)
    assert model.last_stats.n_prompt > 0 and 0 < model.last_stats.n_gen <= 3


@pytest.mark.parametrize("messages", [[], [{"role": "assistant", "content": "hi"}], [{"role": "user"}], [{"role": "bot", "content": "x"}], ["hi"]])
def test_chat_names_what_is_wrong_with_its_messages(model, messages):
    with pytest.raises(ValueError, match="messages"):
        model.chat(messages, max_tokens=2)


def test_context_overflow_is_a_clear_error(model):
    with pytest.raises(KvrunError, match="do not fit the context"):
        model.engine.eval(model.new_cache(), [1] * 600)


def test_cli_run(tiny_path):
    r = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "the", "-n", "8", "--temp", "0", "--no-stats"])
    assert r.exit_code == 0, r.output
    # (stdout alone: on a cold kernel cache stderr opens with the first-run notice)
    assert r.stdout.startswith("the")


def test_threads_bound_numba_and_blas():
    import numba

    from kvrun.ops.cpu.blas import blas_threads, set_blas_threads
    from kvrun.runtime.engine import set_threads

    before = (numba.get_num_threads(), blas_threads())
    try:
        assert set_threads(1) == 1
        assert blas_threads() in (1, None)  # None: numpy's BLAS is not OpenBLAS here
    finally:
        numba.set_num_threads(before[0])
        if before[1] is not None:
            set_blas_threads(before[1])


def test_cli_says_when_the_first_run_compiles(tmp_path, monkeypatch):
    from gguf import GGMLQuantizationType as Q

    from kvrun.ops.cpu import jitcache
    from kvrun.ops.cpu.backend import CPUBackend

    # (quantized weights: float ones never take the fused products, whose cache the check reads)
    path = write_tiny_model(tmp_path / "q8.gguf", "llama", qtype=Q.Q8_0)
    args = ["run", str(path), "-p", "the", "-n", "2", "--temp", "0", "--no-stats"]
    CliRunner().invoke(main, args)  # compiles (and caches) the kernels if no earlier test did
    assert jitcache.kernels_cached()
    assert "compiling" not in CliRunner().invoke(main, args).output
    # an index another source left (an edit, a checkout: jitstamp.py) is stale, and compiles again
    from kvrun.ops.cpu import fused

    with monkeypatch.context() as mp:
        for k in (fused._fused_1, fused._fused_n):
            mp.setattr(k._cache._cache_file, "_source_stamp", ("another", "source"))
        assert not jitcache.kernels_cached()
    monkeypatch.setattr(CPUBackend, "kernels_cached", lambda self: False)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "first run on this machine: compiling the CPU kernels" in r.output


def test_cli_run_bad_flag(tiny_path):
    r = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "the", "--top-p", "0"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("flag, value, says", [("-c", "-5", "--ctx-size must be >= 0"), ("-b", "0", "--batch-size must be >= 1")])
def test_a_negative_context_or_batch_is_a_one_line_error_not_a_silent_default(tiny_path, flag, value, says):
    # (-c -5 had run with the model's own context, -b 0 with batches of one token)
    r = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "the", "-n", "1", flag, value])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith(f"kvrun: error: {says}"), r.output


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "-p", "the", "--device", "tpu"], "Invalid value for '--device'"),
        (["run", "--no-such-flag"], "No such option '--no-such-flag'"),
        (["tokenize"], "Missing argument"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["chat", "--kv-bits", "x"], "'x' is not a valid integer"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help_to_read(args, says):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("kvrun: error: ") and says in r.output and "--help'" in r.output, r.output


def test_help_and_version_exit_zero():
    for args in ([], ["--help"], ["run", "-h"], ["--version"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and "error" not in r.output, (args, r.output)


def test_cli_n_predict_minus_one_is_no_limit_and_below_it_an_error(tiny_path):
    args = ["run", str(tiny_path), "-p", "the", "--temp", "0", "-c", "32", "--ignore-eos"]
    r = CliRunner().invoke(main, args + ["-n", "-1"])
    assert r.exit_code == 0, r.output
    m = re.search(r"\[prompt (\d+) tok.*\| gen (\d+) tok", r.output)
    assert m and int(m[1]) + int(m[2]) == 32 + 1, r.output  # every slot filled, and the last token sampled
    r = CliRunner().invoke(main, args + ["-n", "-2"])
    assert r.exit_code == 2 and r.output.startswith("kvrun: error: -n must be >= 0, or -1 for no limit"), r.output


def test_cli_run_reads_a_piped_prompt(tiny_path):
    args = ["run", str(tiny_path), "-n", "2", "--temp", "0", "--no-stats"]
    for extra in ([], ["-f", "-"]):
        r = CliRunner().invoke(main, args + extra, input="the cat")
        assert r.exit_code == 0 and r.stdout.startswith("the cat"), (extra, r.output)
    r = CliRunner().invoke(main, args, input="")
    assert r.exit_code == 2 and r.output.startswith("kvrun: error: the prompt read from standard input is empty"), r.output


def test_cli_chat_script(tiny_path):
    script = "hello\n/reset\nhi again\n/exit\n"
    r = CliRunner().invoke(main, ["chat", str(tiny_path), "-n", "4", "--temp", "0", "-c", "512"], input=script)
    assert r.exit_code == 0, r.output
    assert "conversation cleared" in r.output
    assert "the file has no chat template (a base model, not a chat one?)" in r.output  # the tiny file has none
    assert r.output.count("gen ") >= 2  # a stats line after each reply


def test_cli_chat_slash_commands_are_not_sent_to_the_model(tiny_path):
    script = "/help\n/rset\n/usr/bin is a folder\n/bye\nnever read\n"
    r = CliRunner().invoke(main, ["chat", str(tiny_path), "-n", "2", "--temp", "0", "-c", "512"], input=script)
    assert r.exit_code == 0, r.output
    assert "/reset" in r.output and "forget the conversation" in r.output  # the help
    assert "unknown command /rset; /help lists them" in r.output
    assert r.output.count("gen ") == 1  # one reply: to the message with words after its slash; /bye left


def test_cli_chat_loads_the_kernels_while_the_user_types_and_the_first_reply_waits_for_them(tiny_path, monkeypatch):
    import time

    import kvrun.cli as cli
    from kvrun.runtime.api import Session

    events = []

    def slow_warm_up(self):
        time.sleep(0.3)
        events.append("warm")

    stream = Session.stream

    def recorded_stream(self, *a, **k):
        events.append("reply")
        return stream(self, *a, **k)

    monkeypatch.setattr(cli, "_interactive", lambda: True)
    monkeypatch.setattr(Engine, "warm_up", slow_warm_up)
    monkeypatch.setattr(Session, "stream", recorded_stream)
    r = CliRunner().invoke(main, ["chat", str(tiny_path), "-n", "3", "--temp", "0", "-c", "512"], input="hello\nhi\n/exit\n")
    assert r.exit_code == 0, r.output
    assert events == ["warm", "reply", "reply"]


def test_warm_up_leaves_the_engine_as_it_was(tiny_path):
    """The warm-up runs on a scratch cache, past the fp16 window of a 2-bit cache, and hands the
    decode-thread tuner back: a conversation afterwards is the same as without it."""
    kv = KVConfig.parse("2")
    cold, warmed = Engine(tiny_path, n_ctx=256, n_batch=64, kv=kv), Engine(tiny_path, n_ctx=256, n_batch=64, kv=kv)
    tuner = warmed.tuner
    warmed.warm_up()
    assert warmed.tuner is tuner
    prompt = list(range(5, 40))
    a, b = cold.new_cache(), warmed.new_cache()
    np.testing.assert_array_equal(cold.eval(a, prompt), warmed.eval(b, prompt))
    np.testing.assert_array_equal(cold.eval(a, [7]), warmed.eval(b, [7]))


def test_bench_tg_times_nothing_before_the_full_warm_up(tiny_path, monkeypatch):
    """tg is timed only after ``Engine.warm_up`` (a compressed cache's spill and quantized steps
    included): its first repeat does not load kernels the warm-up could have."""
    import time

    from kvrun.runtime import bench

    events = []
    warm_up, perf_counter = Engine.warm_up, time.perf_counter

    def recorded_warm_up(self):
        events.append("warm")
        warm_up(self)

    def recorded_clock():
        events.append("clock")
        return perf_counter()

    engine = Engine(tiny_path, n_ctx=256, n_batch=64, kv=KVConfig.parse("2"))
    monkeypatch.setattr(Engine, "warm_up", recorded_warm_up)
    monkeypatch.setattr(bench.time, "perf_counter", recorded_clock)
    res = bench.bench_tg(engine, 3, 2)
    assert events[0] == "warm" and events.count("warm") == 1
    assert len(res.samples) == 2


def test_cli_info_and_tokenize(tiny_path):
    r = CliRunner().invoke(main, ["info", str(tiny_path), "--json"])
    assert r.exit_code == 0
    f = json.loads(r.output)
    assert f["architecture"] == "llama" and f["n_layer"] == 2 and f["n_head_kv"] == 2
    assert f["kv_bytes_per_token"]["16"] == 2 * 2 * 2 * 16 * 2
    r = CliRunner().invoke(main, ["tokenize", str(tiny_path), "the cat", "--json"])
    out = json.loads(r.output)
    assert len(out["ids"]) == len(out["pieces"]) and "".join(out["pieces"]) == "the cat"


def test_perplexity_reports_the_standard_error_llama_perplexity_prints(tiny_path, tmp_path):
    """PPL +/- ppl * std(nll) / sqrt(n - 1) over the scored tokens: the second half of each window."""
    from kvrun.runtime.perplexity import log_softmax_at, perplexity

    eng = Engine(tiny_path, n_ctx=64)
    toks = np.random.default_rng(3).integers(0, eng.cfg.n_vocab, 200)
    res = perplexity(eng, toks, 64)
    nll = []
    for c in range(3):
        w = toks[c * 64 : (c + 1) * 64].copy()
        if eng.tokenizer.add_bos and eng.tokenizer.bos_id is not None:
            w[0] = eng.tokenizer.bos_id
        logits = eng.eval(eng.new_cache(), w, logits_all=True, logits_start=32)
        nll.extend(-log_softmax_at(logits[:31], toks[c * 64 + 33 : (c + 1) * 64]))
    nll = np.array(nll)
    assert res.n_tokens == len(nll) == 93
    assert res.ppl == pytest.approx(np.exp(nll.mean()), rel=1e-6)
    assert res.ppl_se == pytest.approx(res.ppl * nll.std(ddof=1) / np.sqrt(len(nll)), rel=1e-4)
    assert 0 < res.ppl_se < res.ppl


def test_cli_bench_and_perplexity(tiny_path, tmp_path):
    r = CliRunner().invoke(main, ["bench", str(tiny_path), "-p", "16", "-n", "4", "-r", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    res = out["results"]
    assert [x["test"] for x in res] == ["pp16", "tg4"] and all(x["tok_s"] > 0 for x in res)
    from kvrun.ops.cpu.qmatmul import HAVE_VNNI

    assert out["prefill_products"].startswith("int8 GEMM" if HAVE_VNNI else "float tiles")  # says which path the figures are of
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 40)
    r = CliRunner().invoke(main, ["perplexity", str(tiny_path), "-f", str(text), "--ctx", "64", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["ppl"] > 1 and out["n_tokens"] == out["n_chunks"] * 31 and 0 < out["ppl_se"] < out["ppl"]


@pytest.mark.parametrize("cmd", ["perplexity", "kv-eval"])
def test_a_text_too_short_fails_in_one_line_before_any_progress_bar(cmd, tiny_path, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("the cat")
    r = CliRunner().invoke(main, [cmd, str(tiny_path), "-f", str(text), "--ctx", "64"] + (["--configs", "4"] if cmd == "kv-eval" else []))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("kvrun: error: the text has") and "smaller --ctx" in r.output


def test_bench_with_nothing_to_measure_says_so():
    r = CliRunner().invoke(main, ["bench", "-p", "0", "-n", "0"])  # fails before the model is looked for
    assert r.exit_code == 2 and r.output.startswith("kvrun: error: -p and -n are both 0"), r.output


def test_the_default_context_stays_within_training_and_a_longer_one_is_warned_about(tiny_path):
    from kvrun.runtime.engine import Engine

    assert Engine(tiny_path).n_ctx == 1024  # the tiny model's training context, under the default 4096
    args = ["run", str(tiny_path), "-p", "the", "-n", "1", "--temp", "0", "--no-stats"]
    for c in ([], ["-c", "1024"], ["-c", "0"]):
        assert "warning" not in CliRunner().invoke(main, args + c).output, c
    r = CliRunner().invoke(main, args + ["-c", "1025"])
    assert r.exit_code == 0 and "kvrun: warning: a context of 1025 tokens is past the 1024 the model was trained for" in r.output


def test_log_softmax_at_equals_a_float64_log_softmax_across_row_blocks():
    from kvrun.runtime.perplexity import log_softmax_at

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((37, 5000)) * 8).astype(np.float32)  # 37 rows: two full blocks and a part
    logits[5, 17] = 60.0  # one near-certain row
    targets = rng.integers(0, 5000, 37)
    targets[5] = 17
    x = logits.astype(np.float64)
    want = x[np.arange(37), targets] - (np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1))
    got = log_softmax_at(logits, targets)
    assert got.shape == (37,) and np.abs(got - want).max() < 1e-5


def test_bench_names_the_file_type_as_llama_cpp():
    from kvrun.cli import _quant_label

    # general.file_type wins: a Q4_K_M Gemma 3 270M holds more Q5_0 tensors than Q4_K ones
    assert _quant_label(15, {"Q5_0": 81, "Q4_K": 27, "F32": 109}) == "Q4_K_M"
    assert _quant_label(3, {}) == "Q4_1" and _quant_label(0, {}) == "F32"
    assert _quant_label(-1, {"Q4_0": 3, "F32": 9}) == "Q4_0"  # no file type: the commonest quantized type


def test_cli_bench_at_depth_labels_tests_like_llama_bench(tiny_path):
    r = CliRunner().invoke(main, ["bench", str(tiny_path), "-p", "8", "-n", "4", "-r", "1", "-d", "24", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [x["test"] for x in out["results"]] == ["pp8 @ d24", "tg4 @ d24"] and out["n_depth"] == 24


def test_cli_perplexity_decodes_a_compressed_cache_token_by_token(tiny_path, tmp_path):
    """Batched windows would attend each chunk to itself in fp16 and hide the
    quantization; token by token, 2-bit K/V must change the figure."""
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 40)
    args = ["perplexity", str(tiny_path), "-f", str(text), "--ctx", "64", "--chunks", "2", "--json"]
    ppl = {}
    for name, extra in {"fp16": [], "q2": ["--kv-bits", "2", "--kv-residual", "8", "--kv-group", "16"], "fp16_b1": ["-b", "1"]}.items():
        r = CliRunner().invoke(main, args + extra)
        assert r.exit_code == 0, r.output
        ppl[name] = json.loads(r.output.strip().splitlines()[-1])["ppl"]
    assert abs(ppl["fp16_b1"] / ppl["fp16"] - 1) < 1e-3  # batching itself changes nothing
    assert abs(ppl["q2"] / ppl["fp16"] - 1) > 1e-4


def test_cli_kv_eval_json_has_one_object_per_config(tiny_path, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the dog ate the hat. " * 40)
    configs = "16; 4; 2,residual=8; 2,policy=h2o,budget=40,residual=8"
    r = CliRunner().invoke(main, ["kv-eval", str(tiny_path), "-f", str(text), "--ctx", "96", "--configs", configs, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["config"].split(",")[0] for x in rows] == ["16", "4", "2", "2"]
    for x in rows:
        assert {"config", "kv_bytes", "bits_per_value", "ppl", "dppl_pct", "kl", "top1", "tok_s"} <= set(x)
    fp16, q4, q2, h2o = rows
    assert fp16["dppl_pct"] == 0.0 and fp16["kl"] < 1e-9 and fp16["top1"] == 1.0  # 16 bits is the reference itself
    assert q2["bits_per_value"] < q4["bits_per_value"] < fp16["bits_per_value"]
    assert h2o["kv_bytes"] < q2["kv_bytes"]  # a budget of 40 of 96 tokens allocates less


def test_cli_kv_eval_bad_config_is_one_line(tiny_path, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat " * 200)
    for bad in ["5", "2,policy=nope", "2,policy=h2o,budget=3", "2,frobnicate=1"]:
        r = CliRunner().invoke(main, ["kv-eval", str(tiny_path), "-f", str(text), "--ctx", "96", "--configs", bad])
        assert r.exit_code == 2 and r.output.count("\n") == 1 and "Traceback" not in r.output, (bad, r.output)


def test_cli_run_with_kv_flags_reports_kv_memory(tiny_path):
    r = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "the", "-n", "8", "--temp", "0", "--kv-bits", "2", "--kv-residual", "8"])
    assert r.exit_code == 0, r.output
    assert "| kv " in r.output and "holding" in r.output
    r = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "the", "--kv-bits", "5"])
    assert r.exit_code == 2 and "bits=5" in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("cmd", ["run", "chat"])
@pytest.mark.parametrize("flag, value", [("--temp", "-1"), ("--top-p", "2"), ("--min-p", "1"), ("--top-k", "-2"), ("--repeat-penalty", "0"), ("--seed", "-5")])
def test_a_bad_sampling_flag_fails_in_one_line_naming_it_before_the_model_loads(cmd, flag, value, tmp_path):
    missing = str(tmp_path / "never-opened.gguf")  # the flag is checked first: the model is never looked for
    args = [cmd, missing, flag, value] + (["-p", "the"] if cmd == "run" else [])
    r = CliRunner().invoke(main, args, input="hello\n")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"kvrun: error: {flag} must be") and "Traceback" not in r.output


def test_cli_needle_runs_every_depth(tiny_path):
    r = CliRunner().invoke(main, ["needle", str(tiny_path), "--ctx", "400", "--depths", "10,90", "--trials", "1", "--configs", "16; 2,residual=8", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 2 and all(set(x["depths"]) == {"10", "90"} for x in rows)
    r = CliRunner().invoke(main, ["needle", str(tiny_path), "--depths", "ten"])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    r = CliRunner().invoke(main, ["needle", str(tiny_path), "--ctx", "10"])  # the error alone, no progress bar drawn first
    assert r.exit_code == 2 and r.output.startswith("kvrun: error: --ctx 10 is too small") and r.output.count("\n") == 1, r.output


def test_cli_chat_60_turns_with_a_2bit_budgeted_cache_keeps_memory_flat(tiny_path):
    """`kvrun chat --kv-bits 2 --kv-budget 512`: a scripted 60-turn chat of over 10k
    tokens runs without error; the cache never holds more than its budget and its
    size never changes (context shifts drop the oldest turns when positions run out)."""
    import re

    script = "".join(f"turn {i}: tell me about the number {i * 7} and the colour of the sky.\n" for i in range(60)) + "/exit\n"
    args = ["chat", str(tiny_path), "-n", "80", "--temp", "0", "-c", "2048", "--kv-bits", "2", "--kv-budget", "512"]
    r = CliRunner().invoke(main, args, input=script)
    assert r.exit_code == 0, r.output
    stats = re.findall(r"\[prompt (\d+) tok.*\| gen (\d+) tok.*\| kv ([\d.]+ \w+) holding (\d+) of (\d+) tokens, budget 512 \| cache 2,policy=h2o,budget=512\]", r.output)
    assert len(stats) == 60 and "error" not in r.output
    assert sum(int(p) + int(g) for p, g, *_ in stats) > 10_000
    assert len({kv for _, _, kv, _, _ in stats}) == 1  # flat memory
    assert max(int(h) for *_, h, _ in stats) <= 512 < max(int(n) for *_, n in stats)
    assert "context full" in r.output


def test_session_shifts_out_old_turns_when_the_context_fills(model):
    s = model.session(system="sys")
    for i in range(12):
        s.send(f"message number {i} " * 4, max_tokens=40, temperature=0)
        assert s.cache.offset <= model.engine.n_ctx
    assert s.n_shifts >= 1
    assert s.messages[0] == {"role": "system", "content": "sys"}  # the system prompt survives a shift
    assert "message number 11" in s.messages[-2]["content"]
    with pytest.raises(KvrunError, match="raise --ctx-size"):
        s.send("x" * 2000, max_tokens=8)


def test_a_kv_budget_alone_evicts_with_h2o_and_zero_means_no_budget():
    """`--kv-budget N` alone evicts with the default policy; `--kv-budget 0` (the whole context, as
    llama.cpp's 0 for a size) asks for no eviction, so no policy runs and the cache stays the plain one."""
    from kvrun.cli import kv_config

    assert kv_config({"kv_budget": 512}) == KVConfig(policy="h2o", budget=512)
    assert kv_config({"kv_ratio": 0.5, "kv_bits": 2}) == KVConfig(bits=2, policy="h2o", ratio=0.5)
    assert kv_config({"kv_budget": 0, "kv_bits": 2}) == KVConfig(bits=2)
    assert not kv_config({"kv_budget": 0}).is_compressed


def test_load_takes_a_kv_config_or_spec(tiny_path):
    import kvrun

    m = kvrun.load(str(tiny_path), n_ctx=256, kv=kvrun.KVConfig(bits=2, policy="h2o", budget=96))
    m2 = kvrun.load(str(tiny_path), n_ctx=256, kv="2,policy=h2o,budget=96")
    assert m.engine.kv == m2.engine.kv
    s = m.session()
    s.send("the cat sat on the mat " * 10, max_tokens=30, temperature=0)
    assert max(layer.n_tokens() for layer in s.cache.layers) <= 96
    with pytest.raises(KvrunError, match="policy"):
        kvrun.load(str(tiny_path), kv="2,policy=nope")


def test_a_prefill_holds_blas_at_one_thread_only_while_it_runs(tiny_path, monkeypatch):
    """Beside the VNNI GEMM a prefill runs BLAS (attention's GEMMs) on one thread, then gives an
    application's numpy its threads back; a decode step leaves BLAS alone."""
    from kvrun.ops.cpu import qmatmul
    from kvrun.ops.cpu.blas import blas_threads, set_blas_threads
    from kvrun.runtime.engine import Engine

    before = blas_threads()
    if before is None or not qmatmul.HAVE_VNNI:
        pytest.skip("needs numpy's OpenBLAS and a VNNI host")
    eng = Engine(tiny_path, n_ctx=64)
    seen = []
    forward = eng.model.forward
    monkeypatch.setattr(eng.model, "forward", lambda *a: (seen.append(blas_threads()), forward(*a)))
    try:
        set_blas_threads(2)
        cache = eng.new_cache()
        eng.eval(cache, list(range(1, 13)))
        assert blas_threads() == 2
        eng.eval(cache, [5])
        assert seen == [1, 2]
    finally:
        set_blas_threads(before)


def test_info_names_the_tensor_types_kvrun_cannot_run(tmp_path):
    from gguf import GGMLQuantizationType as Q

    path = write_tiny_model(tmp_path / "q81.gguf", "llama", extra_tensor=("blk.0.attn_q.weight.extra", Q.Q8_1, 256))
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0 and "kvrun cannot run Q8_1 yet" in r.output, r.output
    assert json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)["unsupported_types"] == ["Q8_1"]
