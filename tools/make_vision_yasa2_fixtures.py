"""Regenerate tests/fixtures/vision_yasa2.npz: llama.cpp's libmtmd on the tiny Reka Edge pair of
``tests/tiny_vision_yasa2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_yasa2_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16``, libmtmd lays the picture
out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (mtmd_encode_chunk).  On the F32 pair, for each prompt of ``PROMPTS``:
``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks, then
llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_yasa2 import write_tiny_yasa2_mmproj, write_tiny_yasa2_text

#: pictures (width, height, seed): the square itself (kept as it is), and small, wide and odd-sized ones (stretched
#: to the square, bicubic, no padding)
IMAGES = {"square": (128, 128, 0), "small": (24, 20, 1), "wide": (200, 60, 2), "odd": (53, 97, 3)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: projector files: name -> qtype name
PROJECTORS = {"f32": "F32", "f16": "F16"}


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_yasa2_text, write_tiny_yasa2_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "yasa2", write_pair, PROJECTORS, IMAGES, PROMPTS, {"": "f32"}, mtmd_oracle.PAIR_KEYS, ("pids",),
                     n_ctx=1024)  # fmt: skip
