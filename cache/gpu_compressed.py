"""The compressed KV cache on the GPU: cache/compressed.py's bookkeeping on the host, the data on the device.

:class:`GPUCompressedLayerCache` *is* a :class:`~.compressed.CompressedLayerCache`:
slot choice, calibration, the eviction policy's decisions and merging are
the same code on the same host metadata (positions, free counts), so the two
caches hold the same tokens in the same slots.  The policy is built with the
device array module: its per-slot scores (``score``, ``acc``, G-KV's
``hist``; [n_kv, N] float32) live on the device, where the decode kernel's
probabilities are folded into them, and it ranks and picks victims there
(see ``policies/base.py``).  The storage the kernels read lives on the device::

    k16, v16        [n_kv, F, D] / [n_kv, F, Dv]  uint16 fp16 bits
    pool i          kc, km, vc, vm (cache/pool.py layout)  uint8
    luts            [4, 256]  float32: klut0, vlut0, klut1, vlut1
    pos             [P, N]    int32
    logw            [n_kv, N] float32 (KeepKV only)

Two ways a token gets there:

* **On the device**, once a layer's key basis and scale tables are
  calibrated:

  - a policy-free layer (the steady state of ``--kv-bits N``): the host
    plans the slots (:func:`~.insert.plan_push`, from the positions alone)
    and ``ops/gpu/kvquant.cu`` moves, rotates and quantizes the tokens, the
    CPU's quantizer step for step.  A decode step (1 to 4 tokens) or a
    prefill chunk copies nothing down.
  - a decode step (1 to 4 tokens, one by one) of a layer with an eviction
    policy: the host picks only
    the fp16 window slot (the same for every head); ``kv_policy_push`` picks
    each head's pool slot over the policy's ranks
    (:meth:`~.policies.base.Policy.rank_rows`, on the device), demotes,
    merges (mean, KeepKV) or drops the victim and moves the policy's
    per-slot state and the merge log-weights with the tokens.
    Nothing comes down; the pools' positions are then the device's alone
    (``_pos_stale``) until :meth:`_pull_positions`.  Once the window and every
    pool are full, the launches are the same each step but for j, so a CUDA
    graph replays it (``graph_key``): the host writes j into its input buffer
    and the kernel and the policy's hooks (a ``Column``) read it there.
  - a prefill chunk of a calibrated layer with a policy: attention over
    every slot as batched GEMMs, its probabilities to the policy's prefill
    hook, then the tokens in one launch (``kv_policy_push_tokens``: the host
    picks each token's window slot, the kernel reads the ranks from the
    policy's score in place and starts each token's state from
    ``Policy.insert_chunk``; SnapKV's ranks pooled there as each token comes).

  The host copy of the storage goes stale (``_stale``) until :meth:`_pull`
  brings it down for a host-path step.
* **On the host** (calibration: the first chunk, and the steps before the
  key basis and scale tables are fixed): the host storage is
  written as on the CPU, every write recorded (``_push``, the tracked pools),
  and before attention only the touched slot columns go up (:meth:`_sync`).
  Per decode step the new tokens' K/V come down ([T, n_kv, D]; q too while
  the key basis learns); per eviction the candidates' positions go up and
  the victim's slot comes down (one scalar; a KeepKV merge reads two).

Attention runs on the device either way: decode (T <= 4) with
``qattention.cu`` reading the quantized slots in place; a prefill chunk of a
policy-free layer with the tiled fp16 prefill kernel over the stored rows
(dequantized once per chunk by ``qattn_gather_f16``) and its own tokens.
Chunks that feed a policy's prefill scores or KeepKV weights run the host
path (BLAS over dequantized rows, which gives the policies their scores) and
upload the output.  ALiBi's slopes (``LayerSpec.alibi_slopes``) join the logits
of every one of those paths, from the slots' stored positions, as on the host.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, NamedTuple

import numpy as np

from ..ops.gpu import attention as attn
from ..ops.gpu import kernels as K
from ..ops.gpu import kvquant
from ..ops.gpu import qattention as qa
from ..ops.gpu.arrays import device_out, is_device, positions, to_device
from .base import LayerCache, LayerSpec
from .compressed import MAX_DECODE_T, CompressedLayerCache
from .factory import make_cache
from .insert import plan_chunk, plan_policy_tokens, plan_push, ranking_scratch, spills, window_slot
from .kvconfig import KVConfig
from .policies import make_policy
from .policies.base import Column
from .pool import Pool
from .quant import CLIPS


class _TrackedPool(Pool):
    """A :class:`Pool` that records the slots each write touched and whether its tables changed."""

    def __init__(self, n_kv: int, cap: int, D: int, Dv: int, bits_k: int, bits_v: int, G: int) -> None:
        super().__init__(n_kv, cap, D, Dv, bits_k, bits_v, G)
        self.dirty: set[int] = set()  # pool-local slot ids written since the last upload
        self.lut_dirty = True

    def calibrate(self, k: np.ndarray, v: np.ndarray) -> None:
        super().calibrate(k, v)
        self.lut_dirty = True

    def write(self, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        super().write(slots, k, v)
        self.dirty.update(slots[slots >= 0].tolist())


    @classmethod
    def adopt(cls, p: Pool) -> _TrackedPool:
        """``p`` (a session file's) as a tracked pool, its tables still to send."""
        t = cls.__new__(cls)
        vars(t).update(vars(p))
        t.dirty, t.lut_dirty = set(), True
        return t


def _host_pool(p: Pool) -> Pool:
    """A tracked pool as the CPU's :class:`Pool` (the same arrays, without the upload's records)."""
    h = Pool.__new__(Pool)
    vars(h).update({n: v for n, v in vars(p).items() if n not in ("dirty", "lut_dirty")})
    return h


class _DeviceBasis(NamedTuple):
    """Device copies of a :class:`~.keybasis.KeyBasis` at one version."""

    version: int
    kin: Any  # [n_kv, D, D] keys: k @ Kin_h - mu (None: identity)
    qin: Any  # [n_kv, D, D] queries: q @ Qin_h (None: identity)
    t_k: Any  # [n_kv, D] channel scales (ones when unused): what kvquant.cu applies before its butterflies
    mu: Any  # [n_kv, D] key mean in the cache basis (zeros when unused)


def _host(a: Any, dtype: Any = np.float32) -> np.ndarray:
    """``a`` as a C-contiguous host array of ``dtype`` (a device array is copied down)."""
    if is_device(a):
        a = K.runtime().asnumpy(a)
    return np.ascontiguousarray(a, dtype=dtype)


class GPUCompressedLayerCache(CompressedLayerCache):
    """A compressed layer cache whose decode attention runs on the device; see the module docstring.

    Parameters are those of :class:`~.compressed.CompressedLayerCache`.
    """

    FAST_DECODE = False  # every host write is recorded for the device mirror (_push, the tracked pools)

    def __init__(self, spec: LayerSpec, kv: KVConfig, n_ctx: int) -> None:
        super().__init__(spec, kv, n_ctx)
        self._host_names = tuple(vars(self))  # the CPU class's fields: what a session file keeps (to_host)
        # bumped each time this cache takes over another state (load_host, copy_prefix), in graph_key: a captured CUDA
        # graph keeps the pointers of the policy's arrays and the device key basis, which a takeover replaces, and the
        # basis version restarts from the copied basis's, so without it a graph captured before could be replayed
        # after over freed or stale arrays (runtime/graphs.py keys graphs by the cache object, which stays the same)
        self._generation = 0
        n_kv = spec.n_head_kv
        # same pools, recording their writes (the parent's are still empty)
        self.pools = [_TrackedPool(n_kv, p.cap, p.D, p.Dv, p.bits_k, p.bits_v, p.G) for p in self.pools]
        self._dirty16: set[int] = set()  # fp16-area slots written since the last upload
        self.last_upload = 0  # slot columns the last upload sent (tests check it stays small)
        xp = K.runtime().xp
        self._xp = xp
        self.d_k16 = xp.array(self.k16)  # [n_kv, F, D] uint16
        self.d_v16 = xp.array(self.v16)  # [n_kv, F, Dv] uint16
        self.d_pools = [qa.DevicePool(xp.array(p.kc), xp.array(p.km), xp.array(p.vc), xp.array(p.vm), p.bits_k, p.bits_v) for p in self.pools]
        self.d_luts = xp.zeros((4, 256), np.float32)  # klut0, vlut0, klut1, vlut1
        self.d_pos = xp.array(self.pos)  # [P, N] int32
        self.d_logw = xp.array(self.logw)  # [n_kv, N] float32, or [0, 0]
        self._d_basis: _DeviceBasis | None = None  # the key basis on the device, sent when it changes
        self.d_rot_v = xp.array(self.rot_v) if self.rot_v is not None else None  # [Dv, Dv]
        self.d_sinks = xp.array(self._sinks) if self._sinks.size else None  # [n_head] gpt-oss's sink logits, or None
        self.d_alibi = xp.array(self._alibi) if self._alibi.size else None  # [n_head] ALiBi's slopes (spec.alibi_slopes), or None
        if self.policy is not None:  # the same policy, its scores on the device (the parent's has seen no token yet)
            self.policy = make_policy(self.policy.name, n_kv, self.N, xp)
        pol = self.policy
        # the kernel writes a step's probabilities here; they are added into pol.acc on the device
        self.d_acc = xp.zeros((n_kv, self.N), np.float32) if pol is not None and pol.needs_probs else None  # [n_kv, N]
        self._upload_luts()
        # steady-state decode writes the device storage itself (kvquant.cu): then the
        # host copy is stale until _pull brings it down for a host-path step
        self._stale = False
        self._pos_stale = False  # with a policy, device steps choose pool slots the host does not learn
        self._served_plan: Any = None  # while a CUDA graph is captured: the device buffer its replays' slots come from
        self._on_device = kvquant.supported(spec.head_dim, spec.head_dim_v, self.kv.group) is None
        p0, p1 = self.pools
        self.d_clips = to_device(kvquant.clip_table([CLIPS[p0.bits_k], CLIPS[p0.bits_v], CLIPS[p1.bits_k], CLIPS[p1.bits_v]]))
        self.d_qr = xp.empty((MAX_DECODE_T, spec.n_head, spec.head_dim), np.float32)  # a step's queries in the cache basis
        self.d_store = kvquant.DeviceStore(self.d_k16, self.d_v16, *self.d_pools, self.d_luts, self.d_clips, self.d_pos, self.kv.group)

    # ------------------------------------------------------------ protocol
    def update_and_attend(self, q, k, v, pos, out) -> None:
        # a step of up to MAX_DECODE_T tokens: entry is monotone in the position, so the first token's decides
        if q.shape[0] <= MAX_DECODE_T and self._on_device and self._steady_state(int(pos[0])):
            self._decode_on_device(q, k, v, pos, out)
            return
        if q.shape[0] <= MAX_DECODE_T and self._on_device and self._policy_steady(int(pos[0])):
            self._policy_decode_on_device(q, k, v, pos, out)
            return
        if q.shape[0] > MAX_DECODE_T and self.policy is None and not self.logw.size:
            self._prefill_on_device(q, k, v, _host(pos, np.int32), out)
            return
        if q.shape[0] > MAX_DECODE_T and self._on_device and self._policy_steady(int(pos[0])):
            self._policy_prefill_on_device(q, k, v, _host(pos, np.int32), out)
            return
        self._pull()  # the host path reads and writes the host storage
        kh, vh, ph = _host(k), _host(v), _host(pos, np.int32)
        if q.shape[0] <= MAX_DECODE_T:  # push on the host, then _attend_decode below on the device
            # the key basis learns from the queries on the host until it is fixed (the first spill)
            qh = _host(q) if self.basis.wants_queries and is_device(q) else q
            super().update_and_attend(qh, kh, vh, ph, out)
            return
        oh = np.empty(out.shape, np.float32) if is_device(out) else out  # the host path writes a host buffer
        super().update_and_attend(_host(q), kh, vh, ph, oh)
        if oh is not out:
            out[...] = to_device(oh)

    def reset(self) -> None:
        super().reset()
        self._pos_stale = False  # all empty, on both sides after the upload
        self._upload_meta()

    def truncate(self, n_past: int) -> None:
        self._pull()  # the held positions may be the device's alone
        super().truncate(n_past)
        self._upload_meta()

    def n_tokens(self) -> int:
        self._pull_positions()
        return super().n_tokens()

    def held_positions(self) -> np.ndarray:
        """[P, N] the position each slot holds (-1: empty), brought down where the device alone knows them."""
        self._pull_positions()
        return self.pos

    def stored_rows(self, h: int, spare: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._pull()
        return super().stored_rows(h, spare)

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """As the CPU's (:meth:`~.compressed.CompressedLayerCache.copy_prefix`): hold what ``src`` (a GPU compressed
        cache of the same layer and setting) holds at positions < ``n_past``, which is what ``src.truncate(n_past)``
        leaves ``src``, so a server's new conversation takes the system prompt another slot holds.  ``src``'s whole
        state comes down (:meth:`to_host`), is copied and truncated on the host, and is taken over as a session file's
        (:meth:`load_host`: the device storage, tables and positions written in place, the policy's scores and the
        key basis as new device arrays, and a new generation in :meth:`graph_key`).  False (nothing copied) where
        ``src`` is another kind or layout, no longer holds every position the next token sees (the device may know
        the positions alone: ``held_positions``), or merges."""
        from .plain import holds_seen

        if type(src) is not type(self) or src.spec != self.spec or src.kv != self.kv or src.N != self.N:
            return False
        if self.merger is not None or not all(holds_seen(row, self.spec, n_past) for row in src.held_positions()):
            return False
        h = src.to_host({})  # (shares src's arrays: copied whole before anything changes)
        h = copy.deepcopy(h, {id(np): np})  # (numpy, the host policy's array module, shared)
        h.truncate(n_past)  # (only positions, merge weights and empty-slot counts change: no storage)
        self.load_host(h)
        return True

    # ------------------------------------------------------------ session files (cache/hostcopy.py)
    def to_host(self, moved: dict[int, LayerCache]) -> CompressedLayerCache:
        """The CPU's :class:`~.compressed.CompressedLayerCache` holding what this one holds: the host bookkeeping and
        storage, brought down first (the device's writes are the CPU quantizer's, step for step), the policy's scores
        brought down too.  Its one-call steps' victim order, which the device's steps never kept, is sorted afresh."""
        from .hostcopy import moved_arrays

        self._pull()
        h = CompressedLayerCache.__new__(CompressedLayerCache)
        vars(h).update({n: getattr(self, n) for n in self._host_names})
        h.pools = [_host_pool(p) for p in self.pools]
        if self.policy is not None:
            h.policy = moved_arrays(self.policy, np, K.runtime().asnumpy)
        p0, p1 = self.pools
        h._ranking = ranking_scratch(self.spec.n_head_kv, p0.cap, p1.cap, self.policy.rank_pool if self.policy else 0)
        return h

    def load_host(self, src: LayerCache) -> None:
        """Hold what the CPU's ``src`` (a session file's :class:`~.compressed.CompressedLayerCache` of the same layout)
        holds: its fields taken over, then the device storage, tables, positions and the policy's scores sent whole."""
        from .hostcopy import moved_arrays, refuse

        if type(src) is not CompressedLayerCache or src.spec != self.spec or src.kv != self.kv or src.N != self.N:
            raise refuse(src, self)
        # (not the values of src's cached properties either: its _policy_state, _policy_args, _merge_args hold its host
        # arrays, which a kernel launch on a real GPU refuses; each is found afresh from the device's arrays)
        cached = {n for c in type(self).__mro__ for n, a in vars(c).items() if isinstance(a, functools.cached_property)}
        vars(self).update({n: v for n, v in vars(src).items() if n not in ("_ranking", "_sa", "_sa_key") and n not in cached})
        for n in cached:
            vars(self).pop(n, None)
        # nor what this cache kept of its own state, which a cache used before (copy_prefix) holds: the host basis's
        # dense arrays and the one-call steps' arguments, kept by the basis's version (which restarts from src's
        # basis's, so could match), and its last prompt chunk, kept for its sharers
        for n in ("_fb", "_fb_version", "_sa", "_sa_key", "shared_chunk"):
            vars(self).pop(n, None)
        self.pools = [_TrackedPool.adopt(p) for p in src.pools]
        if self.policy is not None:
            self.policy = moved_arrays(src.policy, self._xp, self._xp.asarray)
        self.d_k16[...] = to_device(self.k16, np.uint16)
        self.d_v16[...] = to_device(self.v16, np.uint16)
        for p, d in zip(self.pools, self.d_pools):
            for name in ("kc", "km", "vc", "vm"):
                if getattr(p, name).size:
                    getattr(d, name)[...] = to_device(getattr(p, name), np.uint8)
        self._upload_luts()
        self._upload_meta()
        self._dirty16, self._d_basis, self._stale, self._pos_stale = set(), None, False, False
        self._generation += 1  # (no graph captured before is replayed over the new policy and basis arrays)

    # ------------------------------------------------------------ device writes
    def _decode_on_device(self, q: Any, k: Any, v: Any, pos: np.ndarray, out: Any) -> None:
        """A steady-state decode step (up to MAX_DECODE_T tokens), stored and attended on the device: no K/V comes down.

        The host only chooses the slots (:func:`~.insert.plan_push`, from the
        positions it keeps); ``kvquant.cu`` moves and quantizes the tokens, one
        launch each, in order, then the step's queries attend as on the host
        path (all tokens in, then attention under the causal mask).
        """
        self._sync()  # host-path writes not yet mirrored (a prefill chunk's) go up before the device writes
        self._stale = True
        db = self._device_basis()
        T = q.shape[0]
        pd = positions(pos)
        for t in range(T):
            # capturing a CUDA graph, the slots come from its input buffer: each replay's host plans them (graph_step)
            slots = self._served_plan if self._served_plan is not None else self._plan(int(pos[t]))
            kvquant.decode_push(
                to_device(q[t]), to_device(k[t]), to_device(v[t]), db.t_k, db.mu, self.d_store, self.d_qr[t],
                slots, pd[t : t + 1], self.basis.rot is not None, self.rot_v is not None,
            )  # fmt: skip
        self._attend_decode(q, pos, out, qr=self.d_qr[:T])

    def _plan(self, p: int) -> tuple[int, int, int]:
        """The slots of a steady-state decode token at ``p`` (:func:`~.insert.plan_push`; the host's positions move)."""
        p0, p1 = self.pools
        self._stale = True
        return plan_push(self.pos, p, self.S, self.F, self.lo[0], p0.cap, self._free[0], self.lo[1], p1.cap, self._free[1])

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> tuple | None:
        """What a captured one-token decode step at ``p`` depends on besides its buffers, or None when it cannot
        be captured.  Replayed, with every host write already on the device: the policy-free steady state (its
        slots planned on the host from the positions alone), and a policy's once its window and pools are full
        (every step then spills and picks a victim in each pool, on the device: the launches are the same, only
        the window slot changes) where the runtime records array operations in a capture (the policy's hooks)."""
        if not self._on_device or self._dirty16 or any(pl.dirty or pl.lut_dirty for pl in self.pools):
            return None
        if self._steady_state(p):
            return ("compressed", self._generation, self.basis.version)  # a new basis is new device arrays (_device_basis)
        pol = self.policy
        if not (self._policy_steady(p) and pol.capturable and getattr(K.runtime(), "records_xp", False)):
            return None
        _, spill, took = self._window_entry(p)
        if not spill or any(t.any() for t in took):  # a head still has an empty pool slot: the host counts them
            return None
        return ("policy", self._generation, self.basis.version)

    def graph_step(self, p: int) -> tuple[int, int, int]:
        """The host's part of a replayed decode step at ``p``: its slots, for the graph's input buffer."""
        if self.policy is not None:
            return self._policy_host_step(p)[0], -1, -1
        return self._plan(p)

    def serve_plan(self, buf: Any) -> None:
        """While a step is captured: read the slots from ``buf`` (device [3] int32) instead of planning them (None: plan)."""
        self._served_plan = buf

    def snapshot(self) -> tuple:
        """What a decode step changes (the device storage and the host's positions), copied: for :meth:`restore`."""
        return [a.copy() for a in self._step_arrays()], self._stale, self._pos_stale

    def restore(self, snap: tuple) -> None:
        arrays, self._stale, self._pos_stale = snap
        for a, b in zip(self._step_arrays(), arrays):
            a[...] = b

    def _step_arrays(self) -> list[Any]:
        pools = [getattr(d, n) for d in self.d_pools for n in ("kc", "km", "vc", "vm")]
        # a policy's state: its per-slot arrays and any other it keeps on the device (KeyDiff's anchor)
        pol = [a for a in vars(self.policy).values() if is_device(a)] if self.policy is not None else []
        extra = [a for a in (self.d_logw, self.d_acc) if a is not None and a.size]
        return [self.d_k16, self.d_v16, self.d_pos, *pools, self.pos, *self._free, *pol, *extra]

    @functools.cached_property
    def _device_merge(self) -> kvquant.DeviceMerge | None:
        """The merger's parameters for ``kv_policy_push`` (None: evicted tokens are dropped); fixed, as :attr:`_merge_args`."""
        mode, thr, score = self._merge_args
        return kvquant.DeviceMerge(mode, thr, score, list(self._policy_state[1])) if mode else None

    def _policy_decode_on_device(self, q: Any, k: Any, v: Any, pos: np.ndarray, out: Any) -> None:
        """A decode step (up to MAX_DECODE_T tokens) of a layer with an eviction policy (and merging), stored and
        attended on the device: nothing comes down.  The tokens go in one by one, then the queries attend, as on the host."""
        self._sync()
        T = q.shape[0]
        pd = positions(pos)
        for t in range(T):
            self._policy_push_on_device(to_device(q[t]), to_device(k[t]), to_device(v[t]), int(pos[t]), pd[t : t + 1], qr=self.d_qr[t])
        self._attend_decode(q, pos, out, qr=self.d_qr[:T])

    def _empty_takes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per head ([n_kv] bool): whether a spill takes an empty pool-0 slot, and whether its
        demoted victim takes an empty pool-1 slot (the rest pick a victim there)."""
        took0 = self._free[0] > 0
        return took0, ~took0 & (self._free[1] > 0)

    def _victim_ranks(self, pos: Any, took0: np.ndarray, took1: np.ndarray) -> tuple[Any, Any]:
        """The policy's ranks (``Policy.rank_rows``) of pool 0 and pool 1 where some head must pick a victim there, else None.

        pos: the held positions [n_kv, N] (an array of the policy's module);
        took0, took1: :meth:`_empty_takes`.
        """
        (p0, p1), (lo0, lo1), pol = self.pools, self.lo, self.policy
        r0 = None if took0.all() else pol.rank_rows(lo0, lo0 + p0.cap, pos[:, lo0 : lo0 + p0.cap])
        r1 = None if not p1.cap or (took0 | took1).all() else pol.rank_rows(lo1, lo1 + p1.cap, pos[:, lo1 : lo1 + p1.cap])
        return r0, r1

    def _window_entry(self, p: int) -> tuple[int, bool, tuple[np.ndarray, np.ndarray] | None]:
        """Where a policy layer's next token (at ``p``) goes: (its fp16 window slot j, whether the token there
        spills, then which heads take an empty slot (:meth:`_empty_takes`), None without a spill)."""
        j, full = window_slot(self.pos, self.S, self.F)
        if not (full and self.N > self.F and spills(self.pos, j, p, self._chunk)):  # (an older chunk's is dropped: eager)
            return j, False, None
        return j, True, self._empty_takes()

    def _policy_host_step(self, p: int) -> tuple[int, bool, tuple[np.ndarray, np.ndarray] | None]:
        """The host's part of a policy token at ``p`` (:meth:`_window_entry`): its fp16 window slot j, whether the
        token there spills, which heads take an empty pool slot; the host's window positions and empty-slot counts
        follow (which pool slots, only the device knows)."""
        took = self._empty_takes()  # (before the counts move)
        j, spill = self._policy_plan(np.array([p], np.int64))[0]
        return int(j), bool(spill), took if spill else None

    def _policy_plan(self, pos: np.ndarray) -> np.ndarray:
        """The host's part of policy tokens at ``pos`` [T] in turn (:func:`~.insert.plan_policy_tokens`: the window's
        positions stay right on the host, and its empty-slot counts): [T, 2] int32 (window slot, spill)."""
        self._stale = self._pos_stale = True
        return plan_policy_tokens(self.pos, pos, self.S, self.F, self._free[0], self._free[1], self.pools[1].cap, self._chunk)

    def _policy_push_on_device(self, q: Any, k: Any, v: Any, p: int, pd: Any, t: int = -1, qr: Any = None) -> None:
        """One token into a layer with an eviction policy, on the device (``kv_policy_push``); its queries into ``qr``
        (default: ``d_qr[0]``, scratch); pd: its position, [1] int32 on the device.

        q [n_head, D], k [n_kv, D], v [n_kv, Dv] device arrays.  The host picks
        the fp16 window slot (the same for every head; it keeps the window's
        positions); the kernel picks each head's pool slot over the policy's
        ranks (:meth:`Policy.rank_rows`, computed on the device only where a
        head's pool is full), demotes, merges or drops the victim, quantizes
        the tokens and moves the policy's per-slot state with them.  The pools'
        positions are then the device's alone (``_pos_stale``); the host keeps
        only how many empty slots each head has left.  t >= 0: the token is row
        t of a prefill chunk whose scores the policy holds (``adopt``).

        While a CUDA graph is captured (``serve_plan``), the host's part ran before (graph_step, every replay):
        the token spills, every pool is full (graph_key), and the window slot is read from the graph's input
        buffer, by the kernel and by the policy's hook (a :class:`~.policies.base.Column`).
        """
        if self._served_plan is None:
            j, spill, took = self._policy_host_step(p)
            slots: Any = np.full(self.spec.n_head_kv, j, np.int64)
            where: Any = p
        else:
            j, spill, took = self._served_plan, True, self._empty_takes()
            slots, where = Column(self._served_plan[:1]), pd
        rank0, rank1 = self._victim_ranks(self.d_pos, *took) if spill else (None, None)
        db = self._device_basis()
        kvquant.policy_push(
            q, k, v, db.t_k, db.mu, self.d_store, self.d_qr[0] if qr is None else qr, j, spill, pd,
            self.basis.rot is not None, self.rot_v is not None, rank0, rank1, self._policy_state[0],
            self._device_merge, self.d_logw if self.logw.size else None, chunk=self._chunk,
        )  # fmt: skip
        self.policy.on_insert(slots, where, k)
        if t >= 0:
            self.policy.adopt(slots, t)

    def _policy_prefill_on_device(self, q: Any, k: Any, v: Any, pos: np.ndarray, out: Any) -> None:
        """A prefill chunk of a calibrated layer with a policy, on the device: nothing comes down.

        Attention over every slot (the stored ones dequantized once into fp16
        by ``qattn_gather_f16``, empty ones masked by their position -1) and the
        chunk's own tokens, as two batched GEMMs per KV head group; the
        probabilities, summed over each group's query heads, go to the policy's
        prefill hook on the device (a global layer: no sliding window).  Then
        the chunk's tokens go in: with one launch (``kv_policy_push_tokens``)
        where the policy ranks by its score, else one by one
        (:meth:`_policy_push_on_device`).
        """
        xp, s = self._xp, self.spec
        T, H, D = q.shape
        n_kv, N = s.n_head_kv, self.N
        gqa = H // n_kv
        self._sync()
        db = self._device_basis()
        qd, kd, vd = (to_device(a) for a in (q, k, v))  # [T, heads, D] original basis
        kbuf, vbuf = self._rows_f16(xp.arange(N, dtype=np.int32), kd, vd, db)
        kall = kbuf.view(np.float16).astype(np.float32)  # [n_kv, N + T, D]
        vall = vbuf.view(np.float16).astype(np.float32)
        qp = positions(pos)  # [T]
        kpos = xp.concatenate([self.d_pos, xp.broadcast_to(qp[None], (n_kv, T))], axis=1)  # [n_kv, N + T]
        qh = self._device_queries(qd).reshape(T, n_kv, gqa, D).transpose(1, 2, 0, 3)  # [n_kv, gqa, T, D]
        sc = xp.matmul(qh, kall[:, None].transpose(0, 1, 3, 2)) * np.float32(s.scale)  # [n_kv, gqa, T, N + T]
        if s.softcap > 0:
            sc = np.float32(s.softcap) * xp.tanh(sc / np.float32(s.softcap))
        if self.logw.size:  # KeepKV: a merged slot stands for several tokens
            sc = sc + xp.concatenate([self.d_logw, xp.zeros((n_kv, T), np.float32)], axis=1)[:, None, None, :]
        if self.d_alibi is not None:  # ALiBi from the slots' true positions (masked below where empty or ahead)
            dist = (kpos[:, None, None, :] - qp[None, None, :, None]).astype(np.float32)  # [n_kv, 1, T, N + T]
            sc = sc + self.d_alibi.reshape(n_kv, gqa, 1, 1) * dist
        see = (kpos[:, None, None, :] >= 0) & (kpos[:, None, None, :] <= qp[None, None, :, None])
        if s.window < 0:  # Llama 4's chunks (mixed precision's layers): from the query's chunk start on, as qa_visible
            see &= kpos[:, None, None, :] >= (qp - qp % -s.window)[None, None, :, None]
        sc = xp.where(see, sc, np.float32(-np.inf))
        mx = sc.max(axis=-1, keepdims=True)  # (finite: a query sees itself)
        e = xp.where(see, xp.exp(sc - mx), np.float32(0.0))
        den = e.sum(axis=-1, keepdims=True)
        if self.d_sinks is not None:  # a sink's share joins each denominator, as the CPU's (exponent clamped at 80)
            den = den + xp.exp(xp.minimum(self.d_sinks.reshape(n_kv, gqa, 1, 1) - mx, np.float32(80.0)))
        pr = e / den  # [n_kv, gqa, T, N + T]
        o = xp.matmul(pr, vall[:, None]).transpose(2, 0, 1, 3).reshape(T, H, s.head_dim_v)
        with device_out(out) as od:
            if self.d_rot_v is None:
                od[...] = o
            else:  # back from the rotated V basis
                xp.matmul(o, self.d_rot_v, out=od)
        pol = self.policy
        probs = pr.sum(axis=1) if pol.needs_probs else None  # [n_kv, T, N + T]
        old = np.arange(N, dtype=np.int64)  # every slot: an empty one's column is 0, its state reset when filled
        for h in range(n_kv):
            pol.prefill(h, None if probs is None else probs[h], old)
        if not pol.ranks_by_score:  # a policy whose ranks are not (pooled) scores: token by token
            for t in range(T):
                self._policy_push_on_device(qd[t], kd[t], vd[t], int(pos[t]), qp[t : t + 1], t)
            return
        # one launch: the host chooses each token's window slot (as _policy_push_on_device), the kernel the rest
        plan = self._policy_plan(np.asarray(pos, np.int64))  # [T, 2] (j, spill)
        kvquant.policy_push_tokens(
            kd, vd, db.t_k, db.mu, self.d_store, to_device(plan, np.int32), qp, pol.insert_chunk(qp, kd), self.basis.rot is not None,
            self.rot_v is not None, self._policy_state[0], self._device_merge, self.d_logw if self.logw.size else None, pol.rank_pool,
            chunk=self._chunk,
        )  # fmt: skip

    def _prefill_on_device(self, q: Any, k: Any, v: Any, pos: np.ndarray, out: Any) -> None:
        """A prefill chunk of a policy-free layer: attention on the device, and the inserts too once calibrated.

        The chunk attends to the stored slots (dequantized once into an fp16
        buffer by ``qattn_gather_f16``) and to its own tokens, through the tiled
        prefill kernel of the plain cache.  Then its tokens go in: in steady
        state on the device (``kv_push_tokens``, slots planned here), else, while
        the key basis and scale tables are still to be calibrated from the
        first window, on the host, for which the chunk's K/V come down.
        """
        xp, s = self._xp, self.spec
        T = q.shape[0]
        steady = self._on_device and self._steady_state(int(pos[0]))
        if not steady:
            self._pull()
            if self.basis.wants_queries:  # the key basis learns from the queries until the first spill
                self.basis.observe(_host(q))
        self._sync()
        db = self._device_basis()
        kd, vd = to_device(k), to_device(v)  # [T, n_kv, D] original basis
        ids = np.flatnonzero(self.pos[0] >= 0).astype(np.int32)
        n = len(ids)
        kbuf, vbuf = self._rows_f16(to_device(ids, np.int32), kd, vd, db)
        kpos = to_device(np.concatenate([self.pos[0, ids], pos]), np.int32)
        with device_out(out) as od:
            o = od if self.d_rot_v is None else xp.empty((T, s.n_head, s.head_dim_v), np.float32)
            attn.attend_prefill(self._device_queries(q), kbuf, vbuf, kpos, n + T, positions(pos), s.window, s.scale, s.softcap, o,
                                alibi=self.d_alibi, sinks=self.d_sinks)  # fmt: skip
            if self.d_rot_v is not None:  # back from the rotated V basis
                xp.matmul(o, self.d_rot_v, out=od)
        if self.keep_chunk:  # what the layers sharing this one's K/V attend over (cache/gpu_shared_compressed.py)
            self.shared_chunk = (pos.copy(), db, kbuf, vbuf, kpos, n + T)
        if not steady:
            kh, vh = _host(k), self._rot(_host(v), self.rot_v)  # values in the cache basis, as the CPU's
            for t in range(T):
                if self._on_device and self._steady_state(int(pos[t])):  # calibrated by this chunk's first spill
                    self._push_on_device(kd[t:], vd[t:], pos[t:], to_device(pos[t:], np.int32))
                    return
                self._push(kh[t], vh[t], int(pos[t]))
            return
        self._push_on_device(kd, vd, pos, positions(pos))

    def _push_on_device(self, k: Any, v: Any, pos: np.ndarray, pd: Any) -> None:
        """Tokens of a calibrated policy-free layer into the device storage (``kv_push_tokens``), slots planned here.
        k [T, n_kv, D], v [T, n_kv, Dv] device, the model's basis; pos [T] host, pd the same on the device."""
        self._sync()  # host writes not yet mirrored (the calibration's) go up first
        db = self._device_basis()
        pl0, pl1 = self.pools
        slots = plan_chunk(self.pos, pos, self.S, self.F, self.lo[0], pl0.cap, self._free[0], self.lo[1], pl1.cap, self._free[1])
        self._stale = True
        kvquant.push_tokens(
            k, v, db.t_k, db.mu, self.d_store, to_device(slots, np.int32), pd, self.basis.rot is not None, self.rot_v is not None,
        )  # fmt: skip

    def _rows_f16(self, ids: Any, k: Any, v: Any, db: _DeviceBasis) -> tuple[Any, Any]:
        """The stored slots ``ids`` ([n] int32, device) dequantized once, then a chunk's own tokens
        as the fp16 window will hold them: ([n_kv, n + T, D], [n_kv, n + T, Dv]) uint16 fp16 bits.

        k [T, n_kv, D], v [T, n_kv, Dv]: the chunk's K/V in the model's basis (device).
        """
        xp, s = self._xp, self.spec
        n, T, n_kv = ids.shape[0], k.shape[0], s.n_head_kv
        kbuf = xp.empty((n_kv, n + T, s.head_dim), np.uint16)
        vbuf = xp.empty((n_kv, n + T, s.head_dim_v), np.uint16)
        if n:
            p0, p1 = self.d_pools
            qa.gather_f16(self.d_k16, p0, p1, self.d_luts, self.kv.group, ids, kbuf)
            qa.gather_f16(self.d_v16, p0, p1, self.d_luts, self.kv.group, ids, vbuf, values=True)
        kc = self._per_head(k, db.kin) - db.mu  # the cache basis, as KeyBasis.keys on the host
        vr = v if self.d_rot_v is None else xp.matmul(v, self.d_rot_v)
        kbuf[:, n:] = kc.astype(np.float16).view(np.uint16).transpose(1, 0, 2)
        vbuf[:, n:] = vr.astype(np.float16).view(np.uint16).transpose(1, 0, 2)
        return kbuf, vbuf

    def _device_basis(self) -> _DeviceBasis:
        """The key basis (keybasis.py) on the device, sent again only when its version changes."""
        b = self.basis
        if self._d_basis is None or self._d_basis.version != b.version:
            t_k, mu = self._fast_basis()
            up = lambda m: None if m is None else to_device(m)  # noqa: E731
            self._d_basis = _DeviceBasis(b.version, up(b.kin), up(b.qin), to_device(t_k), to_device(mu))
        return self._d_basis

    def _per_head(self, x: Any, m: Any) -> Any:
        """x [T, H, D] (heads grouped by KV head) times m[h] [D, D] per KV head, on the device; x itself when m is None."""
        if m is None:
            return x
        xp = self._xp
        T, H, D = x.shape
        n_kv = m.shape[0]
        y = xp.matmul(x.reshape(T, n_kv, H // n_kv, D).transpose(1, 0, 2, 3), m[:, None])
        return xp.ascontiguousarray(y.transpose(1, 0, 2, 3).reshape(T, H, D))

    def _pull_positions(self) -> None:
        """Bring the held positions (and merge weights) down where the device alone knows them (after a policy's device steps)."""
        if self._pos_stale:
            self.pos[...] = K.runtime().asnumpy(self.d_pos)
            if self.logw.size:
                self.logw[...] = K.runtime().asnumpy(self.d_logw)
            self._pos_stale = False

    def _pull(self) -> None:
        """Bring the device storage down after device writes (before a host-path step: a prefill chunk, a policy)."""
        self._pull_positions()
        if not self._stale:
            return
        rt = K.runtime()
        self.k16[...] = rt.asnumpy(self.d_k16)
        self.v16[...] = rt.asnumpy(self.d_v16)
        for p, d in zip(self.pools, self.d_pools):
            for name in ("kc", "km", "vc", "vm"):
                getattr(p, name)[...] = rt.asnumpy(getattr(d, name))
        self._stale = False

    # ------------------------------------------------------------ mirror
    def _push(self, k: np.ndarray, v: np.ndarray, p: int, t: int = -1) -> None:
        super()._push(k, v, p, t)
        # the token went to the fp16 slot now holding position p (positions are
        # unique), or straight into a pool (recorded by the pool)
        self._dirty16.update(np.flatnonzero(self.pos[0, : self.F] == p).tolist())

    def _fp16_rewritten(self, slots: np.ndarray) -> None:
        self._dirty16.update(slots.tolist())

    def _upload_luts(self) -> None:
        for i, p in enumerate(self.pools):
            if p.lut_dirty:
                self.d_luts[2 * i] = to_device(p.klut)
                self.d_luts[2 * i + 1] = to_device(p.vlut)
                p.lut_dirty = False

    def _upload_meta(self) -> None:
        """Re-send positions and merge weights whole (after reset / truncate: [P, N] + [n_kv, N])."""
        self.d_pos[...] = to_device(self.pos, np.int32)
        if self.logw.size:
            self.d_logw[...] = to_device(self.logw)

    def _sync(self) -> None:
        """Copy the slots written since the last call to the device mirror."""
        xp = self._xp
        cols: list[int] = []
        if self._dirty16:
            f = np.array(sorted(self._dirty16), np.int64)
            fd = xp.asarray(f)
            self.d_k16[:, fd] = to_device(self.k16[:, f], np.uint16)
            self.d_v16[:, fd] = to_device(self.v16[:, f], np.uint16)
            cols.extend(f.tolist())
            self._dirty16.clear()
        for i, (p, d) in enumerate(zip(self.pools, self.d_pools)):
            if not p.dirty:
                continue
            c = np.array(sorted(p.dirty), np.int64)
            cd = xp.asarray(c)
            for host, dev in ((p.kc, d.kc), (p.km, d.km), (p.vc, d.vc), (p.vm, d.vm)):
                if host.size:
                    dev[:, cd] = to_device(host[:, c], np.uint8)
            cols.extend((c + self.lo[i]).tolist())
            p.dirty.clear()
        self._upload_luts()
        if cols:
            j = np.array(cols, np.int64)
            jd = xp.asarray(j)
            self.d_pos[:, jd] = to_device(self.pos[:, j], np.int32)
            if self.logw.size:
                self.d_logw[:, jd] = to_device(self.logw[:, j])
        self.last_upload = len(cols)

    def mirror_mismatches(self) -> list[str]:
        """Names of device arrays that differ from the host storage (after a sync; for tests)."""
        self._pull()
        self._sync()
        rt = K.runtime()
        pairs = [("k16", self.k16, self.d_k16), ("v16", self.v16, self.d_v16), ("pos", self.pos, self.d_pos), ("logw", self.logw, self.d_logw)]
        for i, (p, d) in enumerate(zip(self.pools, self.d_pools)):
            pairs += [(f"pool{i}.{n}", getattr(p, n), getattr(d, n)) for n in ("kc", "km", "vc", "vm")]
            pairs += [(f"pool{i}.klut", p.klut, self.d_luts[2 * i]), (f"pool{i}.vlut", p.vlut, self.d_luts[2 * i + 1])]
        return [n for n, h, d in pairs if not np.array_equal(h, rt.asnumpy(d))]

    # ------------------------------------------------------------ attention
    def _device_queries(self, q: Any) -> Any:
        """q [T, n_head, D] moved into the cache's key basis, on the device (per KV head: q @ Qin_h)."""
        return self._per_head(to_device(q), self._device_basis().qin)

    def _attend_decode(self, q: Any, pos: np.ndarray, out: Any, qr: Any = None) -> None:
        """Decode attention of T <= 4 queries on the device mirror (the pushes are done).

        qr: the queries already in the cache basis (device), or None to move ``q`` there.
        """
        self._sync()
        xp = self._xp
        s, T = self.spec, q.shape[0]
        qd = self._device_queries(q) if qr is None else qr
        pol = self.policy
        probs = pol is not None and pol.needs_probs
        if probs:
            pol.before_step()
        p0, p1 = self.d_pools
        with device_out(out) as od:
            o = od if self.d_rot_v is None else xp.empty((T, s.n_head, s.head_dim_v), np.float32)
            qa.attend_decode_q(
                qd, positions(pos), self.d_k16, self.d_v16, p0, p1, self.d_luts, self.kv.group,
                self.d_pos, self.d_logw, s.window, s.scale, s.softcap, o, self.d_acc if probs else None, self.d_sinks,
                alibi=self.d_alibi,
            )  # fmt: skip
            if self.d_rot_v is not None:  # back from the rotated V basis (H is its own inverse), as a kernel a graph keeps
                kvquant.fwht_rows(o, od)
        if probs:
            pol.acc += self.d_acc  # on the device: the policy's state never comes down
            pol.after_step()


def make_gpu_compressed_cache(specs: list[LayerSpec], n_ctx: int, n_batch: int, kv: KVConfig | None = None) -> list[LayerCache]:
    """:func:`kvrun.cache.factory.make_cache` on the device: plain or compressed as ``kv`` says."""
    return make_cache(specs, n_ctx, n_batch, kv, device="gpu")
