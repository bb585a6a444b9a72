"""Regenerate tests/fixtures/embed_gemma-embedding.npz (and ``-nodense``): llama.cpp's token ids,
per-token outputs and mean-pooled embeddings of the tiny EmbeddingGemma-style encoder of
``tests/tinygemmaembed.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_gemma_embed_fixture.py --oracle /work/llvenv/bin/python

Each fixture holds, for every text of ``tinygemmaembed.TEXTS``: ``ids_<k>`` (llama_tokenize with
special tokens: BOS ... EOS), ``embd_<k>`` (pooling none: every token's final-normed state, through
dense_2 and dense_3 where the model has them, as llama.cpp's build_dense_out applies them to the
per-token output when nothing pools), ``pooled_<k>`` (pooling mean, the model's own: the pooled
vector through the projections, not normalised), and ``sha256`` (the model file's digest: the test
writes the same bytes again).  Flash attention off: llama.cpp's f32 attention, as kvrun's.
"""

from __future__ import annotations

from fixture_oracle import embed_fixtures, parse_args  # (first: it puts tests/ on the path)
from tinygemmaembed import TEXTS, write_tiny_gemma_embedding

#: fixture name: whether the model has the dense_2/dense_3 projections
MODELS = {"gemma-embedding": True, "gemma-embedding-nodense": False}


def main() -> None:
    a = parse_args(__doc__, MODELS)
    embed_fixtures(a, lambda path, name: write_tiny_gemma_embedding(path, dense=MODELS[name]), TEXTS, pooling="MEAN")


if __name__ == "__main__":
    main()
