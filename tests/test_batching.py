"""Continuous batching: several sequences fed through the model in one forward get the logits each gets
fed alone, threads generating at once get the text each gets alone, and a server with parallel slots
answers concurrent requests with the model's own replies."""

from __future__ import annotations

import http.client
import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.plain import PlainLayerCache
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.api import Model
from kvrun.runtime import batcher
from kvrun.runtime.batcher import Batcher
from kvrun.runtime.engine import Engine, GenRequest, shared_prefix
from kvrun.runtime.sampling import SamplerConfig
from kvrun.runtime.server import make_server
from kvrun.runtime.slots import Slot, pick

PROMPTS = [[1, 5, 9, 13, 2, 7, 40, 41, 3], [1, 30, 31], [1, 8, 8, 8, 8, 60, 61, 62, 63, 64, 65, 66, 67, 12, 11]]
STEPS = [[4, 50], [6, 7], [90, 91]]  # tokens fed one a step after each prompt


def _alone(eng: Engine) -> list[list[np.ndarray]]:
    """Each prompt, then its steps, fed on a cache of its own: the logits of every step."""
    out = []
    for p, steps in zip(PROMPTS, STEPS):
        c = eng.new_cache()
        rows = [eng.eval(c, p)[-1]]
        rows += [eng.eval(c, [t])[-1] for t in steps]
        out.append(rows)
    return out


def _together(eng: Engine) -> list[list[np.ndarray]]:
    """The same, every forward over all three sequences: the prompts in one batch, then each step."""
    caches = [eng.new_cache() for _ in PROMPTS]
    outs = [np.empty((1, eng.cfg.n_vocab), np.float32) for _ in PROMPTS]
    eng.forward_batch(caches, [np.array(p) for p in PROMPTS], [len(p) - 1 for p in PROMPTS], outs)
    got = [[o[0].copy()] for o in outs]
    for i in range(len(STEPS[0])):
        eng.forward_batch(caches, [np.array([s[i]]) for s in STEPS], [0, 0, 0], outs)
        for g, o in zip(got, outs):
            g.append(o[0].copy())
    assert [c.offset for c in caches] == [len(p) + len(s) for p, s in zip(PROMPTS, STEPS)]
    return got


@pytest.mark.parametrize("arch,kv", [("llama", None), ("gemma3", None), ("llama", KVConfig(bits=4)), ("qwen3moe", None)],
                         ids=["llama", "gemma3-window", "llama-kv4", "qwen3moe"])  # fmt: skip
def test_a_batch_of_sequences_gets_the_logits_each_gets_alone(tmp_path, arch, kv):
    eng = Engine(write_tiny_model(tmp_path / "m.gguf", arch), n_ctx=64, n_batch=32, kv=kv)
    for want, got in zip(_alone(eng), _together(eng)):
        for a, b in zip(want, got):  # (the products take 1 and 3 rows by other kernels: rounding apart)
            assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
            assert a.argmax() == b.argmax()


def test_a_failed_batch_leaves_every_cache_as_it_was(tiny_llama_path):
    eng = Engine(tiny_llama_path, n_ctx=32, n_batch=16)
    caches = [eng.new_cache(), eng.new_cache()]
    eng.eval(caches[0], [1, 2, 3])
    outs = [np.empty((1, eng.cfg.n_vocab), np.float32)] * 2
    with pytest.raises(KvrunError, match="outside the vocabulary"):
        eng.forward_batch(caches, [np.array([4]), np.array([eng.cfg.n_vocab])], [0, 0], outs)
    with pytest.raises(KvrunError, match="more than --batch-size"):
        eng.forward_batch(caches, [np.arange(1, 10), np.arange(1, 10)], [8, 8], outs)
    assert [c.offset for c in caches] == [3, 0]
    want = Engine(tiny_llama_path, n_ctx=32, n_batch=16)
    c = want.new_cache()
    want.eval(c, [1, 2, 3])
    np.testing.assert_array_equal(eng.eval(caches[0], [4]), want.eval(c, [4]))


