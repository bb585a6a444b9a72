"""The state of an RWKV block (RWKV-7's ``rwkv7``, RWKV-6's ``rwkv6``), one per layer in the :class:`~.base.KVCache`: RWKV keeps no K/V.

For the next token llama.cpp keeps what a block reads of the past: the WKV state (a matrix ``[head_size,
head_size]`` per head) and the token shift's two rows, the last token's normed inputs of the time mix and of the
channel mix (each lerps its input with the previous token's).  As a Mamba-2 state the WKV state cannot go back a
token, so this is Mamba-2's cache (``cache/ssm.py``: its ring of the last positions' inputs, its copies of the
state every ``EVERY`` positions, going back from a copy and feeding the kept inputs again, starting over further
back) with another recurrence.  A ring row holds a position's WKV inputs (``r``, ``w``, ``k``, ``v``, ``a``,
``b`` for WKV-7, ``r``, ``w``, ``k``, ``v`` for WKV-6, after the weight products: a replay needs no weight at all) and its two normed inputs, which the token
shift of the position after it reads: the token shift is a convolution of two positions, so the ring reaches one
position further back than RING, as Mamba-2's reaches ``d_conv - 1``.

A step of a block is three calls, in order: ``token_shift(xn, pos, 0)`` (the time mix's previous rows; it
first replays the kept inputs after going back), ``wkv(x, pos, y)`` (the recurrence), ``token_shift(xn, pos, 1)``
(the channel mix's; it closes the step).  Everything is float32, never quantized or evicted: a layer of
RWKV7-G1 1.5B (2048 wide, heads of 64) keeps 0.5 MiB of state, 1.5 MiB with its two copies, and 4.1 MiB of
kept inputs (8 x 2048 floats a position).
"""

from __future__ import annotations

import numpy as np

from ..ops.cpu.wkv6 import wkv6
from ..ops.cpu.wkv7 import wkv7
from .base import LayerSpec
from .ssm import CHECKPOINTS, EVERY, RING, SSMLayerCache

#: the recurrence of each RWKV version (LayerSpec.rwkv's third field) and its inputs a position, in n_embd wide rows
KERNELS = {7: (wkv7, 6), 6: (wkv6, 4)}


class RWKVLayerCache(SSMLayerCache):
    """Mamba-2's cache machinery (``truncate``, ``can_truncate``, the ring and the copies) around WKV-7 or WKV-6."""

    def __init__(self, spec: LayerSpec) -> None:  # (not SSMLayerCache's: other shapes, the same fields)
        self.spec = spec
        self.n_embd, self.head_size, self.version = spec.rwkv  # (the version, not its kernel: a session file pickles this)
        n_in = KERNELS[self.version][1]
        self.d_conv = 2  # the token shift reads one position back
        self.channels = n_in * self.n_embd  # the WKV inputs: r, w, k, v (and WKV-7's a, b); then the two normed inputs
        shape = (self.n_embd // self.head_size, self.head_size, self.head_size)
        self.state = np.zeros(shape, np.float32)
        self.ck = np.zeros((CHECKPOINTS, *shape), np.float32)
        self.ck_pos = np.full(CHECKPOINTS, -1, np.int64)
        self.n_ring = RING + self.d_conv - 1
        self.ring = np.zeros((self.n_ring, self.channels + 2 * self.n_embd), np.float32)
        self.ring_lo = 0
        self.offset = 0
        self.replay_from = 0

    def update_and_attend(self, q, k, v, pos, out) -> None:  # (LayerCache's protocol: not this layer's)
        raise TypeError("an RWKV block has no attention")

    def _at(self, pos: np.ndarray) -> tuple[int, int, np.ndarray]:
        """The chunk's first position, its length's ring rows (the last n_ring of them) and the start of the kept tail."""
        p0 = int(pos[0])
        if p0 != self.offset:
            raise ValueError(f"an RWKV block continues at position {self.offset}, not {p0}")
        T = len(pos)
        keep = min(T, self.n_ring)
        return p0, T - keep, np.arange(p0 + T - keep, p0 + T) % self.n_ring

    def token_shift(self, xn: np.ndarray, pos: np.ndarray, part: int) -> np.ndarray:
        """The previous position's rows of ``xn`` [T, n_embd] (the normed input of the time mix, ``part`` 0, or of the
        channel mix, 1): ``[T, n_embd]``, zeros before position 0.  Keeps ``xn``; part 0 opens a step, 1 closes it."""
        p0, lo, ring = self._at(pos)
        if part == 0 and self.replay_from < p0:  # (after going back: the state catches up on the kept inputs first)
            self._advance(self.replay_from, np.ascontiguousarray(self.rows(self.replay_from, p0)[:, : self.channels]),
                          np.empty((p0 - self.replay_from, self.n_embd), np.float32))  # fmt: skip
            self.replay_from = p0
        col = self.channels + part * self.n_embd
        prev = np.empty_like(xn)
        prev[0] = self.rows(p0 - 1, p0)[0, col : col + self.n_embd]  # (read before the rows below overwrite it)
        prev[1:] = xn[:-1]
        self.ring[ring, col : col + self.n_embd] = xn[lo:]
        self.ring_lo = max(self.ring_lo, p0 + len(pos) - self.n_ring)
        if part == 1:
            self.offset = self.replay_from = p0 + len(pos)
        return prev

    def wkv(self, x: np.ndarray, pos: np.ndarray, y: np.ndarray) -> None:
        """WKV-7 (WKV-6) of the chunk at ``pos`` (after ``token_shift(.., 0)``): ``x`` [T, 6 (4) * n_embd] its ``r``,
        ``w``, ``k``, ``v`` (``a``, ``b``) rows (kept); writes ``y`` [T, n_embd] (before the group norm)."""
        p0, lo, ring = self._at(pos)
        self.ring[ring, : self.channels] = x[lo:]
        self._advance(p0, x, y)

    def _advance(self, p0: int, x: np.ndarray, y: np.ndarray) -> None:
        """The recurrence from position ``p0`` on; the state is copied at the multiples of EVERY the chunk reaches
        (the last CHECKPOINTS of them), as Mamba-2's cache copies its state."""
        T = x.shape[0]
        kept = self.ck_pos.tolist()
        at = [q for q in range(-(-(p0 + 1) // EVERY) * EVERY, p0 + T + 1, EVERY) if q not in kept][-CHECKPOINTS:]
        slots = sorted(range(CHECKPOINTS), key=kept.__getitem__)[: len(at)]  # the oldest copies (none: -1) make room
        self.ck_pos[slots] = at
        KERNELS[self.version][0](self.state, x, y, np.array([q - p0 for q in at], np.int64), np.array(slots, np.int64), self.ck)
