"""Regenerate tests/fixtures/vision_deepseekocr.npz: llama.cpp's libmtmd on the tiny DeepSeek-OCR pair of
``tests/tiny_vision_deepseekocr.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_deepseekocr_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows (the rows of tiles, then the global view, newline and separator rows
included), one in ``STRIDE`` (mtmd_encode_chunk; the encoder's flash attention off, so attention is float32
softmax(QK^T + bias)V as kvrun's).  On the F32 pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids
and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import PAIR_KEYS, pictures, write_fixture
from tiny_vision_deepseekocr import write_tiny_deepseekocr_mmproj, write_tiny_deepseekocr_text

#: pictures (width, height, seed): no larger than a 640-pixel tile (the global view alone, letterboxed), wide (a row
#: of 2x1 tiles: aspect 2) and tall (1x2: two rows of one tile each)
IMAGES = {"small": (200, 150, 0), "wide": (1400, 700, 1), "tall": (660, 1300, 2)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: one in this many of each picture's rows kept (the fixture's size)
STRIDE = {name: 3 for name in IMAGES}


def make(doc: str, name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[[Path, int], Path],
         images: dict[str, tuple[int, int, int]], prompts: list[str], stride: dict[str, int]) -> None:  # fmt: skip
    """The fixture ``vision_<name>.npz`` of a tiny pair (the text model, the projector stored F32 and F16) as the
    module docstring ``doc`` says: DeepSeek-OCR's and DeepSeek-OCR 2's alike."""
    a = parse_args(doc)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_text(t / "text.gguf"), "f32": write_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, name, files, projs, pictures(images), prompts, {"": "f32"}, PAIR_KEYS, n_ctx=2048, stride=stride)
        for k, v in res.items():
            print(k, v.shape, v.tolist()[-3:] if k.startswith(("ids_f32", "pids")) else "")


def main() -> None:
    make(__doc__, "deepseekocr", write_tiny_deepseekocr_text, write_tiny_deepseekocr_mmproj, IMAGES, PROMPTS, STRIDE)


if __name__ == "__main__":
    main()
