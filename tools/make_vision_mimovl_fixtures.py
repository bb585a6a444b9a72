"""Regenerate tests/fixtures/vision_mimovl.npz: llama.cpp's libmtmd on the tiny MiMo-V2.5 pair of
``tests/tiny_vision_mimovl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_mimovl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16),
libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an
image row) and ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off, so
attention is float32 softmax(QK^T)V with the sinks in its sum, as kvrun's).  For the text pair ``t`` (the F32
projector beside the mimo2 text model) and each prompt of ``PROMPTS``: ``pids_t_<k>`` its chunks' ids,
``logits_t_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and
``npast_t_<k>`` the position after them.  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_mimovl import write_tiny_mimovl_mmproj, write_tiny_mimovl_text

#: pictures (width, height, seed): whole 32-pixel blocks already (4 x 3 rows, 48 patches: the band of 6 patches
#: either side cuts across them), sides rounded to blocks (150 x 100 -> 160 x 96), too many pixels (scaled down to
#: 64 rows' worth at most), too few (scaled up to 8 rows' worth), tall (more rows than columns: the column order shows)
IMAGES = {"exact": (128, 96, 0), "odd": (150, 100, 1), "big": (400, 300, 2), "small": (40, 30, 3), "tall": (60, 200, 4)}
#: projector files: name -> qtype name
PROJECTORS = {"f32": "F32", "f16": "F16"}
#: the text pair: the text model with this projector
PAIRS = {"t": "f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_mimovl_text, write_tiny_mimovl_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "mimovl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS)
