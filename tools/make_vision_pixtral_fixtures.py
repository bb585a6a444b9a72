"""Regenerate tests/fixtures/vision_pixtral.npz: llama.cpp's libmtmd on the tiny Pixtral / Mistral Small 3.1 pair of
``tests/tiny_vision_pixtral.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_pixtral_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16`` (Mistral Small 3.1's
layout: the 2x2 patch merger) and ``nomerge`` (Pixtral 12B's: none), libmtmd lays the picture out (mtmd_tokenize on
a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row, [IMG_BREAK] rows included) and
``embd_<q>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's flash attention off, so attention is
float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids
and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from tiny_vision_pixtral import write_tiny_pixtral_mmproj, write_tiny_pixtral_text

#: pictures (width, height, seed): small (scaled up to the fewest pixels, 8 merged rows' worth), wide, square, tall
#: and odd-sized (sides rounded to whole merged blocks), large (scaled down to the most, 1024 merged rows' worth)
IMAGES = {"small": (24, 20, 0), "wide": (100, 40, 1), "square": (48, 48, 2), "tall": (40, 90, 3), "odd": (53, 37, 4),
          "large": (800, 400, 5)}  # fmt: skip
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: projector files: name -> qtype name, or that and the merger (None: Pixtral 12B's, none)
PROJECTORS = {"f32": "F32", "f16": "F16", "nomerge": ("F32", None)}


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_pixtral_text, write_tiny_pixtral_mmproj, PROJECTORS, "merge")


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "pixtral", write_pair, PROJECTORS, IMAGES, PROMPTS, {"": "f32"}, mtmd_oracle.PAIR_KEYS, ("pids",),
                     n_ctx=2048)  # fmt: skip
