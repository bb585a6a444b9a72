"""Regenerate tests/fixtures/vision_gemma4.npz: llama.cpp's libmtmd on the tiny Gemma 4 vision pair of
``tests/tiny_vision_gemma4.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_gemma4_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` and the projector stored F32 and F16, libmtmd lays the picture out (mtmd_tokenize on
a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and ``embd_<q>_<name>`` the image
chunk's rows, one in ``STRIDE`` where it says so (mtmd_encode_chunk; the encoder's flash attention off, so attention
is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks'
ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks with n_batch 64, then
llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_gemma4 import write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj

#: pictures (width, height, seed): small (scaled up to libmtmd's 70 rows' worth: 9x9 rows), wide (scaled up, 15x5),
#: exact (already whole 12-pixel blocks: kept, 10x8), big (its height rounded up a block: kept, padded, 25x22) and
#: huge (scaled down to at most 1120 rows' worth: 37x29)
IMAGES = {"small": (64, 64, 0), "wide": (150, 50, 1), "exact": (120, 96, 2), "big": (300, 260, 3), "huge": (500, 400, 4)}
#: the big and huge pictures' rows are kept one in STRIDE (550 and 1073 rows x 64)
STRIDE = {"big": 5, "huge": 8}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_gemma4_vl(t / "text.gguf"), "f32": write_tiny_gemma4v_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_gemma4v_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "gemma4", files, projs, pictures(IMAGES), PROMPTS, {"": "f32"}, keys, stride=STRIDE)
        for k, v in res.items():
            print(k, v.shape)


if __name__ == "__main__":
    main()
