"""Regenerate tests/fixtures/vision_idefics3.npz: llama.cpp's libmtmd on the tiny SmolVLM (Idefics3) pair of
``tests/tiny_vision_idefics3.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_idefics3_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker) as tiles and a global view: ``ids_<q>_<name>`` the chunks' token ids
(-1 for an image row) and ``embd_<q>_<name>`` every image chunk's rows, concatenated in order (mtmd_encode_chunk;
the encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each
prompt of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the
same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_idefics3 import write_tiny_idefics3_mmproj, write_tiny_smolvlm

#: pictures (width, height, seed): already the longest edge (the grid without resizing), wide (padded into a
#: 2x1 grid), tall and small (scaled up into a 2x2 grid), smaller than a tile (still 2x2: Idefics3 scales up)
IMAGES = {"square": (64, 64, 0), "wide": (150, 50, 1), "tall": (40, 70, 2), "tiny": (20, 20, 3)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_smolvlm(t / "text.gguf"), "f32": write_tiny_idefics3_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_idefics3_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        res = write_fixture(a, "idefics3", files, {q: (files[q], 0) for q in ("f32", "f16")}, pictures(IMAGES), PROMPTS, {"": "f32"}, keys)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("ids_f32", "pids")) else "")


if __name__ == "__main__":
    main()
