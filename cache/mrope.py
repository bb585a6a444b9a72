"""The images a multimodal-rope (M-RoPE) model's cache holds: where each one's rows sit and the rope position it took.

Qwen2-VL's, Qwen3-VL's and GLM-4V's pictures turn their rows by per-section positions that depend on the picture's
grid (models/mrope_images.py computes them, as llama.cpp's libmtmd does).  The grids live on the sequence's cache
(:attr:`.base.KVCache.media`) so that whatever forgets positions forgets the pictures with them (truncation, reset,
a server slot's prefix copy) and a saved session (runtime/sessionfile.py, which unpickles only ``kvrun.cache``'s
classes) resumes with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Media


@dataclass(frozen=True)
class MropeImage:
    """An image's rows in a cache: from slot ``slot``, ``ny`` rows of ``nx``, its time position ``pos``."""

    slot: int
    nx: int
    ny: int
    pos: int

    @property
    def end(self) -> int:
        """The slot after its rows."""
        return self.slot + self.nx * self.ny

    @property
    def next_pos(self) -> int:
        """The position the text after it goes on from (libmtmd's n_past + n_pos)."""
        return self.pos + max(self.nx, self.ny)


@dataclass(frozen=True)
class MropeImages(Media):
    """The images a cache holds, in slot order (``KVCache.media[MropeImages]``; absent: none)."""

    images: tuple[MropeImage, ...]

    def kept(self, n_past: int) -> MropeImages | None:
        """The images wholly before ``n_past`` (one a cut goes through is gone: its rows are fed again whole)."""
        kept = tuple(im for im in self.images if im.end <= n_past)
        return (self if len(kept) == len(self.images) else MropeImages(kept)) if kept else None
