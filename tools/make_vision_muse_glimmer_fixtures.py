"""Regenerate tests/fixtures/vision_muse_glimmer.npz: llama.cpp's libmtmd on the tiny Muse Glimmer pair of
``tests/tiny_vision_muse_glimmer.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_muse_glimmer_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16``, libmtmd lays the picture
out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (mtmd_encode_chunk, the encoder's flash attention off).  On the F32 pair,
for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same
bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import PAIR_KEYS, write_fixture
from tiny_vision import sample_image
from tiny_vision_muse_glimmer import write_tiny_muse_glimmer_mmproj, write_tiny_muse_glimmer_text

#: pictures (width, height, seed): at the position grid's own 4 x 4 patches (no resize of the grid, one window); wide
#: (the grid 10 x 26 patches: windows of 4 x 4 cut short at the right and bottom edges, the grid resized); tall and
#: odd-sized (the nearest aspect in whole merged blocks, stretched); small (one merged block)
IMAGES = {"grid": (16, 16, 0), "wide": (100, 40, 1), "tall": (36, 90, 2), "odd": (53, 37, 3), "small": (5, 7, 4)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def images() -> dict[str, np.ndarray]:
    """The fixture's pictures, uint8 RGB [height, width, 3]."""
    return {k: sample_image(w, h, seed=s) for k, (w, h, s) in IMAGES.items()}


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_muse_glimmer_text(t / "text.gguf"),
                 "f32": write_tiny_muse_glimmer_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_muse_glimmer_mmproj(t / "mmproj-f16.gguf", Q.F16)}
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "muse_glimmer", files, projs, images(), PROMPTS, {"": "f32"}, PAIR_KEYS, n_ctx=1024)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("pids", "ids")) else "")


if __name__ == "__main__":
    main()
