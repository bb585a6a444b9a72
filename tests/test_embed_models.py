"""Embedding models (models/bert.py, loaders/wpm.py): BERT and Nomic-BERT encoders held to
llama.cpp on tiny random models (tests/fixtures/embed_<arch>.npz from tools/make_embed_fixtures.py):
the same WordPiece token ids, the same hidden state for every token; pooled by the file's pooling
type; refused for text in one line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from tinybert import TEXTS, Q, write_tiny_bert

from kvrun.loaders.errors import KvrunError
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine

FIX = __import__("pathlib").Path(__file__).parent / "fixtures"
ARCHS = ("bert", "nomic-bert")


@pytest.fixture(scope="module", params=ARCHS)
def encoder(request, tmp_path_factory):
    path = write_tiny_bert(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param)
    fx = np.load(FIX / f"embed_{request.param}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "the fixture was made from another model file"
    return Model(Engine(path)), fx


def test_wordpiece_ids_are_llama_cpps(encoder):
    m, fx = encoder
    for k, text in enumerate(TEXTS):
        assert m.tokenize(text) == fx[f"ids_{k}"].tolist(), text


def test_every_token_state_is_llama_cpps(encoder):
    """(ggml's GELU reads a float16 table: the model rounds as it does; 1e-4 of states ~3.)"""
    m, fx = encoder
    for k, text in enumerate(TEXTS):
        h = m.engine.embed(m.tokenize(text))
        np.testing.assert_allclose(h, fx[f"embd_{k}"], atol=5e-4, err_msg=text)


def test_embeddings_pool_as_the_file_says_and_are_unit_vectors(encoder):
    m, fx = encoder
    v = m.embed(TEXTS)
    h = fx["embd_1"].astype(np.float64)
    want = h[0] if m.engine.model.pooling == "cls" else h.mean(axis=0)  # bert's file: cls; nomic-bert's: mean
    np.testing.assert_allclose(v[1], want / np.linalg.norm(want), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    last = m.embed(TEXTS[1], pooling="last", normalize=False)[0]
    np.testing.assert_allclose(last, h[-1], atol=5e-4)


def test_quantized_weights_embed_close_to_float(tmp_path):
    m32 = Model(Engine(write_tiny_bert(tmp_path / "f32.gguf", "bert")))
    m8 = Model(Engine(write_tiny_bert(tmp_path / "q8.gguf", "bert", qtype=Q.Q8_0)))
    a, b = m32.embed(TEXTS), m8.embed(TEXTS)
    assert np.all(np.sum(a * b, axis=1) > 0.999)  # cosine similarity of unit vectors


def test_an_encoder_writes_no_text_and_says_so(encoder):
    m, _ = encoder
    with pytest.raises(KvrunError, match="is an embedding model .*: it makes embeddings"):
        m.complete("the cat", max_tokens=4)
    with pytest.raises(KvrunError, match="more than the 128 this encoder reads at once"):
        m.embed([2] * 129)


def test_kvrun_embed_prints_a_vector_a_text(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    path = write_tiny_bert(tmp_path / "m.gguf", "nomic-bert")
    r = CliRunner().invoke(main, ["embed", str(path), "-p", TEXTS[0], "-p", TEXTS[1], "--json"])
    assert r.exit_code == 0, r.output
    vecs = np.array(json.loads(r.output.splitlines()[-1])["embeddings"])
    assert vecs.shape == (2, 64) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    r = CliRunner().invoke(main, ["run", str(path), "-p", "hi"])  # (a cold kernel cache says so on a line before)
    assert r.exit_code != 0 and r.output.splitlines()[-1].startswith("kvrun: error: tiny-nomic-bert is an embedding model (nomic-bert)"), r.output
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0 and "embeddings only (kvrun embed, /v1/embeddings), mean pooling" in r.output


def test_the_server_embeds_with_an_embedding_model(tmp_path):
    import threading

    from test_server import call

    from kvrun.runtime.server import make_server

    m = Model(Engine(write_tiny_bert(tmp_path / "m.gguf", "bert")))
    httpd = make_server(m, "127.0.0.1", 0, "tiny-bert")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        status, text = call(port, "POST", "/v1/embeddings", {"input": TEXTS[:2]})
        data = json.loads(text)["data"]
        assert status == 200 and len(data) == 2
        np.testing.assert_allclose(np.array(data[0]["embedding"]), m.embed(TEXTS[0])[0], atol=1e-6)
        status, text = call(port, "POST", "/api/embed", {"input": TEXTS[0]})
        assert status == 200 and len(json.loads(text)["embeddings"][0]) == 64
        status, text = call(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 400 and "is an embedding model" in json.loads(text)["error"]["message"], text
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------ EmbeddingGemma (gemma-embedding)
# models/gemma_embedding.py held to llama.cpp on tests/tinygemmaembed.py's tiny model (fixtures from
# tools/make_gemma_embed_fixture.py): with the dense_2/dense_3 projections and without.  Per token, states
# ~10 agree within 5e-4 of their largest (measured 1.5e-4); the mean-pooled unit vectors within 1e-4
# (measured 7e-6).  The texts run past the 8-token window, so that every distinguishing feature, the
# window's symmetric bidirectional mask, the global layers' full one, the window layers' own rope base and
# the projections, moves the pooled vectors by far more than that (test_gemma_embedding_features_matter).

GEMMA_EMBED_TOL = 1e-4  # pooled unit vectors, absolute
GEMMA_EMBED_STATE_TOL = 5e-4  # per-token states, of their largest magnitude


def _gemma_embedder(tmp_path_factory, name: str):
    from tinygemmaembed import write_tiny_gemma_embedding

    path = write_tiny_gemma_embedding(tmp_path_factory.mktemp(name) / "m.gguf", dense=name == "gemma-embedding")
    fx = np.load(FIX / f"embed_{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "the fixture was made from another model file"
    return Model(Engine(path)), fx


def _llama_cpp_unit(fx, k: int) -> np.ndarray:
    p = fx[f"pooled_{k}"].astype(np.float64)
    return p / np.linalg.norm(p)


@pytest.fixture(scope="module", params=("gemma-embedding", "gemma-embedding-nodense"))
def gemma_embedder(request, tmp_path_factory):
    return _gemma_embedder(tmp_path_factory, request.param)


def test_gemma_embedding_ids_states_and_embeddings_are_llama_cpps(gemma_embedder):
    from tinygemmaembed import SLIDING_WINDOW, TEXTS as GTEXTS

    m, fx = gemma_embedder
    assert m.engine.model.pooling == "mean" and m.config.sliding_window == SLIDING_WINDOW
    assert m.config.swa_layers == (True,) * 5 + (False,)  # llama.cpp's pattern for the arch: 5 window layers, 1 global
    vecs = m.embed(GTEXTS)  # the file's pooling (mean), L2-normalised
    for k, text in enumerate(GTEXTS):
        ids = m.tokenize(text)
        assert ids == fx[f"ids_{k}"].tolist(), text
        assert len(ids) > SLIDING_WINDOW + 1, "the text must run past the window"
        h, want = m.engine.embed(ids), fx[f"embd_{k}"]
        assert np.abs(h - want).max() <= GEMMA_EMBED_STATE_TOL * np.abs(want).max(), text
        np.testing.assert_allclose(vecs[k], _llama_cpp_unit(fx, k), atol=GEMMA_EMBED_TOL, err_msg=text)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def _causal(T: int) -> np.ndarray:
    return np.triu(np.full((T, T), -np.inf, np.float32), 1)


def _band(T: int, lo: int, hi: int) -> np.ndarray:
    """-inf outside lo <= i - j <= hi."""
    d = np.arange(T)[:, None] - np.arange(T)[None, :]
    return np.where((d >= lo) & (d <= hi), np.float32(0.0), np.float32(-np.inf)).astype(np.float32)


@pytest.mark.parametrize("change", ["causal", "no window", "causal window (Gemma 3's)", "window one narrower",
                                    "window one wider", "window rope base as global", "no dense projections"])  # fmt: skip
def test_gemma_embedding_features_matter(tmp_path_factory, monkeypatch, change):
    """Each feature that sets EmbeddingGemma apart, taken away, moves the pooled vectors well past the tolerance:
    what shows the test above would catch its loss."""
    from tinygemmaembed import SLIDING_WINDOW, TEXTS as GTEXTS

    from kvrun.models.gemma_embedding import GemmaEmbeddingModel

    m, fx = _gemma_embedder(tmp_path_factory, "gemma-embedding")
    model, attend, half = m.engine.model, GemmaEmbeddingModel._attend, SLIDING_WINDOW // 2

    def altered(self, q, k, v, mask):
        T = q.shape[0]
        if change == "causal":
            mask = _causal(T) if mask is None else mask + _causal(T)
        elif change == "no window":
            mask = None
        elif mask is not None:  # a window layer's (the global layers' as they were)
            lo, hi = {"causal window (Gemma 3's)": (0, SLIDING_WINDOW - 1), "window one narrower": (1 - half, half - 1),
                      "window one wider": (-half - 1, half + 1)}.get(change, (-half, half))  # fmt: skip
            mask = _band(T, lo, hi)
        return attend(self, q, k, v, mask)

    monkeypatch.setattr(GemmaEmbeddingModel, "_attend", altered)
    if change == "window rope base as global":
        monkeypatch.setattr(model, "rope_local", model.rope_global)
    if change == "no dense projections":
        monkeypatch.setattr(model, "dense_2", None)
        monkeypatch.setattr(model, "dense_3", None)
    vecs = m.embed(GTEXTS)
    err = max(np.abs(vecs[k] - _llama_cpp_unit(fx, k)).max() for k in range(len(GTEXTS)))
    assert err > 10 * GEMMA_EMBED_TOL, f"{change}: {err:.2e} off llama.cpp's"


def test_gemma_embedding_quantized_close_and_writes_no_text(tmp_path):
    from tinygemmaembed import TEXTS as GTEXTS
    from tinygemmaembed import write_tiny_gemma_embedding

    m32 = Model(Engine(write_tiny_gemma_embedding(tmp_path / "f32.gguf")))
    m8 = Model(Engine(write_tiny_gemma_embedding(tmp_path / "q8.gguf", qtype=Q.Q8_0)))
    assert np.all(np.sum(m32.embed(GTEXTS) * m8.embed(GTEXTS), axis=1) > 0.999)  # cosine similarity of unit vectors
    with pytest.raises(KvrunError, match=r"is an embedding model \(gemma-embedding\): it makes embeddings"):
        m32.complete("the cat", max_tokens=4)
    with pytest.raises(KvrunError, match="more than the 128 this encoder reads at once"):
        m32.embed([5] * 129)
