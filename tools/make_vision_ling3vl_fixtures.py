"""Regenerate tests/fixtures/vision_ling3vl.npz: llama.cpp's libmtmd on the tiny Ling 3 VL pair of
``tests/tiny_vision_ling3vl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_ling3vl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (Ling's own layout stored
F32 and F16; F32 with the optional patch bias, pre_ln and post_ln), libmtmd lays the picture out (mtmd_tokenize on a
lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an image row), ``embd_<p>_<name>`` the image chunk's
rows (mtmd_encode_chunk; the encoder's flash attention off), ``grid_<p>_<name>`` the rows' grid and positions taken
(nx, ny, n_pos) and ``dpos_<p>_<name>`` each row's decoder position (t, x, y, z) for an image at position 0.  For the
text pair ``t`` (the F32 projector beside the bailingmoe3 text model) and each prompt of ``PROMPTS``: ``pids_t_<k>``
its chunks' ids, ``logits_t_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1))
and ``npast_t_<k>`` the position after them.  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_ling3vl import write_tiny_ling3vl_mmproj, write_tiny_ling3vl_text

#: pictures (width, height, seed): the learned positions' own 6 x 6 patches (no interpolation), wider (10 x 6 patches:
#: interpolated up), sides rounded to 32-pixel blocks (150 x 100 -> 160 x 96), too few pixels (scaled up to 8 rows'
#: worth), tall (more rows than columns: interpolated down across, up along)
IMAGES = {"exact": (96, 96, 0), "wide": (160, 96, 1), "odd": (150, 100, 2), "small": (40, 30, 3), "tall": (60, 200, 4)}
#: projector files: name -> qtype name, and ``extras`` (the optional patch bias, pre_ln, post_ln) where given
PROJECTORS = {"f32": "F32", "f16": "F16", "extras": ("F32", True)}
#: the text pair: the text model with this projector
PAIRS = {"t": "f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_ling3vl_text, write_tiny_ling3vl_mmproj, PROJECTORS, "extras")


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "ling3vl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, mrope=True)
