"""``Session.fork()``: a chat branched where it stands goes on as the original would, on a copy of its KV cache (a
compressed one as it is held), and the two branches go on apart."""

from __future__ import annotations

import pytest

from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine

TURNS = ["the cat sat on the mat", "and then the dog came in", "what did the cat do"]


def _model(path, kv=None):
    return Model(Engine(path, n_ctx=256, n_batch=32, kv=KVConfig.parse(kv) if kv else None))


def _send(session, turn):
    return session.send(turn, max_tokens=16, temperature=0)


@pytest.mark.parametrize("kv", [None, "2,residual=8", "4,policy=h2o,ratio=0.9,residual=8"])
def test_a_fork_goes_on_as_the_original_on_a_copy_of_its_cache(tiny_llama_path, kv):
    m = _model(tiny_llama_path, kv)
    a, twin = m.session(system="be brief"), m.session(system="be brief")
    assert _send(a, TURNS[0]) == _send(twin, TURNS[0])
    b = a.fork()
    assert b.tokens == a.tokens and b.cache.offset == a.cache.offset > 0 and b.cache is not a.cache
    assert b.messages == a.messages and b.messages[-1] is not a.messages[-1]
    assert _send(b, TURNS[1]) == _send(twin, TURNS[1])
    assert b.last_stats.n_prompt == twin.last_stats.n_prompt  # (the new turn alone evaluated: the rest was copied)
    # the original, untouched by its fork's turn, goes its own way as a chat that never forked does
    other = m.session(system="be brief")
    _send(other, TURNS[0])
    assert _send(a, TURNS[2]) == _send(other, TURNS[2])


def test_a_fork_whose_cache_cannot_copy_evaluates_the_conversation(tiny_llama_path):
    """A compressed cache that merges never copies (another branch's tokens may live in its K/V): the fork's first
    reply evaluates the whole conversation, and answers as a fresh chat given the same messages does."""
    m = _model(tiny_llama_path, "4,policy=h2o,budget=48,residual=8,merge=keepkv")
    a = m.session(system="be brief")
    _send(a, TURNS[0])
    b = a.fork()
    assert b.tokens == [] and b.cache.offset == 0 and b.messages == a.messages
    fresh = m.session(system="be brief")
    fresh.messages = [dict(x) for x in a.messages]
    assert _send(b, TURNS[1]) == _send(fresh, TURNS[1])
