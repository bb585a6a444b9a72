"""Regenerate tests/fixtures/vision_gemma3.npz: llama.cpp's libmtmd on the tiny Gemma 3 vision pair of
``tests/tiny_vision.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_fixtures.py --oracle /work/llvenv/bin/python

The fixture holds, for the projector stored F32 and F16:
``embd_<q>_square`` (mtmd_encode_chunk's rows for a picture already at the encoder's 224x224, so resizing is
the identity) and ``embd_<q>_wide`` (a 300x180 picture, which clip.cpp resizes and pads), ``embd_f32_nofa_*`` the
same with the encoder's flash attention off (libmtmd's default is on); and on the F32 pair
``ids_<k>``/``logits_<k>`` for each prompt of ``PROMPTS``: the chunks' token ids (text tokens, -1 for an image
row) as mtmd_tokenize lays them out, and the logits after them all (mtmd_helper_eval_chunks, then
llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import write_fixture
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj

#: prompts with mtmd's media marker: an image mid-text, two images, and one with a prefix past the window of 8
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two", "the the the in in a <__media__>the"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_gemma3_vl(t / "text.gguf"), "f32": write_tiny_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        projectors = {"f32": (files["f32"], -1), "f16": (files["f16"], -1), "f32_nofa": (files["f32"], 0)}
        images = {"square": sample_image(), "wide": sample_image(300, 180, seed=1)}
        keys = {"embd": "embd_{}_{}", "pids": "ids_{1}", "logits": "logits_{1}"}
        res = write_fixture(a, "gemma3", files, projectors, images, PROMPTS, {"": "f32"}, keys, n_ctx=256)
        for k in range(len(PROMPTS)):
            print(k, res[f"ids_{k}"].tolist())
        print({k: v.shape for k, v in res.items()})


if __name__ == "__main__":
    main()
