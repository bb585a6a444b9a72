"""Regenerate tests/fixtures/vision_hunyuanvl.npz: llama.cpp's libmtmd on the tiny HunyuanOCR / Hunyuan-VL pair of
``tests/tiny_vision_hunyuanvl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_hunyuanvl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16),
libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an
image row), ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off),
``grid_<p>_<name>`` the rows' grid and positions taken (nx, ny, n_pos) and ``dpos_<p>_<name>`` each row's decoder
position (t, x, y, z) for an image at position 0.  For the text pair ``hv`` (the F32 projector) and each prompt of
``PROMPTS``: ``pids_hv_<k>`` its chunks' ids, ``logits_hv_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1)) and ``npast_hv_<k>`` the position after them.  ``sha256_*``: the files' digests (the
test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_hunyuanvl import write_tiny_hunyuanvl_mmproj, write_tiny_hunyuanvl_text

#: pictures (width, height, seed): the position grid's own 6 x 6 patches (3 x 3 blocks, the fewest; Hugging Face's
#: (n + 0.1) scale moves the grid even so), wide (6 x 3 blocks: the grid resized up across, down along), sides rounded
#: to 16-pixel blocks (75 x 53 -> 80 x 48, halves up, stretched: no padding), too few pixels (scaled up to 9 blocks'
#: worth), tall, too many (scaled down to 64 blocks' worth)
IMAGES = {"exact": (48, 48, 0), "wide": (100, 40, 1), "odd": (75, 53, 2), "small": (30, 20, 3), "tall": (40, 90, 4),
          "large": (300, 200, 5)}  # fmt: skip
#: projector files: name -> qtype name
PROJECTORS = {"hv_f32": "F32", "hv_f16": "F16"}
#: text pairs: the text model with this projector
PAIRS = {"hv": "hv_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_hunyuanvl_text, write_tiny_hunyuanvl_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "hunyuanvl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, mrope=True)
