"""Regenerate tests/fixtures/vision_youtuvl.npz: llama.cpp's libmtmd on the tiny Youtu-VL pair of
``tests/tiny_vision_youtuvl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_youtuvl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16), libmtmd
lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (the markers, -1 for
an image row) and ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off, so
attention is float32 softmax(QK^T)V as kvrun's).  For the text pair ``yt`` (the F32 projector) and each prompt of
``PROMPTS``: ``pids_yt_<k>`` its chunks' ids, ``logits_yt_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1)) and ``npast_yt_<k>`` the position after them.  ``sha256_*``: the files' digests (the
test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_youtuvl import write_tiny_youtuvl_mmproj, write_tiny_youtuvl_text

#: pictures (width, height, seed): small (one window, rounded up to 2 x 2 blocks), wide (7 x 3 blocks: windows cut
#: short at the right and the bottom), square (exactly 4 x 4 blocks: no resize), tall (4 x 9 blocks)
IMAGES = {"small": (30, 20, 0), "wide": (100, 40, 1), "square": (64, 64, 2), "tall": (50, 130, 3)}
#: projector files: name -> qtype name
PROJECTORS = {"yt_f32": "F32", "yt_f16": "F16"}
#: text pairs: the text model with this projector
PAIRS = {"yt": "yt_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_youtuvl_text, write_tiny_youtuvl_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "youtuvl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, shown=("ids_yt_f32", "pids", "npast"))
