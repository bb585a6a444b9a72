"""Regenerate tests/fixtures/vision_lfm2.npz: llama.cpp's libmtmd on the tiny LFM2-VL pair of
``tests/tiny_vision_lfm2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_lfm2_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` every image chunk's rows, concatenated in order, one in ``STRIDE`` where it says so
(mtmd_encode_chunk; the encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt of
``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_lfm2 import write_tiny_lfm2_mmproj, write_tiny_lfm2vl

#: pictures (width, height, seed): small (scaled up to libmtmd's 64 rows' worth at least), wide (kept, its sides
#: rounded to 16-pixel blocks), big (scaled down to 256 rows' worth), and one past twice that (cut into 512-pixel
#: tiles, a 2x1 grid, and a thumbnail)
IMAGES = {"small": (40, 30, 0), "wide": (300, 100, 1), "big": (300, 260, 2), "tiled": (600, 300, 3)}
#: the tiled picture's rows are kept one in STRIDE (its 2 tiles are 1024 rows each: the whole would be 1.2 MB)
STRIDE = {"tiled": 16}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_lfm2vl(t / "text.gguf"), "f32": write_tiny_lfm2_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_lfm2_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "lfm2", files, projs, pictures(IMAGES), PROMPTS, {"": "f32"}, keys, n_ctx=1024, stride=STRIDE)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("ids_f32", "pids")) else "")


if __name__ == "__main__":
    main()
