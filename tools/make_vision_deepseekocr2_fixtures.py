"""Regenerate tests/fixtures/vision_deepseekocr2.npz: llama.cpp's libmtmd on the tiny DeepSeek-OCR 2 pair of
``tests/tiny_vision_deepseekocr2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_deepseekocr2_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (the tiles' 144 rows each, then the global view's 256 and the separator),
one in ``STRIDE`` (mtmd_encode_chunk; the encoder's flash attention off, so attention is float32
softmax(QK^T scale + mask)V as kvrun's).  On the F32 pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks'
ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

from make_vision_deepseekocr_fixtures import make  # (first: its fixture_oracle puts tests/ on the path)
from tiny_vision_deepseekocr2 import write_tiny_deepseekocr2_mmproj, write_tiny_deepseekocr2_text

#: pictures (width, height, seed): no larger than a 768-pixel tile (the global view alone, letterboxed) and wide (2x1
#: tiles of 768 pixels: aspect 2, each tile its own image, then the global view)
IMAGES = {"small": (200, 150, 0), "wide": (1600, 800, 1)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: one in this many of each picture's rows kept (the fixture's size)
STRIDE = {name: 3 for name in IMAGES}


def main() -> None:
    make(__doc__, "deepseekocr2", write_tiny_deepseekocr2_text, write_tiny_deepseekocr2_mmproj, IMAGES, PROMPTS, STRIDE)


if __name__ == "__main__":
    main()
