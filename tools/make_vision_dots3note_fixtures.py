"""Regenerate tests/fixtures/vision_dots3note.npz: llama.cpp's libmtmd on the tiny dots.note picture pair of
``tests/tiny_vision_dots3note.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_dots3note_fixtures.py --oracle /work/llvenv/bin/python

dots.ocr's fixture (tools/make_vision_dotsocr_fixtures.py: its pictures, prompts and keys) on this pair: for each
picture and the projectors ``f32`` and ``f16``, ``ids_<q>_<name>`` the chunks' ids (-1 for an image row; the markers'
bytes, the tiny text model's byte vocabulary spelling ``<|img|>`` / ``<|endofimg|>`` out) and ``embd_<q>_<name>`` the
image chunk's rows (the encoder's flash attention off); on the F32 pair, for each prompt ``pids_<k>`` and
``logits_<k>`` (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)); ``sha256_*`` the files' digests.
"""

from __future__ import annotations

from pathlib import Path

import mtmd_oracle  # (first: it puts tests/ on the path)
from make_vision_dotsocr_fixtures import IMAGES, PROJECTORS, PROMPTS
from tiny_vision_dots3note import write_tiny_dots3note_v_mmproj, write_tiny_dots3note_v_text

__all__ = ["IMAGES", "PROJECTORS", "PROMPTS", "write_pair"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    return mtmd_oracle.write_files(d, write_tiny_dots3note_v_text, write_tiny_dots3note_v_mmproj, PROJECTORS)


if __name__ == "__main__":
    mtmd_oracle.main(__doc__, "dots3note", write_pair, PROJECTORS, IMAGES, PROMPTS, {"": "f32"}, mtmd_oracle.PAIR_KEYS, ("pids",),
                     n_ctx=1024)  # fmt: skip
