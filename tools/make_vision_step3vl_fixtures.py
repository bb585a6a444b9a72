"""Regenerate tests/fixtures/vision_step3vl.npz: llama.cpp's libmtmd on the tiny Step3-VL pair of
``tests/tiny_vision_step3vl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_step3vl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16), libmtmd
lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an image row)
and ``embd_<p>_<name>`` every image chunk's rows, the crops' row by row, then the overview's (mtmd_encode_chunk; the
encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's); a picture named in ``STRIDE`` keeps
one in that many of its rows (the fixture stays small).  For the text pair ``s3`` (the F32 projector) and each
prompt of ``PROMPTS``: ``pids_s3_<k>`` its chunks' ids, ``logits_s3_<k>`` the logits after them all
(mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and ``npast_s3_<k>`` the position after them.
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from fixture_oracle import parse_args
from tiny_vision_step3vl import write_tiny_step3vl_mmproj, write_tiny_step3vl_text

#: pictures (width, height, seed): small (the overview alone), wide (no longer than image_size but past 1.5:1: three
#: crops of its height), thin (a side under 32 past 4:1: put on a black square first, then one crop padded), big (past
#: image_size: one 504 window, padded below), huge (past the 800-pixel longest edge: scaled down, then 2 x 2 windows)
IMAGES = {"small": (40, 30, 0), "wide": (100, 40, 1), "thin": (20, 150, 2), "big": (600, 300, 3), "huge": (900, 800, 4)}
#: projector files: name -> qtype name
PROJECTORS = {"s3_f32": "F32", "s3_f16": "F16"}
#: text pairs: the text model with this projector
PAIRS = {"s3": "s3_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: pictures whose rows the fixture keeps one in this many of (the test compares those)
STRIDE = {"huge": 3}


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_step3vl_text, write_tiny_step3vl_mmproj, PROJECTORS)


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pair(Path(tmp))
        projs = {q: (files[q], 0) for q in PROJECTORS}
        res = mtmd_oracle.write_fixture(a, "step3vl", files, projs, mtmd_oracle.pictures(IMAGES), PROMPTS, PAIRS,
                                        mtmd_oracle.KEYS, n_ctx=2048, stride=STRIDE)  # fmt: skip
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("pids", "npast")) else "")


if __name__ == "__main__":
    main()
