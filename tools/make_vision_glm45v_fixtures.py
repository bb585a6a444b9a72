"""Regenerate tests/fixtures/vision_glm45v.npz: llama.cpp's libmtmd on a tiny GLM-4.5V pair, tiny_vision_glm4v.py's
"glm4v" projector beside the ``glm4moe`` text model with rope sections of ``tests/tiny_vision_glm45v.py``
(developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_glm45v_fixtures.py --oracle /work/llvenv/bin/python

The projector is GLM-4.1V's very file (its rows are held to libmtmd by vision_glm4v.npz); what this fixture holds is
the text side: for each prompt of ``PROMPTS`` (the pictures of ``IMAGES`` taken in order) ``pids_g45_<k>`` its chunks'
ids (-1 for an image row), ``logits_g45_<k>`` the logits after them all (mtmd_helper_eval_chunks, then
llama_get_logits_ith(-1)) and ``npast_g45_<k>`` the position after them; ``grid_g45_<name>`` each picture's grid and
positions taken (nx, ny, n_pos).  ``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from mtmd_oracle import pictures, write_fixture
from tiny_vision_glm4v import write_tiny_glm4v_mmproj
from tiny_vision_glm45v import write_tiny_glm45v_text

#: pictures (width, height, seed): sides rounded to 28-pixel blocks (150 x 100 -> 5 x 4 rows), tall (60 x 200 -> 2 x 7)
IMAGES = {"odd": (150, 100, 2), "tall": (60, 200, 4)}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the F32 projector, written into ``d``."""
    return {"text": write_tiny_glm45v_text(d / "text.gguf"), "g45": write_tiny_glm4v_mmproj(d / "mmproj-g45.gguf")}


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pair(Path(tmp))
        keys = {k: k + "_{}_{}" for k in ("grid", "pids", "logits", "npast")}
        res = write_fixture(a, "glm45v", files, {"g45": (files["g45"], 0)}, pictures(IMAGES), PROMPTS, {"g45": "g45"}, keys, mrope=True)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("grid", "pids", "npast")) else "")


if __name__ == "__main__":
    main()
