"""The state of a Mamba-2 layer (mamba2, Granite 4.0-H's and Nemotron-H's state-space layers), kept beside the
attention layers' K/V in the same :class:`~.base.KVCache`; Falcon-H1's layers, which attend and run the mixer
side by side, keep both (:class:`ParallelSSMLayerCache`).

For the next token llama.cpp keeps what the layer reads of the past: the convolution's last
``d_conv - 1`` inputs and the scan's state ``[n_head, head_dim, d_state]``.  A state cannot go back
a token, yet the cache must (a refused draft of lookup or speculative decoding, a chat turn whose
closing tokens are re-rendered).  So kvrun keeps, beside the state, the layer's inputs (the raw
``xBC`` and ``dt`` rows of the in-projection) of the last :data:`RING` positions and copies of the
state at every :data:`EVERY`-th position, the last :data:`CHECKPOINTS` of them: going back to a
position puts back the last copy at or before it, and the next forward first runs the convolution and
the scan again over the kept inputs from there (no weight product: a small part of a forward).
Going back further than that reaches makes the whole cache start over (:meth:`KVCache.truncate`),
and the text is fed again.  Always in reach: ``EVERY`` positions back from text fed forward only, and a
refused draft's tokens (at most 16) after every check of a draft, however many checks came before: the
copy at the last multiple of ``EVERY`` 16 or more positions back goes only when two later copies are
made, and the text, never more than a draft ahead of what is kept, does not reach the second.

The cache runs the layer's convolution and scan itself (``ops/cpu/ssm.py``), as an attention cache
runs attention: the model hands over the chunk's inputs and the layer's weights, and gets ``y``.
Everything is float32, never quantized or evicted: a state of Granite-4.0-H-Micro is 2 MiB a layer, and
with its two copies and the kept inputs 7.1 MiB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.cpu.ssm import ssm_conv, ssm_scan
from .base import LayerCache, LayerSpec, copy_state

RING = 64  #: positions whose inputs are kept (a draft is at most 16 tokens)
EVERY = 32  #: a copy of the state at every position that is a multiple of this
CHECKPOINTS = 2  #: copies kept (the last ones): a position EVERY back always has one at or before it


class SSMLayerCache(LayerCache):
    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.d_conv, self.n_head, self.head_dim, self.n_group, self.d_state = spec.ssm
        self.d_inner = self.n_head * self.head_dim
        self.channels = self.d_inner + 2 * self.n_group * self.d_state  # the convolution's: x, B, C
        shape = (self.n_head, self.head_dim, self.d_state)
        self.state = np.zeros(shape, np.float32)
        self.ck = np.zeros((CHECKPOINTS, *shape), np.float32)
        self.ck_pos = np.full(CHECKPOINTS, -1, np.int64)  # the position each copy is the state at (-1: none)
        # the inputs of position p in row p % n_ring: xBC then dt (as the in-projection gave them); the ring reaches
        # d_conv - 1 positions further back than RING, which the convolution reads before the oldest position fed again
        self.n_ring = RING + self.d_conv - 1
        self.ring = np.zeros((self.n_ring, self.channels + self.n_head), np.float32)
        self.ring_lo = 0  # the oldest position whose inputs the ring still holds
        self.offset = 0  # positions seen
        self.replay_from = 0  # < offset: the state is the one at this position; the inputs from here on are owed to it

    def update_and_attend(self, q, k, v, pos, out) -> None:  # (LayerCache's protocol: not this layer's)
        raise TypeError("a state-space layer has no attention")

    def scan(self, xbc: np.ndarray, dt: np.ndarray, pos: np.ndarray, w: Any, y: np.ndarray) -> None:
        """Mamba-2's convolution and scan of a chunk at ``pos``: ``xbc`` [T, channels] and ``dt`` [T, n_head] the
        in-projection's rows (stored), ``w`` the layer's weights (``conv`` [d_conv, channels], ``conv_b``, ``dt_b``,
        ``A``, ``D``); writes ``y`` [T, d_inner] (``s @ C + D * x``, before the gate and the norm)."""
        T, p0 = xbc.shape[0], int(pos[0])
        if p0 != self.offset:
            raise ValueError(f"a state-space layer continues at position {self.offset}, not {p0}")
        if self.replay_from < p0:  # (after going back: the state catches up on the kept inputs first)
            lo = self.replay_from
            rows = self.rows(lo - self.d_conv + 1, p0)
            win, dt_kept = np.ascontiguousarray(rows[:, : self.channels]), rows[self.d_conv - 1 :, self.channels :]
            self._advance(lo, win, dt_kept, w, np.empty((p0 - lo, self.d_inner), np.float32))
        win = np.concatenate([self.rows(p0 - self.d_conv + 1, p0)[:, : self.channels], xbc])
        keep = min(T, self.n_ring)
        ring = (np.arange(p0 + T - keep, p0 + T)) % self.n_ring
        self.ring[ring, : self.channels] = xbc[T - keep :]
        self.ring[ring, self.channels :] = dt[T - keep :]
        self.ring_lo = max(self.ring_lo, p0 + T - self.n_ring)
        self._advance(p0, win, dt, w, y)
        self.offset = self.replay_from = p0 + T

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """The kept inputs of positions ``lo .. hi - 1``, zeros before position 0: ``[hi - lo, channels + n_head]``."""
        out = np.zeros((hi - lo, self.ring.shape[1]), np.float32)
        if hi > max(lo, 0):
            out[max(lo, 0) - lo :] = self.ring[np.arange(max(lo, 0), hi) % self.n_ring]
        return out

    def _advance(self, p0: int, win: np.ndarray, dt: np.ndarray, w: Any, y: np.ndarray) -> None:
        """The convolution (``win``: the d_conv - 1 inputs before p0, then the chunk's) and the scan from position
        ``p0`` on; the state is copied at the multiples of EVERY the chunk reaches (the last CHECKPOINTS of them)."""
        T = dt.shape[0]
        xbc = np.empty((T, self.channels), np.float32)
        ssm_conv(win, w.conv, w.conv_b, xbc)
        kept = self.ck_pos.tolist()  # (Python ints: a decode step mostly has no copy to make, and numpy's set ops cost 60 us)
        at = [q for q in range(-(-(p0 + 1) // EVERY) * EVERY, p0 + T + 1, EVERY) if q not in kept][-CHECKPOINTS:]
        slots = sorted(range(CHECKPOINTS), key=kept.__getitem__)[: len(at)]  # the oldest copies (none: -1) make room
        self.ck_pos[slots] = at
        ck_t, ck_slot = np.array([q - p0 for q in at], np.int64), np.array(slots, np.int64)
        ssm_scan(self.state, xbc, dt + w.dt_b, w.A, w.D, self.n_group, y, ck_t, ck_slot, self.ck)

    def _restore_point(self, n_past: int) -> int:
        """The position (<= n_past) of the copy to go back to n_past from, or -1 if the kept inputs do not reach."""
        need = lambda c: max(c - self.d_conv + 1, 0) >= self.ring_lo  # noqa: E731 (the inputs from c on, the convolution's included)
        cands = [int(c) for c in self.ck_pos if 0 <= c <= n_past and need(c)]
        if need(0):  # (position 0: the empty state, no copy needed)
            cands.append(0)
        return max(cands, default=-1)

    def n_tokens(self) -> int:
        return self.offset

    def nbytes(self) -> int:
        return int(self.state.nbytes + self.ck.nbytes + self.ring.nbytes)

    def reset(self) -> None:
        self.state.fill(0.0)
        self.ck_pos.fill(-1)
        self.ring_lo = self.offset = self.replay_from = 0

    def can_truncate(self, n_past: int) -> bool:
        return n_past == 0 or n_past == self.offset or self._restore_point(n_past) >= 0

    def truncate(self, n_past: int) -> None:
        if n_past == self.offset:
            return
        if n_past == 0:
            self.reset()
            return
        c = self._restore_point(n_past)
        if c < 0:
            raise ValueError(f"a state-space layer cannot go back to position {n_past} (see can_truncate)")
        slot = np.nonzero(self.ck_pos == c)[0]
        if slot.size:
            self.state[...] = self.ck[slot[0]]
        else:
            self.state.fill(0.0)
        self.ck_pos[self.ck_pos > n_past] = -1  # (copies of the positions left behind)
        self.offset, self.replay_from = n_past, c

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """``src``'s state, kept inputs and copies, gone back to ``n_past`` (as far as ``can_truncate`` reaches: a
        fork's whole text always; a server slot's system prompt where a copy at or before it is still kept)."""
        return copy_state(self, src, n_past, keep=("kv",))


class KVBeside:
    """The attention's K/V (``kv``) beside a state-space layer's state (Falcon-H1's layers, on the CPU and the GPU):
    attending goes to ``kv``; the two go back, and start over, together.  A mixin before the state's cache class."""

    def __init__(self, spec: LayerSpec, kv: LayerCache) -> None:
        super().__init__(spec)
        self.kv = kv

    def update_and_attend(self, q, k, v, pos, out) -> None:
        self.kv.update_and_attend(q, k, v, pos, out)

    def nbytes(self) -> int:
        return super().nbytes() + self.kv.nbytes()

    def reset(self) -> None:
        super().reset()
        self.kv.reset()

    def can_truncate(self, n_past: int) -> bool:
        return super().can_truncate(n_past) and self.kv.can_truncate(n_past)

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """The state's copy and the K/V's, each by its own rule (``kv`` stays this layer's cache, taking ``src.kv``'s)."""
        return super().copy_prefix(src, n_past) and hasattr(self.kv, "copy_prefix") and self.kv.copy_prefix(src.kv, n_past)

    def truncate(self, n_past: int) -> None:
        super().truncate(n_past)
        self.kv.truncate(n_past)


class ParallelSSMLayerCache(KVBeside, SSMLayerCache):
    """A layer that attends and runs a Mamba-2 mixer side by side on the same input (Falcon-H1): the mixer's state
    as above and, beside it, the attention's K/V (``kv``: plain or compressed, made with the other layers').  The
    two go back, and start over, together: going back is as far as the state reaches."""
