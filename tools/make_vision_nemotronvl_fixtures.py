"""Regenerate tests/fixtures/vision_nemotronvl.npz: llama.cpp's libmtmd on the tiny Nemotron Nano VL picture pair of
``tests/tiny_vision_nemotronvl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_nemotronvl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off).  On the F32 pair,
for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests.
"""

from __future__ import annotations

from pathlib import Path

from mtmd_oracle import PAIR_KEYS, main, write_files  # (first: through fixture_oracle it puts tests/ on the path)
from tiny_vision_nemotronvl import write_tiny_nemotronvl_mmproj, write_tiny_nemotronvl_text

#: pictures (width, height, seed): one already the encoder's square, a wide and a tall one (each resized into the
#: square keeping its aspect, bicubic, centred on black), one smaller than the square
IMAGES = {"square": (32, 32, 0), "wide": (100, 40, 1), "tall": (30, 70, 2), "small": (20, 12, 3)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    return write_files(d, write_tiny_nemotronvl_text, write_tiny_nemotronvl_mmproj, {"f32": "F32", "f16": "F16"})


if __name__ == "__main__":
    main(__doc__, "nemotronvl", write_pair, ("f32", "f16"), IMAGES, PROMPTS, {"": "f32"}, PAIR_KEYS, ("ids_f32", "pids"))
