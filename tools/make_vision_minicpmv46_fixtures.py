"""Regenerate tests/fixtures/vision_minicpmv46.npz: llama.cpp's libmtmd on the tiny MiniCPM-V 4.6 projectors of
``tests/tiny_vision_minicpmv46.py`` beside tiny_vision_minicpmv.py's Qwen3 text model (developer tool; llama.cpp is
the oracle, never a kvrun dependency).

    python tools/make_vision_minicpmv46_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (scale_factor 4 stored F32
and F16; scale_factor 2, libmtmd's "4x" variant without the ViT merger, F32), libmtmd lays the picture out
(mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<p>_<name>`` every image chunk's rows, the overview's first, then the slices' (mtmd_encode_chunk; the encoder's
flash attention off).  For the text pair ``m46`` (the F32 projector) and each prompt of ``PROMPTS``: ``pids_m46_<k>``
its chunks' ids, ``logits_m46_<k>`` the logits after them all (mtmd_helper_eval_chunks, then
llama_get_logits_ith(-1)) and ``npast_m46_<k>`` the position after them.  ``sha256_*``: the files' digests (the test
writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_minicpmv import write_tiny_minicpmv_text
from tiny_vision_minicpmv46 import write_tiny_minicpmv46_mmproj

#: pictures (width, height, seed): no larger than a slice (the overview alone), wide (a grid of slices across), tall,
#: large (the most slices)
IMAGES = {"small": (80, 60, 0), "wide": (300, 120, 1), "tall": (120, 260, 3), "large": (400, 240, 4)}
#: projector files: name -> (qtype name, scale_factor)
PROJECTORS = {"m46_f32": ("F32", 4), "m46_f16": ("F16", 4), "m46x4_f32": ("F32", 2)}
#: text pairs: the text model with this projector
PAIRS = {"m46": "m46_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_minicpmv_text, write_tiny_minicpmv46_mmproj, PROJECTORS, "scale")


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "minicpmv46", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, shown=("ids_m46_f32", "ids_m46x4", "pids", "npast"),
                     n_ctx=2048)  # fmt: skip
