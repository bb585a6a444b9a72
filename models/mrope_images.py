"""Images' positions in a multimodal-rope (M-RoPE) text model's cache: Qwen2-VL's and Qwen2.5-VL's (``qwen2vl``), as
llama.cpp's libmtmd gives them.

llama.cpp gives each token four positions, one per rope section (time, height, width, extra).  A text token at
position p has (p, p, p, 0).  An image of ``ny`` x ``nx`` rows fed at position p0 has, for its row (y, x),
(p0, p0 + y, p0 + x, 0) (mtmd's ``set_position_mrope_2d``), and takes ``max(nx, ny)`` positions, not nx * ny
(``mtmd_image_tokens_get_n_pos``): the text after it goes on at p0 + max(nx, ny).  Its KV cells are nx * ny all the
same, and llama.cpp masks them causally in the order they were fed (the cell's time position, then its (y, x) for
cells of one time: the raster order), which is kvrun's causal order over its cache slots.

So kvrun keeps slots as they are (one a row, positions for masking and for the cache) and changes only what rope
turns by: each cache records the images it holds (``KVCache.media[MropeImages]``, cache/mrope.py: first slot, grid,
rope position), set by :func:`add_image` before the rows are fed; a forward's rows get their sections' positions from
them (:func:`forward_positions`).  A cache without images turns as before, every position its slot, at the cost of a
dict look-up.  The cache cuts the images with the positions it forgets (truncate, reset, copy_prefix); text fed over
an image recorded but never fed (its feed refused) drops it as well.
"""

from __future__ import annotations

import numpy as np

from ..cache.base import KVCache
from ..cache.batch import BatchedKVCache
from ..cache.mrope import MropeImage, MropeImages


def images_of(cache: KVCache) -> list[MropeImage]:
    """The images ``cache`` records, in slot order (none: an empty list)."""
    m = cache.media.get(MropeImages)
    return list(m.images) if isinstance(m, MropeImages) else []


def _forget_from(cache: KVCache, slot: int) -> list[MropeImage]:
    """Drop the images that end past ``slot``, the first slot fed now (one recorded, its rows never fed)."""
    m = cache.media.pop(MropeImages, None)
    kept = m.kept(slot) if m is not None else None
    if isinstance(kept, MropeImages):
        cache.media[MropeImages] = kept
        return list(kept.images)
    return []


def text_position(images: list[MropeImage], slot: int) -> int:
    """The rope position of a text token at ``slot`` after ``images`` (those ending at or before it)."""
    before = [im for im in images if im.end <= slot]
    if not before:
        return slot
    last = before[-1]
    return last.next_pos + (slot - last.end)


def add_image(cache: KVCache, nx: int, ny: int) -> MropeImage:
    """Record an image of ``ny`` x ``nx`` rows about to be fed at ``cache.offset`` (what the cache had recorded past
    there is forgotten); returns it."""
    kept = _forget_from(cache, cache.offset)
    im = MropeImage(cache.offset, int(nx), int(ny), text_position(kept, cache.offset))
    cache.media[MropeImages] = MropeImages((*kept, im))
    return im


def forward_positions(cache: KVCache, pos: np.ndarray, image: bool) -> np.ndarray | None:
    """Positions [T, 4] of a forward's rows at ``pos`` over ``cache`` (one sequence's, or a batch's: each sequence's
    rows by its own images): image rows (``image``) or text; None where every row's is its slot's own, as in a
    text-only chat, which costs one dict look-up a sequence."""
    batch = isinstance(cache, BatchedKVCache)
    if not any(MropeImages in c.media for c in (cache.caches if batch else (cache,))):
        return None
    seqs = list(zip(cache.caches, cache.bounds, cache.bounds[1:])) if batch else [(cache, 0, len(pos))]
    parts = [section_positions(c, np.asarray(pos[lo:hi]), image) for c, lo, hi in seqs]
    if all(P is None for P in parts):
        return None
    return np.concatenate([P if P is not None else np.repeat(np.asarray(pos[lo:hi], np.int64)[:, None], 4, 1) * [1, 1, 1, 0]
                           for P, (_, lo, hi) in zip(parts, seqs)])  # fmt: skip


def section_positions(cache: KVCache, slots: np.ndarray, image: bool) -> np.ndarray | None:
    """Positions [T, 4] (time, height, width, extra) of rows fed at ``slots`` (consecutive) into one sequence's
    ``cache``: an image's rows (``image``: recorded by :func:`add_image`) or text; None where every row's is its
    slot's own (p, p, p, 0): no image before or among them."""
    if len(slots) == 0:
        return None
    images = images_of(cache) if image else _forget_from(cache, int(slots[0]))  # (text: what a truncation forgot goes)
    if not images:
        return None
    out = np.empty((len(slots), 4), np.int64)
    for t, s in enumerate(slots.tolist()):
        im = next((im for im in images if im.slot <= s < im.end), None) if image else None
        if im is None:  # (rows fed without add_image turn as text would)
            p = text_position(images, s)
            out[t] = (p, p, p, 0)
        else:
            y, x = divmod(s - im.slot, im.nx)
            out[t] = (im.pos, im.pos + y, im.pos + x, 0)
    return out


def mrope_rows(P: np.ndarray, sections: list[int], cos: np.ndarray, sin: np.ndarray, text_cos: np.ndarray,
               text_sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-row rope tables [T, n_rot/2] for positions ``P`` [T, 4]: pair i (sector ``i % sum(sections)``) turns as
    neox rope (``cos``/``sin``, the plain tables) at its section's position; the extra section's pairs as the text
    tables have them (unturned: ``text_cos``/``text_sin`` at 0), as ggml's ``rope_multi`` (not interleaved)."""
    half = cos.shape[1]
    n = sum(sections)
    bounds = np.cumsum(sections[:3])
    sector = np.arange(half) % n if n > 0 else np.zeros(half, np.int64)
    sec = np.searchsorted(bounds, sector, side="right")  # 0, 1, 2 (time, height, width), 3 (extra)
    idx = np.arange(half)
    ext = sec >= 3
    p = P[:, np.minimum(sec, 3)]  # [T, half]
    c = cos[p, idx[None, :]].astype(np.float32)
    s = sin[p, idx[None, :]].astype(np.float32)
    c[:, ext], s[:, ext] = text_cos[0, ext], text_sin[0, ext]
    return np.ascontiguousarray(c), np.ascontiguousarray(s)
