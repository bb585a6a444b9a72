"""Reranking (models/rank.py, runtime/rerank.py): tiny random rerankers of tests/tiny_rerank.py (a
BERT cross-encoder and a Qwen3-Reranker) held to llama.cpp (tests/fixtures/rerank_<arch>.npz from
tools/make_rerank_fixtures.py): llama-server's prompt for each (query, document) pair token for token,
and the classification head's outputs; Model.rerank, POST /v1/rerank in Jina's and TEI's shapes, and
`kvrun rerank`; anything else refused in one line."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFValueType, PoolingType
from test_server import call
from tiny_rerank import DOCS, QUERY, WRITERS, _rewrite
from tinybert import write_tiny_bert

from kvrun.cli import main
from kvrun.loaders.errors import KvrunError, UnsupportedModelError
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.rerank import prompt_ids
from kvrun.runtime.server import make_server

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerank")
    return {arch: write(d / f"{arch}.gguf") for arch, write in WRITERS.items()}


@pytest.fixture(scope="module", params=list(WRITERS))
def reranker(request, paths):
    path = paths[request.param]
    fx = np.load(FIX / f"rerank_{request.param}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "tiny_rerank.py writes another model now: regenerate the fixtures"
    return Model(Engine(path)), fx


@pytest.fixture(scope="module")
def bert_server(paths):
    httpd = make_server(Model(Engine(paths["bert"])), "127.0.0.1", 0, "tiny-reranker")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_each_pairs_prompt_is_llama_servers(reranker):
    """BERT: [CLS] query [SEP] document (its vocabulary adds no EOS); Qwen3: the file's rerank template,
    its special tokens parsed (a document's "<|endoftext|>" is the token there, text for BERT)."""
    m, fx = reranker
    for k, doc in enumerate(DOCS):
        assert prompt_ids(m, QUERY, doc) == fx[f"ids_{k}"].tolist(), doc


def test_scores_are_llama_cpps(reranker):
    """The head's every output (BERT's one score; Qwen3's P(yes), P(no)) within 1e-4 relative on a VNNI host, whose
    products meet the activations as int8 as llama.cpp's do; within 5e-3 on an AVX2 one, whose many-token products
    meet them in float32 (BERT's score 2.7e-3 off there)."""
    from kvrun.ops.cpu.qmatmul import HAVE_VNNI

    m, fx = reranker
    rtol = 1e-4 if HAVE_VNNI else 5e-3
    head = m.engine.model.rank_head
    for k, doc in enumerate(DOCS):
        got = head(m.engine.embed(prompt_ids(m, QUERY, doc)))
        np.testing.assert_allclose(got, fx[f"out_{k}"], rtol=rtol, err_msg=doc)
    np.testing.assert_allclose(m.rerank(QUERY, DOCS), [fx[f"out_{k}"][0] for k in range(len(DOCS))], rtol=rtol)


def test_qwen3_reads_the_last_token_and_bert_the_first(reranker):
    m, fx = reranker
    head = m.engine.model.rank_head
    h = m.engine.embed(fx["ids_0"].tolist())
    head.last = not head.last
    try:
        assert abs(head(h)[0] - fx["out_0"][0]) > 1e-3 * abs(fx["out_0"][0])
    finally:
        head.last = not head.last


def test_a_model_without_a_rank_head_is_refused_in_one_line(tmp_path, tiny_llama_path):
    for path in (write_tiny_bert(tmp_path / "embedder.gguf", "bert"), tiny_llama_path):
        with pytest.raises(ValueError, match=r"is not a reranker \(its pooling type is not rank\)"):
            Model(Engine(path)).rerank(QUERY, DOCS)
    headless = tmp_path / "headless.gguf"  # pooling rank, no cls tensors: an incomplete file
    _rewrite(write_tiny_bert(tmp_path / "b.gguf", "bert"), headless, {"bert.pooling_type": (int(PoolingType.RANK), GGUFValueType.UINT32, None)}, {})
    with pytest.raises(UnsupportedModelError, match="pooling type is rank .* but it has no classification head"):
        Engine(headless)


def test_bad_rerank_arguments_are_one_line_value_errors(paths):
    m = Model(Engine(paths["bert"]))
    for query, docs, says in [(QUERY, [], "non-empty list of texts"), (QUERY, ["ok", 3], "non-empty list of texts"),
                              (QUERY, "a text", "non-empty list of texts"), (None, DOCS, "the query must be a text")]:  # fmt: skip
        with pytest.raises(ValueError, match=says):
            m.rerank(query, docs)
    with pytest.raises(KvrunError, match="more than the 128 this encoder reads at once"):
        m.rerank(QUERY, ["cat " * 200])


def test_the_endpoint_answers_jinas_shape_sorted_by_score(bert_server, paths):
    scores = Model(Engine(paths["bert"])).rerank(QUERY, DOCS)
    want = sorted(range(len(DOCS)), key=lambda i: -scores[i])
    n_tokens = sum(len(prompt_ids(Model(Engine(paths["bert"])), QUERY, d)) for d in DOCS)
    for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking"):
        status, text = call(bert_server, "POST", path, {"model": "bge", "query": QUERY, "documents": DOCS})
        r = json.loads(text)
        assert status == 200 and r["model"] == "bge" and r["object"] == "list", text
        assert [x["index"] for x in r["results"]] == want
        np.testing.assert_allclose([x["relevance_score"] for x in r["results"]], [scores[i] for i in want], rtol=1e-6)
        assert r["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    r = json.loads(call(bert_server, "POST", "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2})[1])
    assert [x["index"] for x in r["results"]] == want[:2] and r["model"] == "tiny-reranker"


