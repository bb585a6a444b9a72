"""Regenerate tests/fixtures/vision_minimax_m3.npz: llama.cpp's libmtmd on the tiny MiniMax-M3 pair of
``tests/tiny_vision_minimax_m3.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_minimax_m3_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (stored F32 and F16),
libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the chunks' token ids (-1 for an
image row) and ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off, so
attention is float32 softmax(QK^T)V, as kvrun's).  For the text pair ``t`` (the F32 projector beside the minimax-m3
text model) and each prompt of ``PROMPTS``: ``pids_t_<k>`` its chunks' ids, ``logits_t_<k>`` the logits after them
all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1); the text model's flash attention off: MSA's dense path)
and ``npast_t_<k>`` the position after them.  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_minimax_m3 import write_tiny_minimax_m3_mmproj, write_tiny_minimax_m3_text

#: pictures (width, height, seed): whole 32-pixel blocks already (4 x 3 rows), sides rounded to blocks and stretched
#: (150 x 100 -> 160 x 96: PAD_NONE shows), too few pixels (scaled up to 8 rows' worth), tall (more rows than columns)
IMAGES = {"exact": (128, 96, 0), "odd": (150, 100, 1), "small": (40, 30, 3), "tall": (60, 200, 4)}
#: projector files: name -> qtype name
PROJECTORS = {"f32": "F32", "f16": "F16"}
#: the text pair: the text model with this projector
PAIRS = {"t": "f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_minimax_m3_text, write_tiny_minimax_m3_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "minimax_m3", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS)
