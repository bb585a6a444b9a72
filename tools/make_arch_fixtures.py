"""Regenerate tests/fixtures/arch_<arch>.npz: llama.cpp's logits for a tiny random model of each
architecture (developer tool; llama.cpp is the oracle, never a kvrun dependency).

A real checkpoint of every architecture is not at hand (and too big for CI), but llama.cpp runs
any well-formed GGUF, random weights included.  So each architecture is held to llama.cpp on the
tiny model ``tests/tinymodel.py`` writes for it (seeded: the test writes the same bytes again and
checks their digest), float32 weights, so the comparison is of the architecture's arithmetic:
norms, rope layout, attention scaling and windows, activations, softcaps.

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_arch_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Writes ``tests/fixtures/arch_<name>.npz`` (``tinymodel.FIXTURE_MODELS``): ``ids`` (the prompt), ``logits`` (llama.cpp's, every
position, one batch), ``sha256`` (the model file's digest).
"""

from __future__ import annotations

import numpy as np
from fixture_oracle import logits_fixtures, parse_args  # (first: it puts tests/ on the path)
from tinymodel import FIXTURE_MODELS as MODELS

#: the prompt: byte tokens and the merged ones, 40 positions (past the tiny Gemma's window of 8)
IDS = [int(x) for x in np.random.default_rng(7).integers(0, 261, 40)]


def main() -> None:
    logits_fixtures(parse_args(__doc__, MODELS), MODELS, IDS)


if __name__ == "__main__":
    main()
