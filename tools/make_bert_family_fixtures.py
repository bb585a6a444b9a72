"""Regenerate tests/fixtures/embed_<name>.npz for the tiny encoders of ``tests/tiny_bert_family.py``
(jina-bert-v2 and its variants, jina-bert-v3, nomic-bert-moe, neo-bert): llama.cpp's token ids,
per-token hidden states and pooled embeddings (developer tool; llama.cpp is the oracle, never a kvrun
dependency).

    python tools/make_bert_family_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Each fixture holds, for every text of ``tiny_bert_family.TEXTS``: ``ids_<k>`` (llama_tokenize with special
tokens), ``embd_<k>`` (pooling none: every token's last state), ``pooled_<k>`` (the file's own pooling, not
normalised), and ``sha256`` (the model file's digest: the test writes the same bytes again).  Flash
attention off: llama.cpp's f32 attention, as kvrun's.
"""

from __future__ import annotations

from fixture_oracle import embed_fixtures, parse_args  # (first: it puts tests/ on the path)
from tiny_bert_family import TEXTS, VARIANTS, write_tiny_bert_family


def main() -> None:
    embed_fixtures(parse_args(__doc__, VARIANTS), write_tiny_bert_family, TEXTS)


if __name__ == "__main__":
    main()
