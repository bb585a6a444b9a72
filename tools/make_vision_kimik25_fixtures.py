"""Regenerate tests/fixtures/vision_kimik25.npz: llama.cpp's libmtmd on the tiny Kimi-K2.5 pair of
``tests/tiny_vision_kimik25.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_kimik25_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16``, libmtmd lays the picture
out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (one in ``STRIDE``'s count where it names the picture; mtmd_encode_chunk,
the encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each
prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import write_fixture
from tiny_vision import sample_image
from tiny_vision_kimik25 import write_tiny_kimik25_mmproj, write_tiny_kimik25_text

#: pictures (width, height, seed): small (scaled up to the fewest pixels, the file's 8 patches' worth), wide, "grid"
#: at the position grid's own 8 x 6 patches (no interpolation), tall and odd-sized (sides rounded to whole merged
#: blocks, padded), large (scaled down to the most, the file's 1024 patches' worth: 256 merged rows)
IMAGES = {"small": (24, 20, 0), "wide": (100, 40, 1), "grid": (64, 48, 2), "tall": (40, 90, 3), "odd": (53, 37, 4),
          "large": (600, 500, 5)}  # fmt: skip
#: pictures whose ``embd`` rows the fixture keeps one in so many of (the large one's rows: a smaller file)
STRIDE = {"large": 4}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def images() -> dict[str, np.ndarray]:
    """The fixture's pictures, uint8 RGB [height, width, 3]."""
    return {k: sample_image(w, h, seed=s) for k, (w, h, s) in IMAGES.items()}


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_kimik25_text(t / "text.gguf"), "f32": write_tiny_kimik25_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_kimik25_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "kimik25", files, projs, images(), PROMPTS, {"": "f32"}, keys, n_ctx=2048, stride=STRIDE)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith("pids") else "")


if __name__ == "__main__":
    main()