def test_texts_ask_for_teis_shape(bert_server):
    status, text = call(bert_server, "POST", "/rerank", {"query": QUERY, "texts": DOCS[:2], "return_text": True})
    r = json.loads(text)
    assert status == 200 and isinstance(r, list) and {tuple(sorted(x)) for x in r} == {("index", "score", "text")}
    assert r[0]["score"] >= r[1]["score"] and r[0]["text"] == DOCS[r[0]["index"]]


@pytest.mark.parametrize(
    "body, says",
    [
        ({"documents": DOCS}, '"query" must be provided'),
        ({"query": 7, "documents": DOCS}, '"query" must be a string'),
        ({"query": QUERY, "documents": []}, '"documents" must be a non-empty string array'),
        ({"query": QUERY, "documents": [{"text": "x"}]}, '"documents" must be a non-empty string array'),
        ({"query": QUERY, "texts": "x"}, '"texts" must be a non-empty string array'),
        ({"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n must be a non-negative integer"),
        ({"query": QUERY, "documents": ["cat " * 200]}, "more than the 128 this encoder reads at once"),
    ],
)
def test_a_bad_rerank_request_is_a_400_with_one_line(bert_server, body, says):
    status, text = call(bert_server, "POST", "/v1/rerank", body)
    msg = json.loads(text)["error"]["message"]
    assert status == 400 and says in msg and "\n" not in msg, text


def test_a_server_without_a_reranker_refuses_rerank_in_one_line(tiny_llama_path):
    httpd = make_server(Model(Engine(tiny_llama_path, n_ctx=256)), "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        status, text = call(httpd.server_address[1], "POST", "/v1/rerank", {"query": QUERY, "documents": DOCS})
        msg = json.loads(text)["error"]["message"]
        assert status == 400 and "is not a reranker" in msg and "\n" not in msg, text
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_kvrun_rerank_prints_documents_by_score(paths):
    docs = [d for d in DOCS if "\t" not in d][:3]  # (a line is: score, index, document, tab-separated)
    scores = Model(Engine(paths["qwen3"])).rerank(QUERY, docs)
    r = CliRunner().invoke(main, ["rerank", str(paths["qwen3"]), QUERY, *docs])
    assert r.exit_code == 0, r.output
    lines = [ln.split("\t") for ln in r.output.splitlines() if ln.count("\t") == 2]
    assert [int(i) for _, i, _ in lines] == sorted(range(3), key=lambda i: -scores[i])
    assert [d for _, _, d in lines] == [docs[int(i)] for _, i, _ in lines]
    r = CliRunner().invoke(main, ["rerank", str(paths["qwen3"]), QUERY, *docs, "--json"])
    out = json.loads(r.output.splitlines()[-1])
    assert [x["index"] for x in out["results"]] == [int(i) for _, i, _ in lines]
    np.testing.assert_allclose([x["relevance_score"] for x in out["results"]], sorted(scores, reverse=True), rtol=1e-6)


def test_kvrun_rerank_refuses_a_model_that_is_no_reranker(tiny_llama_path):
    r = CliRunner().invoke(main, ["rerank", str(tiny_llama_path), QUERY, "a doc"])
    assert r.exit_code != 0 and "is not a reranker" in r.output and "Traceback" not in r.output, r.output
