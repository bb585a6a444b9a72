"""The pictures an XD-RoPE model's cache holds: where each one's rows sit, its grid and its index among the pictures.

Hunyuan-VL's (HunyuanOCR's) picture rows turn by four positions that depend on the picture's grid and on how many
pictures came before it (models/hunyuan_vl.py computes them, as llama.cpp's libmtmd does).  The record lives on the
sequence's cache (:attr:`.base.KVCache.media`) so that whatever forgets positions forgets the pictures with them
(truncation, reset, a server slot's prefix copy) and a saved session (runtime/sessionfile.py, which unpickles only
``kvrun.cache``'s classes) resumes with them, as cache/mrope.py does for Qwen2-VL's images.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Media


@dataclass(frozen=True)
class XdPicture:
    """A picture's rows in a cache: from slot ``slot``, the begin row, ``ny`` rows of ``nx`` blocks and a newline,
    the end row; ``index`` its place among the cache's pictures (mtmd's image_idx)."""

    slot: int
    nx: int
    ny: int
    index: int

    @property
    def end(self) -> int:
        """The slot after its rows."""
        return self.slot + 1 + self.ny * (self.nx + 1) + 1


@dataclass(frozen=True)
class XdPictures(Media):
    """The pictures a cache holds, in slot order (``KVCache.media[XdPictures]``; absent: none)."""

    pictures: tuple[XdPicture, ...]

    def kept(self, n_past: int) -> XdPictures | None:
        """The pictures wholly before ``n_past`` (one a cut goes through is gone: its rows are fed again whole)."""
        kept = tuple(im for im in self.pictures if im.end <= n_past)
        return (self if len(kept) == len(self.pictures) else XdPictures(kept)) if kept else None
