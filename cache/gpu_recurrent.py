"""RWKV's and LFM2's layer state on the GPU: cache/rwkv.py (the WKV state and the token shift's rows) and cache/conv.py
(LFM2's short convolution's last inputs) with the state, its copies and the rings in device memory, the work in
``ops/gpu/recurrent.cu``.

The RWKV block's is the state-space layers' device machinery (``cache/gpu_ssm.py``'s ``_DeviceState``: the ring of the
last positions' inputs at row ``p % n_ring``, a copy of the state every EVERY positions planned by the host, the CUDA
graph protocol of runtime/graphs.py) around the CPU class's scheme and bookkeeping (``truncate`` / ``can_truncate``
are cache/ssm.py's): a ring row holds a position's WKV inputs (r, w, k, v, and WKV-7's a, b) and its two normed inputs,
which the next position's token shift reads.  A step is the CPU's three calls, split where the device needs it:
``lerp`` reads the previous rows (as many lerps as the mix has), ``token_shift`` stores the step's own rows (part 1
closes the step), ``wkv`` runs the recurrence; after going back, part 0's first ``lerp`` replays the kept inputs
(eagerly: graph_key says so).  LFM2's convolution keeps only its ring (no state to copy, as the CPU's): a decode step
reads and writes rows by the device position, so it replays anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.gpu import kernels as K
from ..ops.gpu import recurrent as R
from ..ops.gpu import ssm as S
from ..ops.gpu.arrays import positions
from .base import LayerSpec
from .conv import RING as CONV_RING
from .conv import ConvLayerCache
from .gpu_ssm import _DeviceState
from .rwkv import KERNELS, RWKVLayerCache
from .ssm import RING


class GPURWKVLayerCache(_DeviceState, RWKVLayerCache):
    """An RWKV block's state on the device (cache/rwkv.py's scheme); ``lerp``, ``token_shift`` and ``wkv`` its step."""

    host_class = RWKVLayerCache

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.n_embd, self.head_size, self.version = spec.rwkv
        if self.head_size > R.MAX_HEAD:
            raise ValueError(f"RWKV heads of {self.head_size} exceed the GPU kernel's {R.MAX_HEAD}; use --device cpu")
        self.d_conv = 2
        self.channels = KERNELS[self.version][1] * self.n_embd
        self.n_ring = RING + self.d_conv - 1
        self._alloc((self.n_embd // self.head_size, self.head_size, self.head_size), self.channels + 2 * self.n_embd)

    def lerp(self, xn: Any, pos: np.ndarray, part: int, mu: Any, out: Any, add: Any = None) -> None:
        """``out[j, :T]`` = ``xn`` [T, n_embd] lerped with its previous rows by ``mu[j]`` (plus ``add[j, :T]``), ``out``
        an [m, n_batch, n_embd] scratch: the time mix's (``part`` 0) or the channel mix's (1).  Before the step's
        ``token_shift`` of the same part."""
        p0, T, capturing = self._open(pos)
        if part == 0 and not capturing and self.replay_from < p0:  # (after going back: the state catches up first)
            r0 = self.replay_from
            rows = self._kept_rows(r0, p0)
            ck, n_ck = self._ck_arg(r0, p0 - r0)
            R.wkv(self.state, rows, self._buf("y_replay", p0 - r0, self.n_embd), self.version, ck, n_ck, self.ck)
            self.replay_from = p0
        R.lerp(xn, self.ring, self.channels + part * self.n_embd, self.n_ring, positions(pos), mu, out, add)

    def token_shift(self, xn: Any, pos: np.ndarray, part: int) -> None:
        """Keeps the step's normed input ``xn`` [T, n_embd] of the time mix (``part`` 0) or the channel mix (1, which
        closes the step) for the next position's shift.  (Unlike the CPU's, it returns nothing: ``lerp`` reads.)"""
        p0, T, capturing = self._open(pos)
        S.store(xn, xn.shape[1], 0, self.n_embd, self.ring, self.channels + part * self.n_embd, self.n_ring, positions(pos), T)
        if part == 1 and not capturing:
            self._close(p0, T)

    def wkv(self, x: Any, pos: np.ndarray, y: Any) -> None:
        """WKV-7 (WKV-6) of the chunk at ``pos``: ``x`` [T, 6 (4) * n_embd] its r, w, k, v (a, b) rows (kept); writes
        ``y`` [T, n_embd] (before the bonus and the group norm)."""
        p0, T, _ = self._open(pos)
        S.store(x, x.shape[1], 0, self.channels, self.ring, 0, self.n_ring, positions(pos), T)
        ck, n_ck = self._ck_arg(p0, T)
        R.wkv(self.state, x, y, self.version, ck, n_ck, self.ck)


class GPUConvLayerCache(ConvLayerCache):
    """LFM2's convolution layer on the device: the ring of the last inputs (cache/conv.py's), ``conv`` its step."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.d_conv = spec.conv_kernel - 1
        self.ring = K.runtime().xp.zeros((CONV_RING, spec.conv), np.float32)
        self.offset = 0
        self._capturing = False

    copy_prefix = _DeviceState.copy_prefix  # (src's ring gone back to n_past, put in place by restore)

    def window(self, bx, pos):  # (the CPU's protocol: the GPU model hands over the in-projection's rows instead)
        raise TypeError("the GPU's convolution cache takes the in-projection's rows: conv")

    def conv(self, bcx: Any, pos: np.ndarray, w: Any, y: Any) -> None:
        """``y`` [T, channels] = ``C *`` the convolution of ``B * x`` for the in-projection's rows ``bcx`` [T, 3 channels]
        (``w`` [channels, kernel] on the device); keeps the chunk's ``B * x``."""
        p0, T = int(pos[0]), len(pos)
        if not self._capturing and p0 != self.offset:
            raise ValueError(f"a convolution layer continues at position {self.offset}, not {p0}")
        R.shortconv(bcx, self.ring, positions(pos), w, y)
        if not self._capturing:
            self.offset = p0 + T

    # ------------------------------------------------------------ session files (cache/hostcopy.py)
    def to_host(self, moved: dict) -> ConvLayerCache:
        """The CPU's :class:`~.conv.ConvLayerCache` holding the same inputs in the same rows."""
        h = ConvLayerCache(self.spec)
        h.ring[...] = K.runtime().asnumpy(self.ring)
        h.offset = self.offset
        return h

    def load_host(self, src: Any) -> None:
        """Hold what the CPU's ``src`` (a session file's :class:`~.conv.ConvLayerCache`) holds."""
        from .hostcopy import refuse

        if type(src) is not ConvLayerCache or src.spec != self.spec or src.ring.shape != self.ring.shape:
            raise refuse(src, self)
        self.ring[...] = K.runtime().xp.asarray(src.ring)
        self.offset = src.offset

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> Any:
        return "conv" if p == self.offset else None

    def graph_step(self, p: int) -> None:
        self.offset = p + 1
        return None

    def serve_plan(self, buf: Any) -> None:
        self._capturing = buf is not None

    def snapshot(self) -> tuple:
        return (self.ring.copy(), self.offset)

    def restore(self, snap: tuple) -> None:
        self.ring[...] = snap[0]
        self.offset = snap[1]