def _run_all(threads: list[threading.Thread]) -> None:
    """Start the threads, then wait for each."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)


def _generate_in_threads(eng: Engine, prompts: list[list[int]], req: GenRequest) -> list[list[int]]:
    """Each prompt generated in a thread of its own, all at once: every thread is a generating sequence before any
    starts (a tiny model writes 20 tokens in a few ms, less than a thread switch: one could finish before the next
    began, where a real model's generations overlap)."""
    out: list[list[int]] = [[] for _ in prompts]
    errors = []
    ready = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        cache = eng.new_cache()
        try:
            with eng.batcher.sequence(cache):
                ready.wait()
                out[i] = list(eng.generate_tokens(cache, prompts[i], req))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    _run_all([threading.Thread(target=run, args=(i,)) for i in range(len(prompts))])
    assert not errors
    return out


@pytest.mark.parametrize("arch", ["llama", "lfm2"])
def test_threads_generating_at_once_write_the_text_each_writes_alone(tmp_path, arch, monkeypatch):
    monkeypatch.setattr(batcher, "GATHER_S", 0.5)  # (a loaded test machine samples slower than the default moment)
    eng = Engine(write_tiny_model(tmp_path / "m.gguf", arch), n_ctx=128, n_batch=8)
    req = GenRequest(max_tokens=20, sampler=SamplerConfig(temperature=0), ignore_eos=True)
    alone = [list(eng.generate_tokens(eng.new_cache(), p, req)) for p in PROMPTS]
    eng.batcher = b = Batcher(eng)  # (counters from zero)
    assert b.batched == (arch == "llama")  # (LFM2's convolutions: one sequence a forward, in turn)
    together = _generate_in_threads(eng, PROMPTS, req)
    assert together == alone
    n_rows = sum(len(p) for p in PROMPTS) + 3 * 20  # every prompt, then each token generated, fed back
    assert b.n_rows == n_rows
    if b.batched:  # the sequences met: far fewer forwards than one per step and chunk
        assert b.n_forwards <= 0.6 * (n_rows - sum(len(p) for p in PROMPTS))


def test_a_sequence_that_fails_in_a_batch_fails_alone(tiny_llama_path, monkeypatch):
    """A forward that fails for one sequence leaves every cache as it was, and the batch's sequences go again one
    by one: only the failing one's thread hears of it, the others' text is unchanged."""
    monkeypatch.setattr(batcher, "GATHER_S", 0.5)
    eng = Engine(tiny_llama_path, n_ctx=128, n_batch=16)
    req = GenRequest(max_tokens=12, sampler=SamplerConfig(temperature=0), ignore_eos=True)
    want = list(eng.generate_tokens(eng.new_cache(), PROMPTS[0], req))
    good, bad = eng.new_cache(), eng.new_cache()

    class BreaksAt8(PlainLayerCache):  # (a cache of its own kind: the batch feeds it alone, not in decode_steps' one call)
        def update_and_attend(self, q, k, v, pos, out):
            if pos[-1] >= 8:
                raise RuntimeError("this cache broke")
            super().update_and_attend(q, k, v, pos, out)

    bad.layers[1].__class__ = BreaksAt8
    got, errors = [], []

    def run(cache, prompt, sink):
        try:
            sink.extend(eng.generate_tokens(cache, prompt, req))
        except RuntimeError as e:
            errors.append(str(e))

    _run_all([threading.Thread(target=run, args=(good, PROMPTS[0], got)), threading.Thread(target=run, args=(bad, [1, 2], []))])
    assert got == want and errors == ["this cache broke"]
    assert bad.offset == 8  # (what it held before the failing step)


def test_a_long_prompt_is_fed_in_chunks_beside_the_others_decoding(tiny_llama_path):
    eng = Engine(tiny_llama_path, n_ctx=256, n_batch=16)
    long_prompt = list(np.arange(1, 120) % 90 + 1)
    req = GenRequest(max_tokens=12, sampler=SamplerConfig(temperature=0), ignore_eos=True)
    alone = [list(eng.generate_tokens(eng.new_cache(), p, req)) for p in ([1, 5, 9], long_prompt)]
    eng.batcher = b = Batcher(eng)  # (counters from zero)
    assert _generate_in_threads(eng, [[1, 5, 9], long_prompt], req) == alone
    assert b.n_rows == 3 + 119 + 2 * 12


def test_an_eval_returns_only_once_its_job_has_left_the_queue(tiny_llama_path, monkeypatch):
    """A caller woken between its job's last tokens and the step's bookkeeping (any notification of the batcher's
    condition wakes it) waits for the job to leave the forward and the queue: its next eval of the same cache is
    never taken for a second thread feeding it (CI saw that once, as "one cache is being fed from two threads")."""
    eng = Engine(tiny_llama_path, n_ctx=64, n_batch=8)
    b, count, after = eng.batcher, Batcher._count, Batcher._after

    def count_and_wake(self, plan):  # (a stray notification right after the tokens are through)
        count(self, plan)
        with self.cv:
            self.cv.notify_all()

    def late_after(self, plan):  # (the bookkeeping a moment later: the woken caller runs first)
        threading.Event().wait(0.05)
        after(self, plan)

    monkeypatch.setattr(Batcher, "_count", count_and_wake)
    monkeypatch.setattr(Batcher, "_after", late_after)
    feeds, cache = ([1, 5, 9], [4], [50], [7]), eng.new_cache()
    got = [eng.eval(cache, toks) for toks in feeds]  # (back to back: the next eval right after the wake)
    assert b.queue == []
    monkeypatch.undo()
    want = Engine(tiny_llama_path, n_ctx=64, n_batch=8)
    wc = want.new_cache()
    for toks, rows in zip(feeds, got):
        np.testing.assert_array_equal(rows, want.eval(wc, toks))


def test_chat_sessions_in_threads_reply_as_each_alone(tiny_llama_path):
    """An app may chat in several threads on one model: the sessions are fed together, their replies unchanged."""
    m = Model(Engine(tiny_llama_path, n_ctx=256, n_batch=32))
    users = ["tell me about cats", "and the sea?", "what is bread", "rain again"]
    want = [m.session().send(u, max_tokens=16, temperature=0) for u in users]
    got: list = [None] * len(users)

    def chat(i: int) -> None:
        got[i] = m.session().send(users[i], max_tokens=16, temperature=0)

    _run_all([threading.Thread(target=chat, args=(i,)) for i in range(len(users))])
    assert got == want


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_copied_prefix_goes_on_as_the_evaluated_one(tmp_path, arch):
    """KVCache.copy_prefix: a cache given another's first n positions continues as if it had evaluated them
    (gemma3: sliding-window rings too); where a ring has written over a position still in view, it refuses."""
    eng = Engine(write_tiny_model(tmp_path / "m.gguf", arch), n_ctx=64, n_batch=4)
    text = list(np.arange(1, 40) % 90 + 1)
    src = eng.new_cache()
    eng.eval(src, text)
    # (chunk boundaries of both: each position's K/V computed alike, so equal to the bit.  gemma3's window of 8
    # rings 8 + 4 slots: after 39 tokens it holds positions 27-38, so only a prefix whose view starts there copies)
    for n in (4, 12, 20, 36) if arch == "llama" else (36,):
        dst, ref = eng.new_cache(), eng.new_cache()
        assert dst.copy_prefix(src, n) and dst.offset == n
        eng.eval(ref, text[:n])
        np.testing.assert_array_equal(eng.eval(dst, [7, 8, 9], logits_all=True), eng.eval(ref, [7, 8, 9], logits_all=True))
    if arch == "gemma3":  # position 24 was written over, and a token at 32 sees it
        assert not eng.new_cache().copy_prefix(src, 32)
    assert not eng.new_cache().copy_prefix(src, 50)  # (more than src holds)
    compressed = Engine(write_tiny_model(tmp_path / "m.gguf", arch), n_ctx=64, n_batch=4, kv=KVConfig(bits=4))
    c = compressed.new_cache()
    compressed.eval(c, text)
    # (a compressed cache copies too, tests/test_compressed_copy_prefix.py, where its rings still hold the prefix's view)
    assert compressed.new_cache().copy_prefix(c, 5) == (arch == "llama")


def test_slot_pick_keeps_a_conversation_in_its_slot_and_spares_long_caches():
    class S:  # a slot's session as pick reads it
        def __init__(self, tokens):
            self.tokens = tokens

    a, b, c = Slot(0, S([1, 2, 3, 4, 5, 6])), Slot(1, S([1, 2, 9])), Slot(2, S([]))
    assert pick([a, b, c], [1, 2, 3, 4, 5, 6, 7, 8]) is a  # its conversation, grown
    assert pick([a, b, c], [1, 2, 9, 10]) is b
    assert pick([a, b, c], [1, 2, 7]) is c  # shares a system prompt only: an empty slot, not a's cache
    a.idle_since, b.idle_since = 1.0, 2.0
    assert pick([a, b], [5]) is a  # nothing shared, none empty: the one idle longest
    assert pick([b], None) is b


@pytest.fixture(scope="module")
def server2(tiny_llama_path, tmp_path_factory):
    model = Model(Engine(tiny_llama_path, n_ctx=256, n_batch=32))
    httpd = make_server(model, "127.0.0.1", 0, "tiny", parallel=2, slot_save_path=str(tmp_path_factory.mktemp("slots")))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield model, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _post(port: int, path: str, body: dict | None) -> tuple[int, str]:
    """POST ``body``, or (None) GET ``path``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = json.dumps(body).encode() if body is not None else None
    conn.request("POST" if body is not None else "GET", path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, text


def test_a_server_with_two_slots_answers_concurrent_requests_with_the_models_own_replies(server2):
    model, port = server2
    chats = [[{"role": "user", "content": f"tell me about {w}"}] for w in ("cats", "the sea", "bread", "rain")]
    want = [model.chat(m, max_tokens=16, temperature=0) for m in chats]
    got: list = [None] * len(chats)

    def ask(i: int) -> None:
        status, text = _post(port, "/v1/chat/completions", {"messages": chats[i], "max_tokens": 16, "temperature": 0})
        got[i] = json.loads(text)["choices"][0]["message"]["content"] if status == 200 else text

    _run_all([threading.Thread(target=ask, args=(i,)) for i in range(len(chats))])
    assert got == want
    status, text = _post(port, "/slots", None)
    slots = json.loads(text)
    assert status == 200 and [s["id"] for s in slots] == [0, 1] and sum(s["n_requests"] for s in slots) == 4
    assert not any(s["is_processing"] for s in slots) and all(s["n_tokens"] > 0 for s in slots)
    assert json.loads(_post(port, "/health", None)[1]) == {"status": "ok", "slots_idle": 2, "slots_processing": 0}
    status, text = _post(port, "/metrics", None)  # Prometheus' text format, llama-server's names
    metrics = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    assert status == 200 and float(metrics["kvrun:requests_total"]) >= 4 and float(metrics["kvrun:tokens_predicted_total"]) >= 4
    assert float(metrics["kvrun:n_tokens_per_decode"]) > 1  # (prompts, and steps fed together)
    assert metrics["kvrun:requests_processing"] == "0" and metrics["kvrun:requests_deferred"] == "0"


def test_n_choices_are_written_at_once_in_two_slots(server2):
    """n choices take a slot each, up to --parallel at once (their steps fed through the model together); greedy,
    each is the model's own reply."""
    model, port = server2
    msgs = [{"role": "user", "content": "tell me about goats"}]
    before = json.loads(_post(port, "/slots", None)[1])
    status, text = _post(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0, "n": 2})
    assert status == 200, text
    want = model.chat(msgs, max_tokens=12, temperature=0)
    assert [c["message"]["content"] for c in json.loads(text)["choices"]] == [want, want]
    after = json.loads(_post(port, "/slots", None)[1])
    assert [b["n_requests"] + 1 for b in before] == [a["n_requests"] for a in after]  # one choice in each slot


