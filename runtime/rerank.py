"""Reranking, as llama-server's ``POST /v1/rerank``: a reranker (a model whose GGUF pooling type is
rank: a BERT cross-encoder such as bge-reranker, or Qwen3-Reranker) scores each document's relevance
to a query, one forward pass per (query, document) pair through its classification head
(``models/rank.py``).

The pair's prompt is llama-server's ``format_prompt_rerank``: where the file has a chat template
named ``rerank`` (Qwen3-Reranker's, written by llama.cpp's converter), that template with
``{query}`` and ``{document}`` replaced, tokenized with special tokens parsed and nothing added;
else BOS query [EOS] [SEP] document [EOS], each by the vocabulary's add_bos / add_eos / add_sep
(a BERT vocabulary: [CLS] query [SEP] document), EOS falling back to SEP.

The endpoint takes Jina's and Cohere's shape ``{"model", "query", "documents": [...], "top_n"}`` and
answers ``{"model", "object": "list", "usage", "results": [{"index", "relevance_score"}]}``, the
results sorted by score, highest first (ties in the documents' order), cut to ``top_n``; with
``texts`` instead of ``documents``, Text Embeddings Inference's shape: a bare list of ``{"index",
"score"}`` (and ``"text"`` with ``return_text``), as llama-server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..loaders.errors import KvrunError

if TYPE_CHECKING:
    from .api import Model
    from .server import Server

PATHS = ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking")  #: llama-server's routes for it


def prompt_ids(model: Model, query: str, document: str) -> list[int]:
    """The tokens of one (query, document) pair, as llama-server's ``format_prompt_rerank``."""
    g, tok = model.engine.gguf, model.tokenizer
    template = g.get("tokenizer.chat_template.rerank")
    if isinstance(template, str):
        return tok.encode(template.replace("{query}", query).replace("{document}", document), add_bos=False, parse_special=True)
    # the vocabulary's special tokens as llama.cpp holds them (kvrun's tokenizer keeps a WordPiece
    # vocabulary's separator as its EOS: llama.cpp's has none, and adds the separator by add_sep)
    wpm = tok.kind == "wpm"
    sep = tok.eos_id if wpm else _token(g, "seperator_token_id", tok.n_vocab)  # (GGUF's spelling)
    eos = _token(g, "eos_token_id", tok.n_vocab) if wpm else tok.eos_id
    eos = sep if eos is None else eos
    add_eos = bool(g.get("tokenizer.ggml.add_eos_token", False)) if wpm else tok.add_eos
    add_sep = bool(g.get("tokenizer.ggml.add_sep_token", wpm))
    ids = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
    ids += tok.encode(query, add_bos=False, parse_special=False)
    ids += [eos] if add_eos and eos is not None else []
    ids += [sep] if add_sep and sep is not None else []
    ids += tok.encode(document, add_bos=False, parse_special=False)
    ids += [eos] if add_eos and eos is not None else []
    return ids


def _token(g: Any, key: str, n_vocab: int) -> int | None:
    v = g.get(f"tokenizer.ggml.{key}")
    return int(v) if v is not None and 0 <= int(v) < n_vocab else None


def score(model: Model, query: str, documents: list[str]) -> tuple[list[float], int]:
    """Each document's relevance score to ``query`` (llama-server's: the head's first output) and the
    prompt tokens read.  ValueError (one line) for a model that is not a reranker or bad input."""
    head = getattr(model.engine.model, "rank_head", None)
    if head is None:
        raise ValueError(f"{model.config.name} is not a reranker (its pooling type is not rank); rerank with a reranking "
                         "model such as bge-reranker or Qwen3-Reranker")  # fmt: skip
    if not isinstance(query, str):
        raise ValueError(f"the query must be a text, got {type(query).__name__}")
    if not isinstance(documents, (list, tuple)) or not documents or not all(isinstance(d, str) for d in documents):
        raise ValueError("the documents must be a non-empty list of texts")
    scores, n_tokens = [], 0
    for doc in documents:
        ids = prompt_ids(model, query, doc)
        scores.append(float(head(model.engine.embed(ids))[0]))
        n_tokens += len(ids)
    return scores, n_tokens


def ranked(scores: list[float]) -> list[int]:
    """Document indices by score, highest first; ties keep the documents' order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def handle(server: Server, body: dict[str, Any]) -> tuple[int, Any]:
    """``POST /v1/rerank`` (and llama-server's other routes for it, :data:`PATHS`)."""
    from .server import BadRequest

    if getattr(server.model.engine.model, "rank_head", None) is None:
        raise BadRequest(f"{server.model.config.name} is not a reranker (its pooling type is not rank); serve a reranking "
                         "model (bge-reranker, Qwen3-Reranker) for /v1/rerank")  # fmt: skip
    tei = "texts" in body  # Text Embeddings Inference's request (llama-server's test of it)
    query = body.get("query")
    if query is None:
        raise BadRequest('"query" must be provided')
    if not isinstance(query, str):
        raise BadRequest('"query" must be a string')
    docs = body.get("texts" if tei else "documents")
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise BadRequest(f'"{"texts" if tei else "documents"}" must be a non-empty string array')
    top_n = body.get("top_n", len(docs))
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise BadRequest(f"top_n must be a non-negative integer, got {top_n!r:.40}")
    try:
        scores, n_tokens = score(server.model, query, docs)
    except (ValueError, KvrunError) as e:
        raise BadRequest(str(e)) from None
    order = ranked(scores)[:top_n]
    if tei:
        text = body.get("return_text") is True
        return 200, [{"index": i, "score": scores[i], **({"text": docs[i]} if text else {})} for i in order]
    name = body.get("model")
    return 200, {"model": name if isinstance(name, str) else server.name, "object": "list",
                 "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
                 "results": [{"index": i, "relevance_score": scores[i]} for i in order]}  # fmt: skip
