"""Regenerate tests/fixtures/vision_gemma3n.npz: llama.cpp's libmtmd on the tiny Gemma 3n vision pair of
``tests/tiny_vision_gemma3n.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_gemma3n_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` and the projector stored F16 (as the converter stores Gemma 3n's: the stem F32, every
other kernel and the projection F16; libmtmd 0.3.36 aborts on F32 depthwise kernels on the CPU, so there is no F32
projector to hold kvrun to), libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_f16_<name>`` the
chunks' token ids (-1 for an image row) and ``embd_f16_<name>`` the image chunk's 256 rows (mtmd_encode_chunk).  On
the pair, for each prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks with n_batch 64, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the
test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_gemma3n import write_tiny_gemma3n_vl, write_tiny_gemma3nv_mmproj

#: pictures (width, height, seed): exact (already the encoder's 512 x 512: kept), small (scaled up), wide (scaled
#: down, padded above and below) and tall (padded left and right)
IMAGES = {"exact": (512, 512, 5), "small": (64, 48, 0), "wide": (300, 120, 1), "tall": (200, 700, 2)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
N_CTX = 1024


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_gemma3n_vl(t / "text.gguf"), "f16": write_tiny_gemma3nv_mmproj(t / "mmproj-f16.gguf", Q.F16)}
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        res = write_fixture(a, "gemma3n", files, {"f16": (files["f16"], 0)}, pictures(IMAGES), PROMPTS, {"": "f16"}, keys, N_CTX)
        for k, v in res.items():
            print(k, v.shape)


if __name__ == "__main__":
    main()