def test_a_slot_saved_erased_and_restored_goes_on_as_it_would_have(server2):
    """llama-server's slot actions: a request pinned to a slot (id_slot), the slot saved to a file, erased,
    restored; the conversation then goes on with its cache as if nothing had happened."""
    model, port = server2
    first = [{"role": "user", "content": "tell me about owls"}]
    status, text = _post(port, "/v1/chat/completions", {"messages": first, "max_tokens": 8, "temperature": 0, "id_slot": 1})
    reply = json.loads(text)["choices"][0]["message"]["content"]
    held = json.loads(_post(port, "/slots", None)[1])[1]["n_tokens"]
    status, text = _post(port, "/slots/1?action=save", {"filename": "owls.kvs"})
    saved = json.loads(text)
    assert status == 200 and saved["id_slot"] == 1 and saved["n_saved"] == held and saved["n_written"] > 0
    assert json.loads(_post(port, "/slots/1?action=erase", {})[1]) == {"id_slot": 1, "n_erased": held}
    assert json.loads(_post(port, "/slots", None)[1])[1]["n_tokens"] == 0
    status, text = _post(port, "/slots/1?action=restore", {"filename": "owls.kvs"})
    assert status == 200 and json.loads(text)["n_restored"] == held
    convo = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and their eyes?"}]
    status, text = _post(port, "/v1/chat/completions", {"messages": convo, "max_tokens": 8, "temperature": 0, "id_slot": 1})
    answer = json.loads(text)
    assert answer["choices"][0]["message"]["content"] == model.chat(convo, max_tokens=8, temperature=0)
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= held - 2  # the restored cache, reused


