"""Regenerate tests/fixtures/vision_granite4.npz: llama.cpp's libmtmd on the tiny Granite 4 Vision pair of
``tests/tiny_vision_granite4.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_granite4_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row, then
the "\\n" after the picture) and ``embd_<q>_<name>`` the image chunk's rows (the overview's, then the unpadded tile
grid's with a newline row each; mtmd_encode_chunk, the encoder's flash attention off, so attention is float32
softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and
``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).  ``sha256_*``: the
files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import PAIR_KEYS, pictures, write_fixture
from tiny_vision_granite4 import write_tiny_granite4v_mmproj, write_tiny_granite4v_text

#: pictures (width, height, seed): wide (a 2x1 grid, a column of rows dropped each side), smaller than a tile (still
#: tiled: 2x1), tall (1x2, nothing dropped), larger (2x2, a row dropped top and bottom), a tile's own size (2x1, half
#: its columns dropped)
IMAGES = {"wide": (50, 30, 2), "small": (20, 12, 0), "tall": (30, 70, 3), "big": (90, 70, 4), "square": (32, 32, 1)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_granite4v_text(t / "text.gguf"), "f32": write_tiny_granite4v_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_granite4v_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "granite4", files, projs, pictures(IMAGES), PROMPTS, {"": "f32"}, PAIR_KEYS, n_ctx=1024)
        for k, v in res.items():
            print(k, v.shape, v.tolist()[-3:] if k.startswith(("ids_f32", "pids")) else "")


if __name__ == "__main__":
    main()
