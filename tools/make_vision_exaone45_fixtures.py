"""Regenerate tests/fixtures/vision_exaone45.npz: llama.cpp's libmtmd on the tiny EXAONE 4.5 pair of
``tests/tiny_vision_exaone45.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_exaone45_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16), libmtmd
lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (the markers, -1 for
an image row) and ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off, so
attention is float32 softmax(QK^T)V as kvrun's).  For the text pair ``ex`` (the F32 projector) and each prompt of
``PROMPTS``: ``pids_ex_<k>`` its chunks' ids, ``logits_ex_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1)) and ``npast_ex_<k>`` the position after them.  ``sha256_*``: the files' digests (the
test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_exaone45 import write_tiny_exaone45_mmproj, write_tiny_exaone45_text

#: pictures (width, height, seed): small (scaled up to the 8-row minimum), wide (8 x 3 blocks: a second window cut
#: short at the right), square (exactly 4 x 4 blocks, one window: no resize), large (scaled down past the 48-row
#: maximum, windows cut short at the right and the bottom)
IMAGES = {"small": (30, 20, 0), "wide": (220, 80, 1), "square": (112, 112, 2), "large": (300, 170, 3)}
#: projector files: name -> qtype name
PROJECTORS = {"ex_f32": "F32", "ex_f16": "F16"}
#: text pairs: the text model with this projector
PAIRS = {"ex": "ex_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_exaone45_text, write_tiny_exaone45_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "exaone45", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, shown=("ids_ex_f32", "pids", "npast"))
