"""Regenerate tests/fixtures/embed_<arch>.npz: llama.cpp's WordPiece token ids and per-token
hidden states for the tiny BERT-family encoders of ``tests/tinybert.py`` (developer tool; llama.cpp
is the oracle, never a kvrun dependency).

    python tools/make_embed_fixtures.py --oracle /work/llvenv/bin/python [bert nomic-bert]

Each fixture holds, for every text of ``tinybert.TEXTS``: ``ids_<k>`` (llama_tokenize with
special tokens: [CLS] ... [SEP]) and ``embd_<k>`` (the last layer's state of every token, pooling
none), and ``sha256`` (the model file's digest: the test writes the same bytes again).
"""

from __future__ import annotations

from fixture_oracle import embed_fixtures, parse_args  # (first: it puts tests/ on the path)
from tinybert import TEXTS, write_tiny_bert


def main() -> None:
    embed_fixtures(parse_args(__doc__, ["bert", "nomic-bert"]), write_tiny_bert, TEXTS, pooling=None)


if __name__ == "__main__":
    main()
