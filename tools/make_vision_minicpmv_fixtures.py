"""Regenerate tests/fixtures/vision_minicpmv.npz: llama.cpp's libmtmd on the tiny MiniCPM-V pair of
``tests/tiny_vision_minicpmv.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_minicpmv_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (version 5 stored F32 and
F16; version 2, MiniCPM-V 2.5's template, F32),
libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an
image row) and ``embd_<p>_<name>`` every image chunk's rows, the overview's first, then the slices' (mtmd_encode_chunk;
the encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  For the text pair ``mc``
(the F32 projector) and each prompt of ``PROMPTS``: ``pids_mc_<k>`` its chunks' ids, ``logits_mc_<k>`` the logits
after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and ``npast_mc_<k>`` the position after them.
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_minicpmv import write_tiny_minicpmv_mmproj, write_tiny_minicpmv_text

#: pictures (width, height, seed): no larger than a slice (the overview alone, scaled up keeping its aspect), wide
#: (a 3 x 1 grid), square (2 x 2), tall (1 x 3), large (the most slices)
IMAGES = {"small": (40, 30, 0), "wide": (150, 60, 1), "square": (100, 100, 2), "tall": (60, 130, 3), "large": (200, 120, 4)}
#: projector files: name -> (qtype name, clip.minicpmv_version)
PROJECTORS = {"mc_f32": ("F32", 5), "mc_f16": ("F16", 5), "mc25_f32": ("F32", 2)}
#: text pairs: the text model with this projector
PAIRS = {"mc": "mc_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_minicpmv_text, write_tiny_minicpmv_mmproj, PROJECTORS, "version")


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "minicpmv", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, shown=("ids_mc_f32", "ids_mc25", "pids", "npast"),
                     n_ctx=2048)  # fmt: skip
