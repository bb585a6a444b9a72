"""Regenerate tests/fixtures/arch_<name>.npz for the non-causal models tools/make_arch_fixtures.py cannot: llama.cpp's
logits for a tiny random model whose attention sees the whole batch both ways (RND1, a diffusion language model), the
prompt evaluated as one batch (developer tool; llama.cpp is the oracle, never a kvrun dependency).

llama.cpp builds such a model without a KV cache, which llama-cpp-python's ``eval`` expects to clear before a batch:
the oracle skips that call, and evaluates the 40 positions of make_arch_fixtures.py's prompt in one batch.  Run with
kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_noncausal_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Writes ``ids``, ``logits`` (every position) and ``sha256`` (the model file's digest), as make_arch_fixtures.py does.
"""

from __future__ import annotations

from fixture_oracle import logits_fixtures, parse_args
from make_arch_fixtures import IDS

#: name: write_tiny_model's arguments
MODELS = {"rnd1": {"arch": "rnd1", "seed": 1}}  # (seed 0: two experts tie at one position)


def main() -> None:
    logits_fixtures(parse_args(__doc__, MODELS), MODELS, IDS, no_kv=True)


if __name__ == "__main__":
    main()
