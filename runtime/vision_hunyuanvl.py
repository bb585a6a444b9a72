"""HunyuanOCR's and Hunyuan-VL's pictures in the prompt (llama.cpp's projector type "hunyuanvl"), as libmtmd lays them
out and feeds them.

At a picture's ``<__media__>`` the prompt holds ``<｜hy_place▁holder▁no▁100｜>``, the picture's rows and
``<｜hy_place▁holder▁no▁101｜>`` (fullwidth bars and U+2581, as the vocabulary spells them).  The rows are the
encoder's (models/hunyuanvl_image.py): its begin row, each row of ``nx`` blocks followed by a newline row, its end
row, 1 + ny (nx + 1) + 1 of them, one cache slot each, fed causally as any token (``mtmd_decode_use_non_causal`` is
false for this projector).  A picture takes as many positions as rows (libmtmd's MTMD_POS_TYPE_HUNYUANVL), so the
text around it keeps plain positions; its own rows turn by their XD-RoPE positions, which the text model reads from
the picture the cache records before the rows go in (models/hunyuan_vl.py's :func:`~kvrun.models.hunyuan_vl.add_picture`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models import hunyuanvl_image
from ..models.hunyuan_vl import add_picture
from .vision_markers import require_arch, require_markers
from .vision_qwen2vl import GridRows

IMAGE_START, IMAGE_END = "<｜hy_place▁holder▁no▁100｜>", "<｜hy_place▁holder▁no▁101｜>"


class HunyuanVLLayout:
    """A Hunyuan-VL projector beside ``engine``'s sectioned ``hunyuan_vl`` text model: pictures to rows, rows into a
    cache."""

    def __init__(self, engine: Any, encoder: hunyuanvl_image.HunyuanVLEncoder) -> None:
        require_arch(engine, ("hunyuan_vl",), "a hunyuanvl projector goes with a HunyuanOCR / Hunyuan-VL text model (hunyuan_vl "
                     "with rope sections)", takes_images=True)  # fmt: skip
        require_markers(engine, (IMAGE_START, IMAGE_END), "a Hunyuan-VL")
        self.engine, self.encoder = engine, encoder

    def grid(self, image: np.ndarray) -> tuple[int, int]:
        """(nx, ny): the blocks a side uint8 RGB ``image`` [h, w, 3] becomes."""
        return hunyuanvl_image.grid(image.shape[1], image.shape[0], self.encoder.cfg)

    def n_positions(self, image: np.ndarray) -> int:
        """Cache slots (and positions) the picture takes: its rows, newlines and begin and end rows included."""
        return hunyuanvl_image.n_rows(*self.grid(image))

    def rows(self, image: np.ndarray) -> GridRows:
        """The picture resized, normalised and encoded: its rows [1 + ny (nx + 1) + 1, n_embd] with their grid."""
        rows = self.encoder.encode(hunyuanvl_image.preprocess(image, self.encoder.cfg)).view(GridRows)
        rows.grid = self.grid(image)
        return rows

    def feed(self, cache: Any, rows: np.ndarray) -> None:
        """Feed a picture's rows after what ``cache`` holds, the picture recorded first so that they turn by their
        XD-RoPE positions."""
        nx, ny = getattr(rows, "grid", (0, 0))
        if nx * ny == 0 or hunyuanvl_image.n_rows(nx, ny) != len(rows):
            raise KvrunError(f"{len(rows)} image rows without their grid; a Hunyuan-VL picture's rows come from Vision.image_rows")
        add_picture(cache, nx, ny)
        self.engine.eval_embd(cache, np.asarray(rows))