def test_a_new_conversation_copies_a_shared_system_prompt_from_another_slot(server2):
    model, port = server2
    for i in (0, 1):
        _post(port, f"/slots/{i}?action=erase", {})
    system = {"role": "system", "content": "You are a patient assistant for a bakery. " * 2}
    a = [system, {"role": "user", "content": "what bread is best"}]
    b = [system, {"role": "user", "content": "do you sell cakes"}]
    _post(port, "/v1/chat/completions", {"messages": a, "max_tokens": 4, "temperature": 0, "id_slot": 0})
    status, text = _post(port, "/v1/chat/completions", {"messages": b, "max_tokens": 8, "temperature": 0, "id_slot": 1})
    answer = json.loads(text)
    shared = shared_prefix(model.chat_tokens(a), model.chat_tokens(b))
    assert shared > 64 and answer["usage"]["prompt_tokens_details"]["cached_tokens"] == shared  # copied from slot 0
    metrics = dict(line.split() for line in _post(port, "/metrics", None)[1].splitlines() if not line.startswith("#"))
    assert int(metrics["kvrun:prompt_tokens_copied_total"]) >= shared
    assert answer["choices"][0]["message"]["content"] == model.chat(b, max_tokens=8, temperature=0)


def test_ignore_eos_writes_max_tokens(server2, monkeypatch):
    """llama-server's ignore_eos (what tools/bench_serve.py sends): the reply is max_tokens long whatever the model says."""
    model, port = server2
    monkeypatch.setattr(model.engine.tokenizer, "eot_ids", frozenset(range(model.config.n_vocab)))  # (every token ends a reply)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "temperature": 0}
    assert json.loads(_post(port, "/v1/chat/completions", body)[1])["usage"]["completion_tokens"] == 0
    status, text = _post(port, "/v1/chat/completions", {**body, "ignore_eos": True})
    assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 40


