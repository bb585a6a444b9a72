"""Embeddings (Model.embed, POST /v1/embeddings, Ollama's /api/embed): a text's final-normed hidden
states, mean-pooled (or the last token's) and L2-normalised, as llama-server's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_server
from reference import Reference
from test_server import call

model, server = test_server.model, test_server.server  # the fixtures of test_server.py: a tiny model served


def _ref(path, ids, pooling="mean"):
    h = Reference(path).hidden(ids)
    v = h.mean(0) if pooling == "mean" else h[-1]
    return v / np.linalg.norm(v)


def test_embed_pools_the_final_normed_hidden_states(model, tiny_llama_path):
    ids = model.tokenize("the cat sat on the mat")
    for pooling in ("mean", "last"):
        got = model.embed(ids, pooling=pooling)
        assert got.shape == (1, model.config.n_embd)
        assert abs(np.linalg.norm(got[0]) - 1) < 1e-5
        assert np.abs(got[0] - _ref(tiny_llama_path, ids, pooling)).max() < 1e-4
    raw = model.embed("the cat sat on the mat", normalize=False)[0]
    assert np.abs(raw / np.linalg.norm(raw) - model.embed("the cat sat on the mat")[0]).max() < 1e-6
    two = model.embed(["the cat", "a dog ran"])
    assert two.shape == (2, model.config.n_embd) and np.abs(two[0] - model.embed("the cat")[0]).max() < 1e-6


def test_bad_inputs_are_one_line(model):
    for bad, says in (([], "non-empty"), ([1.5], "must be a text or a list of token ids"), ("", "is empty")):
        with pytest.raises(ValueError, match=says):
            model.embed(bad)
    with pytest.raises(ValueError, match="pooling must be one of mean, cls, last"):
        model.embed("x", pooling="max")


def test_the_openai_and_ollama_endpoints(server, model):
    want = model.embed(["the cat", "a dog ran"])
    status, text = call(server, "POST", "/v1/embeddings", {"model": "x", "input": ["the cat", "a dog ran"]})
    assert status == 200, text
    r = json.loads(text)
    assert [d["index"] for d in r["data"]] == [0, 1] and r["usage"]["prompt_tokens"] == len(model.tokenize("the cat")) + len(model.tokenize("a dog ran"))
    assert np.abs(np.array([d["embedding"] for d in r["data"]]) - want).max() < 1e-6
    r = json.loads(call(server, "POST", "/api/embed", {"model": "x", "input": "the cat"})[1])
    assert np.abs(np.array(r["embeddings"][0]) - want[0]).max() < 1e-6 and r["prompt_eval_count"] > 0
    r = json.loads(call(server, "POST", "/api/embeddings", {"model": "x", "prompt": "a dog ran"})[1])
    assert np.abs(np.array(r["embedding"]) - want[1]).max() < 1e-6
    for path, body, says in (("/v1/embeddings", {"input": []}, "input must be"), ("/v1/embeddings", {"input": "x", "encoding_format": "base64"}, "not supported"),
                             ("/api/embed", {"input": ["x", ""]}, "is empty")):  # fmt: skip
        status, text = call(server, "POST", path, body)
        err = json.loads(text)["error"]
        assert status == 400 and says in (err if isinstance(err, str) else err["message"]), text
