"""The state of a Mamba 1 layer (``mamba``: state-spaces' mamba-130m ... 2.8b, Falcon-Mamba-7B), one per layer in the
:class:`~.base.KVCache`: Mamba keeps no K/V.

For the next token llama.cpp keeps what the layer reads of the past: the convolution's last ``d_conv - 1`` inputs
(``x``, d_inner wide) and the scan's state ``[d_inner, d_state]``.  As Mamba-2's, the state cannot go back a token, so
this is Mamba-2's cache (``cache/ssm.py``: its ring of the last positions' inputs, its copies of the state every
``EVERY`` positions, going back from a copy and feeding the kept inputs again, starting over further back) around
Mamba 1's scan.  Mamba 1 makes the scan's ``dt``, ``B`` and ``C`` from the convolution's output (``ssm_x``,
``ssm_dt``), so a step is two calls: ``conv(x, pos, w)`` (the convolution; it first replays the kept inputs after
going back) and ``scan(xc, dt, B, C, pos, w, y)``; a ring row holds a position's raw ``x`` (which the convolution
reads) and its ``dt`` (its bias added), ``B`` and ``C``: a replay needs no weight product.  Everything is float32,
never quantized or evicted: a layer of mamba-2.8b (d_inner 5120, state 16) keeps 320 KiB of state, 960 KiB with its
two copies, and 1.8 MiB of kept inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.cpu.mamba import mamba_scan
from ..ops.cpu.ssm import ssm_conv
from .base import LayerSpec
from .ssm import CHECKPOINTS, EVERY, RING, SSMLayerCache


class MambaLayerCache(SSMLayerCache):
    """Mamba-2's cache machinery (``truncate``, ``can_truncate``, the ring and the copies) around Mamba 1's scan."""

    def __init__(self, spec: LayerSpec) -> None:  # (not SSMLayerCache's: other shapes, the same fields)
        self.spec = spec
        self.d_conv, self.d_inner, self.d_state = spec.mamba
        self.channels = self.d_inner  # the convolution's: x; then dt [d_inner], B and C [d_state] each
        shape = (self.d_inner, self.d_state)
        self.state = np.zeros(shape, np.float32)
        self.ck = np.zeros((CHECKPOINTS, *shape), np.float32)
        self.ck_pos = np.full(CHECKPOINTS, -1, np.int64)
        self.n_ring = RING + self.d_conv - 1
        self.ring = np.zeros((self.n_ring, 2 * self.d_inner + 2 * self.d_state), np.float32)
        self.ring_lo = 0
        self.offset = 0
        self.replay_from = 0

    def _at(self, pos: np.ndarray) -> tuple[int, int, np.ndarray]:
        """The chunk's first position, the start of its kept tail and that tail's ring rows (the last n_ring)."""
        p0 = int(pos[0])
        if p0 != self.offset:
            raise ValueError(f"a Mamba layer continues at position {self.offset}, not {p0}")
        T = len(pos)
        keep = min(T, self.n_ring)
        return p0, T - keep, np.arange(p0 + T - keep, p0 + T) % self.n_ring

    def conv(self, x: np.ndarray, pos: np.ndarray, w: Any) -> np.ndarray:
        """The convolution of the chunk ``x`` [T, d_inner] at ``pos`` (kept) with ``w.conv`` [d_conv, d_inner] and
        ``w.conv_b``, SiLU after it: ``[T, d_inner]``.  Opens a step (after going back: the state catches up first)."""
        p0, lo, ring = self._at(pos)
        if self.replay_from < p0:
            r0 = self.replay_from
            rows = self.rows(r0 - self.d_conv + 1, p0)
            xc = np.empty((p0 - r0, self.d_inner), np.float32)
            ssm_conv(np.ascontiguousarray(rows[:, : self.d_inner]), w.conv, w.conv_b, xc)
            dt, B, C = self._split(np.ascontiguousarray(rows[self.d_conv - 1 :, self.d_inner :]))
            self._advance(r0, xc, dt, B, C, w, np.empty_like(xc))
            self.replay_from = p0
        win = np.concatenate([self.rows(p0 - self.d_conv + 1, p0)[:, : self.d_inner], x])  # (read before the rows below go)
        self.ring[ring, : self.d_inner] = x[lo:]
        self.ring_lo = max(self.ring_lo, p0 + len(pos) - self.n_ring)
        out = np.empty((len(pos), self.d_inner), np.float32)
        ssm_conv(win, w.conv, w.conv_b, out)
        return out

    def _split(self, dbc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A ring row's (or rows') dt, B and C."""
        n, s = self.d_inner, self.d_state
        return dbc[:, :n], np.ascontiguousarray(dbc[:, n : n + s]), np.ascontiguousarray(dbc[:, n + s :])

    def scan(self, xc: np.ndarray, dt: np.ndarray, B: np.ndarray, C: np.ndarray, pos: np.ndarray, w: Any, y: np.ndarray) -> None:  # type: ignore[override]
        """The scan of the chunk at ``pos`` (after :meth:`conv`): ``xc`` the convolution's output, ``dt`` [T, d_inner]
        (its bias added), ``B``, ``C`` [T, d_state] (all kept), ``w`` the layer's ``A`` and ``D``; writes ``y`` [T,
        d_inner] (``s . C + D x``, before the gate).  Closes the step."""
        p0, lo, ring = self._at(pos)
        n, s = self.d_inner, self.d_state
        self.ring[ring, n : 2 * n] = dt[lo:]
        self.ring[ring, 2 * n : 2 * n + s] = B[lo:]
        self.ring[ring, 2 * n + s :] = C[lo:]
        self._advance(p0, xc, dt, B, C, w, y)
        self.offset = self.replay_from = p0 + len(pos)

    def _advance(self, p0: int, xc: np.ndarray, dt: np.ndarray, B: np.ndarray, C: np.ndarray, w: Any, y: np.ndarray) -> None:  # type: ignore[override]
        """The scan from position ``p0`` on; the state is copied at the multiples of EVERY the chunk reaches (the last
        CHECKPOINTS of them), as Mamba-2's cache copies its state."""
        T = xc.shape[0]
        kept = self.ck_pos.tolist()
        at = [q for q in range(-(-(p0 + 1) // EVERY) * EVERY, p0 + T + 1, EVERY) if q not in kept][-CHECKPOINTS:]
        slots = sorted(range(CHECKPOINTS), key=kept.__getitem__)[: len(at)]  # the oldest copies (none: -1) make room
        self.ck_pos[slots] = at
        mamba_scan(self.state, xc, np.ascontiguousarray(dt), w.A, B, C, w.D, y,
                   np.array([q - p0 for q in at], np.int64), np.array(slots, np.int64), self.ck)  # fmt: skip