@pytest.mark.parametrize("path,body,status,words", [
    ("/slots/7?action=erase", {}, 404, "slots 0..1"),
    ("/slots/0?action=wipe", {}, 400, "action=save"),
    ("/slots/0?action=save", {"filename": "../x"}, 400, "no directories"),
    ("/slots/0?action=restore", {"filename": "none.kvs"}, 404, "no slot file"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "id_slot": 2}, 400, "id_slot must be"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "ignore_eos": "yes"}, 400, "ignore_eos must be"),
])  # fmt: skip
def test_bad_slot_requests_are_one_line_4xx(server2, path, body, status, words):
    got, text = _post(server2[1], path, body)
    assert got == status and words in json.loads(text)["error"]["message"]


def test_bad_parallel_flags_are_one_line_errors(tiny_llama_path):
    r = CliRunner().invoke(main, ["serve", str(tiny_llama_path), "--parallel", "0"])
    assert r.exit_code != 0 and "--parallel must be in 1..64" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", str(tiny_llama_path), "-np", "2", "--model-draft", str(tiny_llama_path), "--port", "0"])
    assert r.exit_code != 0 and "--parallel 1 with --draft" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("window,sinks", [(0, ()), (8, ()), (0, (0.5, -1.0, 2.0, 0.0))], ids=["global", "window", "sinks"])
