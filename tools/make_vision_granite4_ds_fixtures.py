"""Regenerate tests/fixtures/vision_granite4_ds.npz: llama.cpp's libmtmd on the tiny Granite 4.1 Vision pair with
DeepStack of ``tests/tiny_vision_granite4_ds.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_granite4_ds_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width, height, seed): ``ids_f32_<name>`` the chunks' token ids (-1 for an image
row, then the "\\n" after the picture; mtmd_tokenize on a lone marker).  For each prompt of ``PROMPTS``: ``pids_<k>``
its chunks' ids, ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks: the image rows fed as embeddings
n_embd x (1 + 3) wide, block 0 unscaled into the input and blocks 1..3 added at layers 1, 3 and 4; then
llama_get_logits_ith(-1)) and ``npast_<k>`` the position after them.  ``sha256_*``: the files' digests (the test
writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_granite4_ds import write_tiny_granite4v_ds_mmproj, write_tiny_granite4v_ds_text

#: pictures (width, height, seed): wide (a 2x1 grid, a column of rows dropped each side), tall (1x2, nothing dropped)
IMAGES = {"wide": (50, 30, 2), "tall": (30, 70, 3)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: the fixture's keys (mtmd_oracle.write_fixture): the pictures' ids, the prompts' ids, logits and positions
KEYS = {"ids": "ids_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}", "npast": "npast_{1}"}


def write_pair(d: Path) -> dict[str, Path]:
    """The tiny text model and its F32 projector, ``d/text.gguf`` and ``d/mmproj-f32.gguf``."""
    return {"text": write_tiny_granite4v_ds_text(d / "text.gguf"), "f32": write_tiny_granite4v_ds_mmproj(d / "mmproj-f32.gguf", Q.F32)}


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pair(Path(tmp))
        res = write_fixture(a, "granite4_ds", files, {"f32": (files["f32"], 0)}, pictures(IMAGES), PROMPTS, {"": "f32"}, KEYS, n_ctx=1024)
        for k, v in res.items():
            print(k, v.shape, v.tolist()[-3:] if k.startswith(("ids", "pids")) else v.tolist() if k.startswith("npast") else "")


if __name__ == "__main__":
    main()
