"""The state-space layers' cache on the GPU: cache/ssm.py (Mamba-2) and cache/mamba.py (Mamba 1) with the state, its
copies and the ring of kept inputs in device memory, the convolution and the scan in ``ops/gpu/ssm.cu``.

The scheme is the CPU's, field for field (the ring of the last :data:`~.ssm.RING` positions' inputs, a copy of the
state at every :data:`~.ssm.EVERY`-th position, the last :data:`~.ssm.CHECKPOINTS` of them, going back from a copy and
feeding the kept inputs again, starting over further back), and the host keeps the same bookkeeping (``offset``,
``ring_lo``, ``ck_pos``), so ``truncate`` / ``can_truncate`` are the CPU class's.  What the device needs to know of a
step's place it reads from the device positions (the ring rows are ``p % n_ring``), so a one-token decode step
launches the same kernels with the same arguments wherever it is, and is captured as a CUDA graph
(runtime/graphs.py): the one host decision, which copy slot the state goes to when the position is a multiple of
EVERY, is planned by the host into the graph's input buffer (``graph_step``), as the compressed cache plans its slots.
A step right after going back (the kept inputs fed again first) decodes eagerly.

Falcon-H1's layers keep the attention's K/V beside the state (:class:`GPUParallelSSMLayerCache`); their steps are
captured where that K/V is the plain cache (whose steps plan nothing), and decode eagerly over a compressed one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..ops.gpu import kernels as K
from ..ops.gpu import ssm as S
from ..ops.gpu.arrays import positions, to_device
from .base import LayerCache, LayerSpec
from .gpu_plain import GPUPlainLayerCache
from .mamba import MambaLayerCache
from .ssm import CHECKPOINTS, EVERY, RING, KVBeside, ParallelSSMLayerCache, SSMLayerCache


class _DeviceState:
    """What the GPU caches share: device arrays, the copies' planning, the graph protocol (runtime/graphs.py)."""

    state: Any
    ck: Any
    ring: Any
    ck_pos: np.ndarray
    n_ring: int
    ring_lo: int
    offset: int
    replay_from: int
    _plan: Any = None  # capturing a decode step: the device int32s (tokens, slot, -) its copy reads; None: not capturing

    def copy_prefix(self, src: Any, n_past: int) -> bool:
        """As the CPU's (``copy_state``): ``src``'s state, copies and ring, gone back to ``n_past``; copied in place, as
        :meth:`restore` puts a snapshot back (captured CUDA graphs hold these arrays' pointers)."""
        if type(src) is not type(self) or src.spec != self.spec or not src.can_truncate(n_past):
            return False
        self.restore(src.snapshot())
        self.truncate(n_past)
        return True

    def _alloc(self, shape: tuple[int, ...], ring_w: int) -> None:
        xp = K.runtime().xp
        self.state = xp.zeros(shape, np.float32)
        self.ck = xp.zeros((CHECKPOINTS, *shape), np.float32)
        self.ck_pos = np.full(CHECKPOINTS, -1, np.int64)
        self.ring = xp.zeros((self.n_ring, ring_w), np.float32)
        self.ring_lo = self.offset = self.replay_from = 0
        self._scratch: dict[str, Any] = {}
        self._plan = None

    def _buf(self, name: str, T: int, n: int) -> Any:
        """A [T, n] float32 device scratch, kept for the next step of the size (a captured step keeps its pointers)."""
        a = self._scratch.get(name)
        if a is None or a.shape[0] < T or a.shape[1] != n:
            a = self._scratch[name] = K.runtime().xp.zeros((max(T, 1), n), np.float32)
        return a[:T]

    def _copies(self, p0: int, T: int) -> list[tuple[int, int]]:
        """The (tokens after p0, slot) copies a chunk of T tokens from p0 makes, noted in ck_pos (cache/ssm.py's rule)."""
        kept = self.ck_pos.tolist()
        at = [q for q in range(-(-(p0 + 1) // EVERY) * EVERY, p0 + T + 1, EVERY) if q not in kept][-CHECKPOINTS:]
        slots = sorted(range(CHECKPOINTS), key=kept.__getitem__)[: len(at)]
        self.ck_pos[slots] = at
        return [(q - p0, s) for q, s in zip(at, slots)]

    def _ck_arg(self, p0: int, T: int) -> tuple[Any, int]:
        """The scan's copy plan: the capture's buffer (one pair), or the chunk's pairs uploaded (an eager step)."""
        if self._plan is not None:
            return self._plan, 1
        pairs = self._copies(p0, T)
        flat = np.full(2 * CHECKPOINTS, -1, np.int32)
        for j, (t, s) in enumerate(pairs):
            flat[2 * j : 2 * j + 2] = t, s
        return K.runtime().xp.asarray(flat), CHECKPOINTS

    def _kept_rows(self, lo: int, hi: int) -> Any:
        """The ring's rows of positions ``lo .. hi - 1`` (all kept: ``truncate`` went back no further), a device copy."""
        xp = K.runtime().xp
        return xp.ascontiguousarray(self.ring[xp.asarray(np.arange(lo, hi) % self.n_ring)])

    def _open(self, pos: np.ndarray) -> tuple[int, int, bool]:
        """A step's first position and length; whether it is being captured (then the host's bookkeeping, done by the
        eager step before it and by ``graph_step`` before each replay, is left alone)."""
        p0, T = int(pos[0]), len(pos)
        if self._plan is None and p0 != self.offset:
            raise ValueError(f"a state-space layer continues at position {self.offset}, not {p0}")
        return p0, T, self._plan is not None

    def _close(self, p0: int, T: int) -> None:
        self.ring_lo = max(self.ring_lo, p0 + T - self.n_ring)
        self.offset = self.replay_from = p0 + T

    # ------------------------------------------------------------ session files (cache/hostcopy.py)
    #: the CPU's class of the same fields (SSMLayerCache, MambaLayerCache, RWKVLayerCache, DeltaNetLayerCache)
    host_class: type

    def to_host(self, moved: dict[int, LayerCache]) -> LayerCache:
        """The CPU's class holding this layer's state, copies, ring and bookkeeping (the same fields, the same rows)."""
        h = self.host_class(self.spec)
        self._into_host(h)
        return h

    def _into_host(self, h: Any) -> None:
        rt = K.runtime()
        h.state[...] = rt.asnumpy(self.state).reshape(h.state.shape)  # (Mamba 1's: [d_inner, d_state] on the CPU)
        h.ck[...] = rt.asnumpy(self.ck).reshape(h.ck.shape)
        h.ring[...] = rt.asnumpy(self.ring)
        h.ck_pos[...] = self.ck_pos
        h.ring_lo, h.offset, h.replay_from = self.ring_lo, self.offset, self.replay_from

    def load_host(self, src: Any) -> None:
        """Hold what the CPU's ``src`` (a session file's layer of :attr:`host_class`) holds."""
        from .hostcopy import refuse

        if type(src) is not self.host_class or src.spec != self.spec or src.state.size != self.state.size or src.ring.shape != self.ring.shape:
            raise refuse(src, self)
        self.state[...] = to_device(src.state.reshape(self.state.shape))
        self.ck[...] = to_device(src.ck.reshape(self.ck.shape))
        self.ring[...] = to_device(src.ring)
        self.ck_pos[...] = src.ck_pos
        self.ring_lo, self.offset, self.replay_from = src.ring_lo, src.offset, src.replay_from

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> Any:
        """A decode step at ``p`` launches the same kernels anywhere, save right after going back (its replay of the
        kept inputs first is eager)."""
        return "ssm" if p == self.offset and self.replay_from == self.offset else None

    def graph_step(self, p: int) -> tuple[int, int, int]:
        """The host's part of a replayed step at ``p``: the copy it makes, if any (into the buffer), and the bookkeeping."""
        pairs = self._copies(p, 1)
        self._close(p, 1)
        return (1, pairs[0][1], 0) if pairs else (1, -1, 0)

    def serve_plan(self, buf: Any) -> None:
        self._plan = buf

    def snapshot(self) -> tuple:
        return (self.state.copy(), self.ck.copy(), self.ring.copy(), self.ck_pos.copy(), self.ring_lo, self.offset, self.replay_from)

    def restore(self, snap: tuple) -> None:
        state, ck, ring, ck_pos, self.ring_lo, self.offset, self.replay_from = snap
        self.state[...] = state
        self.ck[...] = ck
        self.ring[...] = ring
        self.ck_pos[...] = ck_pos


class GPUSSMLayerCache(_DeviceState, SSMLayerCache):
    """A Mamba-2 layer's state on the device (cache/ssm.py's scheme); ``scan_rows`` is its step."""

    host_class = SSMLayerCache

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.d_conv, self.n_head, self.head_dim, self.n_group, self.d_state = spec.ssm
        self.d_inner = self.n_head * self.head_dim
        self.channels = self.d_inner + 2 * self.n_group * self.d_state
        self.n_ring = RING + self.d_conv - 1
        self._alloc((self.n_head, self.head_dim, self.d_state), self.channels + self.n_head)

    def scan(self, xbc, dt, pos, w, y) -> None:  # (the CPU's protocol: the GPU model hands over whole rows instead)
        raise TypeError("the GPU's Mamba-2 cache takes the in-projection's rows: scan_rows")

    def scan_rows(self, zx: Any, x_col0: int, dt_col0: int, pos: np.ndarray, w: Any, y: Any) -> None:
        """Mamba-2's convolution and scan of a chunk at ``pos``: ``xBC`` and ``dt`` the columns ``x_col0 ..`` and
        ``dt_col0 ..`` of the in-projection's rows ``zx`` [T, d_in_proj] (kept in the ring), ``w`` the layer's weights;
        writes ``y`` [T, d_inner] (``s @ C + D * x``, before the gate and the norm)."""
        p0, T, capturing = self._open(pos)
        if not capturing and self.replay_from < p0:  # (after going back: the state catches up on the kept inputs first)
            r0 = self.replay_from
            rows = self._kept_rows(r0, p0)
            self._advance_rows(r0, rows, 0, self.channels, positions(np.arange(r0, p0, dtype=np.int32)), w, self._buf("y_replay", p0 - r0, self.d_inner))
        pd = positions(pos)
        self._advance_rows(p0, zx, x_col0, dt_col0, pd, w, y, store=True)
        if not capturing:
            self._close(p0, T)

    def _advance_rows(self, p0: int, src: Any, x_col0: int, dt_col0: int, pd: Any, w: Any, y: Any, store: bool = False) -> None:
        """The convolution (the chunk's xBC from ``src``, the positions before from the ring) and the scan from ``p0``;
        ``store``: the chunk's inputs go to the ring once the convolution has read the ring."""
        T, stride = src.shape
        xc = self._buf("xconv", T, self.channels)
        S.conv(src, stride, x_col0, self.ring, self.n_ring, pd, S.const(w.conv), S.const(w.conv_b), xc)
        if store:
            S.store(src, stride, x_col0, self.channels, self.ring, 0, self.n_ring, pd, T)
            S.store(src, stride, dt_col0, self.n_head, self.ring, self.channels, self.n_ring, pd, T)
        ck, n_ck = self._ck_arg(p0, T)
        d, gs = self.d_inner, self.n_group * self.d_state
        S.scan(self.state, xc, self.channels, src, stride, dt_col0, S.const(w.dt_b), S.const(w.A), 1, 0,
               xc, self.channels, d, d + gs, S.const(w.D), self.n_group, y, ck, n_ck, self.ck)  # fmt: skip


class GPUMambaLayerCache(_DeviceState, MambaLayerCache):
    """A Mamba 1 layer's state on the device (cache/mamba.py's scheme: a ring row holds a position's x, then its dt, B
    and C); ``conv_rows`` then ``scan_rows`` are its step."""

    host_class = MambaLayerCache

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.d_conv, self.d_inner, self.d_state = spec.mamba
        self.channels = self.d_inner
        self.n_ring = RING + self.d_conv - 1
        self._alloc((self.d_inner, 1, self.d_state), 2 * self.d_inner + 2 * self.d_state)

    def conv_rows(self, xz: Any, pos: np.ndarray, w: Any) -> Any:
        """The convolution (+ bias, SiLU) of the chunk's ``x``, the first d_inner columns of ``xz`` (kept): a [T, d_inner]
        device scratch.  Opens a step (after going back: the state catches up on the kept inputs first)."""
        p0, T, capturing = self._open(pos)
        if not capturing and self.replay_from < p0:
            r0, n, s = self.replay_from, self.d_inner, self.d_state
            rows = self._kept_rows(r0, p0)
            pr = positions(np.arange(r0, p0, dtype=np.int32))
            xc = self._buf("xc_replay", p0 - r0, n)
            S.conv(rows, rows.shape[1], 0, self.ring, self.n_ring, pr, S.const(w.conv), S.const(w.conv_b), xc)
            self._scan(r0, xc, rows, n, rows, 2 * n, 2 * n + s, w, self._buf("y_replay", p0 - r0, n))
            self.replay_from = p0
        pd = positions(pos)
        xc = self._buf("xc", T, self.d_inner)
        S.conv(xz, xz.shape[1], 0, self.ring, self.n_ring, pd, S.const(w.conv), S.const(w.conv_b), xc)
        S.store(xz, xz.shape[1], 0, self.d_inner, self.ring, 0, self.n_ring, pd, T)
        return xc

    def scan_rows(self, xc: Any, dt: Any, dbc: Any, b_col0: int, pos: np.ndarray, w: Any, y: Any) -> None:
        """The scan of the chunk at ``pos`` (after :meth:`conv_rows`): ``xc`` its output, ``dt`` [T, d_inner] (before
        its bias), ``B`` and ``C`` the columns ``b_col0 ..`` of ``dbc`` (all kept), ``w`` the layer's ``dt_b``, ``A``
        and ``D``; writes ``y`` [T, d_inner] (``s . C + D x``, before the gate).  Closes the step."""
        p0, T, capturing = self._open(pos)
        n, s = self.d_inner, self.d_state
        pd = positions(pos)
        S.store(dt, n, 0, n, self.ring, n, self.n_ring, pd, T)
        S.store(dbc, dbc.shape[1], b_col0, 2 * s, self.ring, 2 * n, self.n_ring, pd, T)
        self._scan(p0, xc, dt, 0, dbc, b_col0, b_col0 + s, w, y)
        if not capturing:
            self._close(p0, T)

    def _scan(self, p0: int, xc: Any, dt: Any, dt_col0: int, bc: Any, b_col0: int, c_col0: int, w: Any, y: Any) -> None:
        T = xc.shape[0]
        ck, n_ck = self._ck_arg(p0, T)
        S.scan(self.state, xc, self.d_inner, dt, dt.shape[1], dt_col0, S.const(w.dt_b), S.const(w.A), self.d_state, 1,
               bc, bc.shape[1], b_col0, c_col0, S.const(w.D), 1, y, ck, n_ck, self.ck)  # fmt: skip


class GPUParallelSSMLayerCache(KVBeside, GPUSSMLayerCache):
    """Falcon-H1's layer on the GPU: the mixer's state as above and the attention's K/V (``kv``) beside it, going back
    and starting over together (cache/ssm.py's ParallelSSMLayerCache), the graph's plans and snapshots too."""

    host_class = ParallelSSMLayerCache

    def to_host(self, moved: dict[int, LayerCache]) -> LayerCache:
        h = ParallelSSMLayerCache(self.spec, self.kv.to_host(moved))
        self._into_host(h)
        return h

    def load_host(self, src: Any) -> None:
        super().load_host(src)
        self.kv.load_host(src.kv)

    def graph_key(self, p: int) -> Any:
        # (one plan a layer in the graph's buffer: the state's copy; a compressed K/V would need its own)
        if not isinstance(self.kv, GPUPlainLayerCache):
            return None
        mine, theirs = super().graph_key(p), self.kv.graph_key(p)
        return None if mine is None or theirs is None else (mine, theirs)

    def graph_step(self, p: int) -> tuple[int, int, int]:
        self.kv.graph_step(p)
        return super().graph_step(p)

    def serve_plan(self, buf: Any) -> None:
        super().serve_plan(buf)
        self.kv.serve_plan(buf)

    def snapshot(self) -> tuple:
        return (super().snapshot(), self.kv.snapshot())

    def restore(self, snap: tuple) -> None:
        super().restore(snap[0])
        self.kv.restore(snap[1])


def make_gpu_ssm_cache(specs: list[LayerSpec], attention: Callable[[list[LayerSpec]], list[LayerCache]]) -> list[LayerCache]:
    """The GPU caches of a model with Mamba-2 or Mamba 1 layers: theirs from this module, the attention layers' (and
    Falcon-H1's K/V) from ``attention`` (make_cache's GPU path on their specs, without the state-space fields)."""
    from dataclasses import replace

    for s in specs:
        d_state = s.ssm[4] if s.ssm else s.mamba[2] if s.mamba else 0
        if d_state > S.MAX_STATE:
            raise ValueError(f"a state-space layer of {d_state} state values a row exceeds the GPU scan's {S.MAX_STATE}; use --device cpu")
    attn = [replace(s, ssm=(), ssm_attn=False) for s in specs if s.ssm_attn or not (s.ssm or s.mamba)]
    made = iter(attention(attn) if attn else [])
    return [GPUMambaLayerCache(s) if s.mamba else GPUParallelSSMLayerCache(s, next(made)) if s.ssm_attn
            else GPUSSMLayerCache(s) if s.ssm else next(made) for s in specs]  # fmt: skip
