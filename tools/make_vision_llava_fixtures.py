"""Regenerate tests/fixtures/vision_llava.npz: llama.cpp's libmtmd on the tiny LLaVA / MobileVLM pairs of
``tests/tiny_vision_llava.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_llava_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projectors ``f32`` and ``f16`` (LLaVA 1.5's), ``any``
(LLaVA 1.6's: pinpoints), ``feat`` (``clip.vision.feature_layer`` [1, 3] and ``v.post_ln``, as Granite's files have),
``ldp`` and ``ldpv2`` (MobileVLM's), libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>``
the chunks' token ids (-1 for an image row) and ``embd_<q>_<name>`` the image chunk's rows (mtmd_encode_chunk; the
encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  With the text model and each of
``PAIRS``' projectors, for each prompt of ``PROMPTS``: ``pids_<q>_<k>`` its chunks' ids and ``logits_<q>_<k>`` the
logits after them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests
(the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from mtmd_oracle import pictures, write_fixture
from tiny_vision_llava import write_tiny_ldp_mmproj, write_tiny_llava_mmproj, write_tiny_llava_text

#: pictures (width, height, seed): larger (LLaVA 1.6: 2x2 tiles), wide (2x1), smaller than a square (scaled up,
#: padded), a square's own size, tall (1x2), much wider (3x1); the prompts take the first two
IMAGES = {"big": (90, 70, 4), "wide": (50, 30, 2), "small": (20, 12, 0), "square": (32, 32, 1), "tall": (30, 70, 3),
          "long": (300, 120, 5)}  # fmt: skip
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]
#: the projectors the prompts' logits are taken with
PAIRS = ("f32", "any", "ldp", "ldpv2")


def write_files(d: Path) -> dict[str, Path]:
    """The tiny text model and the projectors, as the fixture was made from them."""
    return {"text": write_tiny_llava_text(d / "text.gguf"), "f32": write_tiny_llava_mmproj(d / "mmproj-f32.gguf"),
            "f16": write_tiny_llava_mmproj(d / "mmproj-f16.gguf", Q.F16),
            "any": write_tiny_llava_mmproj(d / "mmproj-any.gguf", anyres=True),
            "feat": write_tiny_llava_mmproj(d / "mmproj-feat.gguf", post_ln=True, feature_layer=[1, 3]),
            "ldp": write_tiny_ldp_mmproj(d / "mmproj-ldp.gguf", 1), "ldpv2": write_tiny_ldp_mmproj(d / "mmproj-ldpv2.gguf", 2)}  # fmt: skip


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp))
        keys = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{}_{}", "logits": "logits_{}_{}"}
        projs = {q: (files[q], 0) for q in files if q != "text"}
        res = write_fixture(a, "llava", files, projs, pictures(IMAGES), PROMPTS, {q: q for q in PAIRS}, keys, n_ctx=1024)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith("pids") else "")


if __name__ == "__main__":
    main()
