"""Regenerate tests/fixtures/vision_cogvlm.npz: llama.cpp's libmtmd on the tiny CogVLM pair of
``tests/tiny_vision_cogvlm.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_cogvlm_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16``, libmtmd lays the picture
out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` the image chunk's rows, the begin/end-of-image rows around the patches' (mtmd_encode_chunk; the
encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt
of ``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1): the image rows through the visual expert, the text through the language weights).
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_cogvlm import write_tiny_cogvlm_mmproj, write_tiny_cogvlm_text

#: pictures (width, height, seed): small (scaled up), wide and tall (padded to the square), square (its size, 40: kept)
IMAGES = {"small": (24, 20, 0), "wide": (100, 40, 1), "square": (40, 40, 2), "tall": (40, 90, 3)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order; each ends in a one-token text piece: llama.cpp's
#: cogvlm graph (0.3.36) keeps every row of a batch to the end (no inp_out_ids), so the logits it hands back for a batch's
#: last token are its first token's (measured: "ab" gives "a"'s logits), the same only where the batch is one token
PROMPTS = ["Look: <__media__>?", "<__media__>a<__media__>!"]


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_cogvlm_text(t / "text.gguf"), "f32": write_tiny_cogvlm_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_cogvlm_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}
        projs = {q: (files[q], 0) for q in ("f32", "f16")}
        res = write_fixture(a, "cogvlm", files, projs, pictures(IMAGES), PROMPTS, {"": "f32"}, keys, n_ctx=1024)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith("pids") else "")


if __name__ == "__main__":
    main()
