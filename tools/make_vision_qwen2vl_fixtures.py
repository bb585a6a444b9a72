"""Regenerate tests/fixtures/vision_qwen2vl.npz: llama.cpp's libmtmd on the tiny Qwen2-VL / Qwen2.5-VL pairs of
``tests/tiny_vision_qwen2vl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_qwen2vl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (Qwen2-VL's stored F32
and F16, Qwen2.5-VL's F32), libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the
chunks' token ids (-1 for an image row), ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's
flash attention off, so attention is float32 softmax(QK^T)V as kvrun's), ``grid_<p>_<name>`` the rows' grid and
positions taken (nx, ny, n_pos) and ``dpos_<p>_<name>`` each row's decoder position (t, x, y, z) for an image at
position 0 (mtmd_image_tokens_get_decoder_pos).  For each text pair (``q2``: Qwen2-VL's F32 projector, ``q25``:
Qwen2.5-VL's) and each prompt of ``PROMPTS``: ``pids_<t>_<k>`` its chunks' ids, ``logits_<t>_<k>`` the logits after
them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and ``npast_<t>_<k>`` the position after them.
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_qwen2vl import write_tiny_qwen2vl_mmproj, write_tiny_qwen2vl_text

#: pictures (width, height, seed): whole 28-pixel blocks already (no resize; 6x4 rows, two attention windows
#: across), sides rounded to blocks (150 -> 140, 100 -> 112), too few pixels (scaled up to the minimum of 8 rows'
#: worth), tall (60 -> 56, 200 -> 196)
IMAGES = {"exact": (168, 112, 0), "odd": (150, 100, 1), "small": (40, 30, 2), "tall": (60, 200, 3)}
#: projector files: name -> (qtype name, Qwen2.5-VL)
PROJECTORS = {"q2_f32": ("F32", False), "q2_f16": ("F16", False), "q25_f32": ("F32", True)}
#: text pairs: the text model with this projector
PAIRS = {"q2": "q2_f32", "q25": "q25_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_qwen2vl_text, write_tiny_qwen2vl_mmproj, PROJECTORS, "qwen25")


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "qwen2vl", write_pair, PROJECTORS, IMAGES, PROMPTS, PAIRS, mrope=True)
