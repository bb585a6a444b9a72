"""Regenerate tests/fixtures/vision_qwen3vl.npz: llama.cpp's libmtmd on the tiny Qwen3-VL pair of
``tests/tiny_vision_qwen3vl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_qwen3vl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16),
libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an
image row), ``embd_<p>_<name>`` the image chunk's rows, n_embd * (1 + n_deepstack) wide (mtmd_encode_chunk; the
encoder's flash attention off), ``grid_<p>_<name>`` the rows' grid and positions taken (nx, ny, n_pos) and
``dpos_<p>_<name>`` each row's decoder position (t, x, y, z) for an image at position 0.  For the text pair ``q3``
(the F32 projector) and each prompt of ``PROMPTS``: ``pids_q3_<k>`` its chunks' ids, ``logits_q3_<k>`` the logits
after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and ``npast_q3_<k>`` the position after them.
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_qwen3vl import write_tiny_qwen3vl_mmproj, write_tiny_qwen3vl_text

#: pictures (width, height, seed): the learned positions' own 6 x 6 patches (no interpolation), wider than them
#: (10 x 6 patches: interpolated up), sides rounded to 32-pixel blocks (150 -> 160, 100 -> 96), too few pixels (scaled up
#: to the minimum of 8 rows' worth), tall (60 -> 64, 200 -> 192: interpolated down across, up along)
IMAGES = {"exact": (96, 96, 0), "wide": (160, 96, 1), "odd": (150, 100, 2), "small": (40, 30, 3), "tall": (60, 200, 4)}
#: projector files: name -> qtype name
PROJECTORS = {"q3_f32": "F32", "q3_f16": "F16"}
#: text pairs: the text model with this projector
PAIRS = {"q3": "q3_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_qwen3vl_text, write_tiny_qwen3vl_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "qwen3vl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, mrope=True)