def test_one_call_decodes_every_sequence_as_each_alone(window, sinks):
    """cache/plain.decode_steps: the decode steps of a batch's fp16 rings in one call give each sequence the output
    and the ring its own step gives it, bit for bit (1 to 4 tokens a sequence; rings of different fill, one wrapping)."""
    from kvrun.cache.base import LayerSpec
    from kvrun.cache.plain import PlainLayerCache, decode_steps

    spec = LayerSpec(4, 2, 16, 16, window=window, scale=0.25, sink_logits=sinks)
    rng = np.random.default_rng(3)
    cap = 24 if window else 64

    def filled(n: int) -> list:
        rings = []
        for ln in n:
            c = PlainLayerCache(spec, cap)
            for s in range(0, ln, 8):
                t = min(8, ln - s)
                x = rng.standard_normal((t, 4, 16)).astype(np.float32)
                c.update_and_attend(x, x[:, :2].copy(), x[:, 2:].copy(), np.arange(s, s + t, dtype=np.int32), np.zeros_like(x))
            rings.append(c)
        return rings

    fill, counts = [5, 30, 1], [1, 3, 2]
    alone, together = filled(fill), None
    rng = np.random.default_rng(3)
    together = filled(fill)
    T = sum(counts)
    q = rng.standard_normal((T, 4, 16)).astype(np.float32)
    k, v = rng.standard_normal((T, 2, 16)).astype(np.float32), rng.standard_normal((T, 2, 16)).astype(np.float32)
    pos = np.concatenate([np.arange(f, f + n) for f, n in zip(fill, counts)]).astype(np.int32)
    bounds = [0, *np.cumsum(counts).tolist()]
    want, got = np.zeros_like(q), np.zeros_like(q)
    for i, c in enumerate(alone):
        lo, hi = bounds[i], bounds[i + 1]
        c.update_and_attend(q[lo:hi], k[lo:hi], v[lo:hi], pos[lo:hi], want[lo:hi])
    assert decode_steps(together, q, k, v, pos, bounds, got)
    assert np.array_equal(got, want)
    for a, b in zip(alone, together):
        assert a.used == b.used and np.array_equal(a.k, b.k) and np.array_equal(a.v, b.v) and np.array_equal(a.pos, b.pos)
    assert not decode_steps(together, np.zeros((9, 4, 16), np.float32), k, v, pos, [0, 5, 7, 9], got)  # (5 tokens: a prefill)
