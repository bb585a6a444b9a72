"""Saved chats: a session written to disk and read back goes on exactly as the one that never stopped
(its compressed KV cache as it was: what a policy evicted and merged cannot be rebuilt by prefilling
the conversation again), and a file that is foreign, damaged, unsafe or made under other settings is
refused in one line."""

from __future__ import annotations

import os
import pickle
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from kvrun.cache.kvconfig import KVConfig
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.sessionfile import MAGIC, VERSION
from tinymodel import write_tiny_model

TURNS = ["the cat sat on the mat", "and then the dog came in", "what did the cat do"]


def _model(path, kv=None, n_ctx=256):
    return Model(Engine(path, n_ctx=n_ctx, n_batch=32, kv=KVConfig.parse(kv) if kv else None))


@pytest.mark.parametrize("kv", [None, "2", "2,policy=snapkv,budget=48,residual=8,merge=keepkv", "4,policy=h2o,budget=48,residual=8,mixed=8/4"])
def test_a_resumed_chat_goes_on_as_the_one_that_never_stopped(tiny_llama_path, tmp_path, kv):
    m = _model(tiny_llama_path, kv)
    a = m.session(system="be brief")
    a.send(TURNS[0], max_tokens=24, temperature=0)
    f = tmp_path / "chat.kvs"
    assert a.save(f) == f.stat().st_size > 0
    b = _model(tiny_llama_path, kv).load_session(f)  # another Model object: a new process's
    assert b.messages == a.messages and b.tokens == a.tokens and b.cache.offset == a.cache.offset
    for turn in TURNS[1:]:
        assert b.send(turn, max_tokens=24, temperature=0) == a.send(turn, max_tokens=24, temperature=0)
    if kv and "budget" in kv:
        assert max(layer.n_tokens() for layer in a.cache.layers) < a.cache.offset  # tokens were evicted meanwhile
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        for name, x in vars(la).items():
            if isinstance(x, np.ndarray) and not name.startswith("_"):
                np.testing.assert_array_equal(x, getattr(lb, name), err_msg=name)


def test_a_session_made_under_other_settings_is_refused_naming_what_differs(tiny_llama_path, tmp_path):
    f = tmp_path / "chat.kvs"
    s = _model(tiny_llama_path, "2").session()
    s.send(TURNS[0], max_tokens=4, temperature=0)
    s.save(f)
    for kv, n_ctx, says in [("4", 256, "saved with kv '2', this run has '4'"), ("2", 128, "saved with n_ctx 256, this run has 128")]:
        with pytest.raises(KvrunError, match=says) as e:
            _model(tiny_llama_path, kv, n_ctx).load_session(f)
        assert "\n" not in str(e.value)
    other = write_tiny_model(tmp_path / "other.gguf", "qwen2")
    with pytest.raises(KvrunError, match="saved with"):
        _model(other, "2").load_session(f)


def test_a_session_saved_by_other_cache_code_is_refused(tiny_llama_path, tmp_path, monkeypatch):
    """The cache's objects are pickled as they are: another version's may lack an attribute this one reads
    (an AttributeError mid-chat), so a file records a digest of kvrun/cache's sources."""
    from kvrun.runtime import sessionfile

    m = _model(tiny_llama_path, "2")
    f = tmp_path / "chat.kvs"
    m.session().save(f)
    monkeypatch.setattr(sessionfile, "_cache_code", lambda: "0123456789abcdef")
    with pytest.raises(KvrunError, match="saved by another version of kvrun's cache code"):
        m.load_session(f)


def test_a_foreign_damaged_or_unsafe_file_is_refused(tiny_llama_path, tmp_path):
    m = _model(tiny_llama_path)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(KvrunError, match="is not a kvrun session file"):
        m.load_session(foreign)
    good = tmp_path / "chat.kvs"
    m.session().save(good)
    cut = tmp_path / "cut.kvs"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(KvrunError, match="damaged or unsafe"):
        m.load_session(cut)
    # a pickle that would run a command when loaded: refused before anything runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.kvs"
    evil.write_bytes(MAGIC + VERSION.to_bytes(4, "little") + zlib.compress(pickle.dumps({"x": Evil()})))
    with pytest.raises(KvrunError, match="names posix.system|names os.system|names nt.system"):
        m.load_session(evil)
    assert not marker.exists()
    with pytest.raises(KvrunError, match="cannot read the session"):
        m.load_session(tmp_path / "missing.kvs")


def test_cli_chat_session_saves_on_leaving_and_resumes_where_it_stopped(tiny_llama_path, tmp_path):
    f = str(tmp_path / "c.kvs")
    base = ["chat", str(tiny_llama_path), "-n", "12", "--temp", "0", "-c", "256", "--kv-bits", "2", "--kv-budget", "96"]
    whole = CliRunner().invoke(main, base, input=f"{TURNS[0]}\n{TURNS[1]}\n")
    first = CliRunner().invoke(main, base + ["--session", f], input=f"{TURNS[0]}\n")
    assert first.exit_code == 0 and f"chat saved to {f}" in first.output and os.path.exists(f), first.output
    second = CliRunner().invoke(main, base + ["--session", f], input=f"{TURNS[1]}\n")
    assert second.exit_code == 0 and f"resumed {f}: 1 turns" in second.output, second.output

    def replies(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if ln and not ln.startswith(("kvrun", "[", "("))]

    assert replies(first.output) + replies(second.output) == replies(whole.output)
    r = CliRunner().invoke(main, base[:-4] + ["--kv-bits", "4", "--session", f], input="hi\n")
    assert r.exit_code == 2 and r.output.count("\n") <= 2 and "saved with kv" in r.output, r.output
    r = CliRunner().invoke(main, base, input="/save\n")
    assert r.exit_code == 0 and "/save needs a file" in r.output
    r = CliRunner().invoke(main, base + ["--session", str(tmp_path / "no" / "such" / "dir.kvs")], input="hi\n")
    assert r.exit_code == 2 and "its folder cannot be written" in r.output  # said before the chat, not after it


@pytest.mark.parametrize("kv", [None, "2,policy=snapkv,budget=48,residual=8"])
def test_a_prompt_cache_gives_the_logits_of_a_run_without_it(tiny_llama_path, tmp_path, kv):
    """kvrun run --prompt-cache: the saved prefix ends on a batch boundary, so the batches fall where a run
    without the file puts them and the logits are the same bits, an eviction policy's cache included; a
    prompt that departs inside the saved prefix reuses it truncated to a batch boundary (exact for fp16)."""
    from kvrun.runtime.sessionfile import prompt_cache

    m = _model(tiny_llama_path, kv)  # n_batch 32
    eng, f = m.engine, tmp_path / "prompt.kvc"
    ids = m.tokenize(" ".join(TURNS * 12))[:100]

    def fresh(x):
        return eng.eval(eng.new_cache(), x)

    for want_reused in (0, 96):
        cache, rest, reused = prompt_cache(f, eng, ids)
        assert reused == want_reused and len(rest) == 4
        np.testing.assert_array_equal(eng.eval(cache, rest), fresh(ids))
    other = ids[:40] + ids[60:]  # departs at token 40: the batch from 32 is evaluated again
    cache, rest, reused = prompt_cache(f, eng, other)
    assert reused == 32
    if kv is None:
        np.testing.assert_array_equal(eng.eval(cache, rest), fresh(other))
    with pytest.raises(KvrunError, match="is a prompt cache .*, not a saved chat"):
        m.load_session(f)
