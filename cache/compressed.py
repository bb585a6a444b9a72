"""The compressed cache: fp16 sinks and residual window, quantized pools, eviction, merging.

Per layer and KV head a fixed number of slots (the budget) is allocated once;
memory never grows.  Slot numbering ``j in [0, N)``::

    [0, S)            attention sinks, fp16, never evicted (IntactKV,
                      https://arxiv.org/abs/2403.01241, keeps them lossless)
    [S, F)            residual window: the newest R tokens in fp16 (KIVI)
    [F, F + C0)       pool 0: quantized (the HI width when ``mixed``)
    [F + C0, N)       pool 1: the LO width of a mixed cache (C1 = 0 otherwise)

Per-slot metadata::

    pos    [P, N]     int32   absolute position, -1 = empty; P = 1 when every
                              KV head keeps the same tokens (no policy), else n_kv
    score  [n_kv, N]  float32 the policy's importance (policy-owned)
    logw   [n_kv, N]  float32 log merge weight (KeepKV votes), only with merge=keepkv

A token enters the residual window; when the window is full its oldest token
is quantized into pool 0.  When pool 0 is full the policy names a victim:
with ``mixed`` it is demoted (re-quantized) into pool 1, otherwise — or when
pool 1 is full too — it is evicted: dropped, or merged into its most similar
kept token (:mod:`.merge`).  Attention reads all areas in place
(:func:`kvrun.ops.cpu.qattention.attend_decode_q`).

ALiBi (in bloom, mpt, jais, refact and baichuan 13B) is a bias ``slope_h * (pos_k - pos_q)`` the
kernels add to each logit from the slot's stored position (llama.cpp's soft_max_ext max_bias
with its ``-|i - j|`` mask), so an evicted cache's gaps keep their true distances.  The CPU's
models hand the layer its ALiBi as one more query and key channel (``LayerSpec.position_channel``,
models/bloom.py: the query's ``slope_h / scale``, the key's position): the cache takes the slopes
from the queries' channel and stores the keys without it, for a position quantized with the keys
would blur the bias; the GPU's specs carry the slopes (``LayerSpec.alibi_slopes``).

Design: keys are quantized per token (after a Hadamard rotation), not per
channel as KIVI does.  Per-channel groups span G tokens, so evicting one
token leaves a hole that only page compaction (re-quantization) can fill;
per-token groups make every slot independent.  Measured on SmolLM2-135M,
GPL-3 text, ctx 1024 (second half scored), 2-bit, group 32, 128-token fp16
window, ΔPPL / KL vs fp16: KIVI per-channel keys +21% / 0.196; per-token
keys +199% / 1.12; per-channel pre-scaling then per-token +11211%;
rotated K per-token +27% / 0.26; rotated K and V +22% / 0.24; rotated K and V
with MSE-optimal clipping +3.7% / 0.081.  At 4 bits per-channel and rotated
per-token are equal (KL 0.003).  So: rotation + clipping, per token.  The
same study fixed the defaults: fp16 sinks help (+4.3% -> +3.1% at a 64-token
window), log-coded 8-bit scales cost nothing (KL 0.072 -> 0.069), group 64
hurts (+5.5%), a 32-token window hurts (+7.3%).

Later, keys got their own basis (:mod:`.keybasis`): centering and
query-aware channel smoothing, both exact for attention.  2-bit K and V, GPL-3,
all 14 windows of 512 decoded token by token, vs fp16: SmolLM2 +8.6% ->
+6.2% (and +5.1% with the 80-token window now default); Gemma 3, whose keys
carry a large mean, +64% uncentered (first 2 windows) -> +10.7% centered ->
+4.9% smoothed too (all 14 windows: +5.8%); the quantizer's least-squares refit cut the
2-bit MSE of Gaussian rows by another 5%.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Any, Iterator

import numpy as np

from ..ops.cpu.attention import attend_group, scratch
from ..ops.cpu.f16 import through_f16
from ..ops.cpu.parallel import split_threads
from ..ops.cpu.qattention import attend_decode_q, decode_half_slots
from ..ops.cpu.qkeys import INT_KEYS
from .base import LayerCache, LayerSpec, copy_state
from .kvconfig import KVConfig
from .keybasis import KeyBasis
from .merge import make_merger
from .policies import make_policy
from .insert import decode_step, fwht_copy, fwht_rows, policy_decode_step, policy_push, policy_push_tokens, push_tokens, ranking_scratch
from .plain import holds_seen
from .pool import Pool
from .quant import CLIPS, TABLE_BYTES, hadamard

_EMPTY2 = np.zeros((0, 0), np.float32)
MAX_DECODE_T = 4  # chunks up to this size use the decode kernel
#: scratch a decode step writes before it reads (attention scores, rotated queries, outputs): a copied cache keeps its own
SCRATCH = ("_s", "_qr", "_or")
#: the one-call policy steps' tuples of a policy's per-slot arrays and of the arrays a merge adds up in, padded to
#: these lengths (the most any policy has: GKV's three and two); a policy with more compiles its own variant
POLICY_STATE_SLOTS, POLICY_FOLD_SLOTS = 3, 2
_POS0 = np.zeros(1, np.int32)  # (position 0: attend_alone's)


def _no_attention(*args: Any, **kw: Any) -> None:
    """The attention's call alone, left out within :meth:`CompressedLayerCache.steps_apart`."""


class CompressedLayerCache(LayerCache):
    """One layer's compressed K/V store; see the module docstring for the layout.

    Parameters
    ----------
    spec : LayerSpec
        Head counts and sizes, sliding window, scale, softcap.
    kv : KVConfig
        The compression spec (already validated).
    n_ctx : int
        Context size: the budget of a global layer when nothing is evicted.
    """

    #: decode scores 2- and 4-bit keys with int8 queries on VNNI hosts (``kvrun.ops.cpu.qkeys``);
    #: False: through the float tiles (a comparison with a GPU, whose kernels keep float queries)
    int_keys: bool = INT_KEYS

    def __init__(self, spec: LayerSpec, kv: KVConfig, n_ctx: int) -> None:
        kv = kv.resolved()
        self.spec, self.kv = spec, kv
        #: the keys' stored width: the spec's less ALiBi's position channel (see the module docstring)
        self.key_dim = spec.head_dim - int(spec.position_channel)
        #: ALiBi's slope per query head ([n_head] float32; with the position channel, taken from each step's queries), or empty
        self._alibi = np.zeros(spec.n_head, np.float32) if spec.position_channel else np.asarray(spec.alibi_slopes, np.float32)
        n_kv, D, Dv, G = spec.n_head_kv, self.key_dim, spec.head_dim_v, kv.group
        if min(kv.widths) < 16 and (D % G or Dv % G):
            raise ValueError(f"group={G} does not divide the head sizes {D} and {Dv}; use group={math.gcd(D, Dv, 32)}")
        local = spec.window > 0
        if local:  # sliding-window layer: a ring of the window, oldest out
            budget = min(n_ctx, spec.window + MAX_DECODE_T)
            S, policy, merge, mixed = 0, None, None, None
        else:
            budget = kv.budget_tokens(n_ctx)
            S, policy, merge, mixed = min(kv.sinks, budget), kv.policy, kv.merge, kv.mixed
            if spec.window < 0:  # Llama 4's chunks (window -c): no query sees an older chunk, so the sinks, one chunk and
                # a decode step's tokens are all a layer needs (llama.cpp's iSWA sizing); an older chunk's tokens leave
                # first, by age without a policy (the pools' oldest, as a window layer's ring), else by the chunk rule
                budget = min(budget, S - spec.window + MAX_DECODE_T)
        if mixed and policy is None:
            policy = "h2o"  # importance for precision only; nothing is evicted
        R = min(kv.residual_tokens, budget - S)
        Cq = budget - S - R
        bk, bv = kv.widths
        if mixed:
            hi = kv.mixed_widths[0]
            C0 = min(Cq, max(1, int(round(kv.hi_frac * Cq))))
            widths = [(max(hi, bk), max(hi, bv)), (bk, bv)]
            caps = [C0, Cq - C0]
        elif (C0 := kv.warm_slots(Cq, local)) > 0:  # warm tier: the newest quantized tokens keep wider keys
            widths = [(kv.warm_bits, bv), (bk, bv)]
            caps = [C0, Cq - C0]
        else:
            widths, caps = [(bk, bv), (bk, bv)], [Cq, 0]
        self.S, self.R, self.F = S, R, S + R
        self.N = self.F + sum(caps)
        self.pools = [Pool(n_kv, c, D, Dv, wk, wv, G) for c, (wk, wv) in zip(caps, widths)]
        self.lo = [self.F, self.F + caps[0]]  # first slot of each pool
        self.k16 = np.zeros((n_kv, self.F, D), np.uint16)  # [n_kv, F, D] float16 bits
        self.v16 = np.zeros((n_kv, self.F, Dv), np.uint16)  # [n_kv, F, Dv]
        self.P = n_kv if policy is not None else 1
        self.pos = np.full((self.P, self.N), -1, np.int32)  # [P, N]
        self.policy = make_policy(policy, n_kv, self.N) if policy else None
        # Llama 4's chunks (window -c) under a policy: a token of an older chunk than the newest token's is never attended
        # again, so it is the first to go, whatever its score (insert.chunk_floor); 0: not chunked, or nothing is ranked
        self._chunk = -spec.window if spec.window < 0 and policy else 0
        self._floor = 0  # (the host path's: the newest token's chunk start, set by _push)
        self.merger = make_merger(merge) if merge else None
        self.logw = np.zeros((n_kv, self.N), np.float32) if merge == "keepkv" else _EMPTY2  # [n_kv, N]
        # the basis keys are stored in (rotation, centering, query-aware
        # smoothing; exact for attention, see keybasis.py), fixed at the first spill
        calib = self.R > 0 and self.N > self.F
        self.basis = KeyBasis(
            n_kv, D, hadamard(D) if kv.rotated else None,
            # (centering shifts every key's logit by q.mu: softmax does not see it, unless soft-capping
            # bends the logits or a sink logit, which no shift moves, joins them)
            center=kv.centered and spec.softcap <= 0 and not spec.sink_logits and calib, smooth=kv.smoothed and calib,
        )  # fmt: skip
        self.rot_v = hadamard(Dv) if kv.rotated else None  # [Dv, Dv]
        gqa = spec.n_head // n_kv
        self._sinks = np.asarray(spec.sink_logits, np.float32)  # [n_head] or empty (gpt-oss)
        # decode scratch, allocated once
        self._s = np.zeros((n_kv, gqa, self.N), np.float32)
        self._qr = np.zeros((MAX_DECODE_T, spec.n_head, D), np.float32)
        self._or = np.zeros((MAX_DECODE_T, spec.n_head, Dv), np.float32)
        self._free = [np.full(self.P, c, np.int64) for c in caps]  # free slots per pool and pos row
        self._dummy = np.zeros((n_kv, 1), np.float32)  # stands in for an absent array in policy_push
        # where the one-call steps rank victims, kept between calls (SnapKV's position order is repaired, not re-sorted)
        self._ranking = ranking_scratch(n_kv, caps[0], caps[1], self.policy.rank_pool if self.policy else 0)

    # ------------------------------------------------------------ protocol
    FAST_DECODE = True  # steady-state decode steps in one Numba call (the GPU mirror tracks each write instead)
    #: pool widths the one-call steps (and the GPU mirror's kvquant.cu) store.  16: lossless pools behind the
    #: window, as an eviction policy alone (``--kv-budget``) makes; until stop 33 their tokens went in through Python
    STORED_WIDTHS = (16, 8, 4, 3, 2)
    #: layers read this one's K/V (cache/shared_compressed.py): each prefill chunk leaves ``shared_chunk``, (positions,
    #: the query basis then, per head (key positions, keys, values, merge log-weights or None) it attended over), for them
    #: to attend over alike
    keep_chunk: bool = False
    shared_chunk: tuple | None = None

    def update_and_attend(self, q, k, v, pos, out) -> None:
        if q.shape[2] > self.key_dim:  # ALiBi's position channel: the slopes out of it, then Q and K without it
            q, k = self._without_position_channel(q, k)
        T = q.shape[0]
        if self.basis.wants_queries:  # until the first spill fixes the key basis
            self.basis.observe(q)
        # a step of up to MAX_DECODE_T tokens: entry is monotone in the position, so the first token's decides
        if T <= MAX_DECODE_T and self._fast_decode_ready(int(pos[0]), T):
            self._decode_fast(q, k, v, pos, out)
            return
        if T <= MAX_DECODE_T and self._ranked_steady(int(pos[0])):
            self._policy_decode_fast(q, k, v, pos, out)
            return
        k = np.ascontiguousarray(k, np.float32)  # [T, n_kv, D] original basis (_push stores it)
        vr = self._rot(v, self.rot_v)  # [T, n_kv, Dv] cache basis
        if T <= MAX_DECODE_T:
            for t in range(T):
                self._push(k[t], vr[t], int(pos[t]))
            self._attend_decode(q, pos, out)
        else:
            self._prefill(q, k, vr, pos, out)

    def _without_position_channel(self, q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Q and K of a ``position_channel`` layer without their last channel, the slopes taken from the queries'
        (``slope_h / scale``, models/bloom.py; the keys' is the position the cache keeps anyway)."""
        D = self.key_dim
        np.multiply(q[0, :, D], np.float32(self.spec.scale), out=self._alibi)
        return np.ascontiguousarray(q[..., :D], np.float32), np.ascontiguousarray(k[..., :D], np.float32)

    def n_tokens(self) -> int:
        return int((self.pos[0] >= 0).sum())

    def nbytes(self) -> int:
        n = self.k16.nbytes + self.v16.nbytes + self.pos.nbytes + self.logw.nbytes
        n += sum(p.nbytes() for p in self.pools)
        if self.policy is not None:
            n += sum(a.nbytes for a in self.policy.per_slot())
        return n

    def footprint(self, n_tokens: int) -> tuple[int, int]:
        """(bytes, values) this layer holds after ``n_tokens`` tokens (for bits per value)."""
        spec = self.spec
        n = min(n_tokens, self.N)
        n_kv = spec.n_head_kv
        f = min(n, self.F)
        b = f * n_kv * (self.key_dim + spec.head_dim_v) * 2
        rest = n - f
        for p in self.pools:
            c = min(rest, p.cap)
            b += c * n_kv * p.slot_bytes() + (2 * TABLE_BYTES if p.cap else 0)
            rest -= c
        per_slot = self.P * 4 + (self.logw.shape[0] * 4)
        if self.policy is not None:
            per_slot += n_kv * 4 * len(self.policy.per_slot())
        b += n * per_slot
        return b, n * n_kv * (self.key_dim + spec.head_dim_v)

    def bits_per_value(self, n_tokens: int) -> float:
        """Bits of storage and metadata per cached K or V value after ``n_tokens`` tokens."""
        b, v = self.footprint(n_tokens)
        return 8.0 * b / max(v, 1)

    def reset(self) -> None:
        self.pos[:] = -1
        for i, p in enumerate(self.pools):
            self._free[i][:] = p.cap
        if self.logw.size:
            self.logw[:] = 0.0

    def truncate(self, n_past: int) -> None:
        drop = self.pos >= n_past
        self.pos[drop] = -1
        if self.logw.size:
            self.logw[np.broadcast_to(drop, self.logw.shape) if self.P == 1 else drop] = 0.0
        for i, p in enumerate(self.pools):
            lo = self.lo[i]
            self._free[i][:] = (self.pos[:, lo : lo + p.cap] < 0).sum(axis=1)

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """Hold what ``src`` (a compressed cache of the same layer and setting) holds at positions < ``n_past``: its
        whole state (fp16 sinks and window, pools and their tables, key basis, the policy's scores) copied, then
        truncated there, so this cache is what ``src.truncate(n_past)`` leaves ``src`` (a server's new conversation
        taking the system prompt another slot holds, runtime/slots.py).  False (nothing copied) where ``src`` is
        another kind or layout, where it no longer holds every position the next token sees (an eviction took one,
        or a window's ring moved past it: evaluating the prefix again keeps more of it), or where it merges (a later
        token, of another conversation, may have been folded into a prefix token's K/V)."""
        if type(src) is not type(self) or src.kv != self.kv or src.N != self.N or self.merger is not None:
            return False
        if not all(holds_seen(row, self.spec, n_past) for row in src.pos) or not copy_state(self, src, n_past, keep=SCRATCH):
            return False
        self.shared_chunk = None  # (src's last prompt chunk, kept for its sharers: not this sequence's)
        return True

    # ------------------------------------------------------------ compile paths
    # A cold first run compiles a decode step's store and its attention in two processes at once (runtime/prewarm.py):
    # these drive each apart on a throwaway layer, so that each process compiles its half with the real types.
    @property
    def n_sinks(self) -> int:
        """Attention sinks kept: the first tokens, each stored and then attended by a call of the attention alone
        (:meth:`attend_alone`), not by the one-call step."""
        return self.S

    @property
    def first_spill(self) -> int:
        """The position whose step spills a token out of the full fp16 window into the pools for the first time
        (the key basis's calibration, the pools' quantizer): steps from position 0 reach it after ``first_spill + 1``."""
        return self.F

    def attend_alone(self, q: np.ndarray, out: np.ndarray) -> None:
        """A decode step's attention, called alone for a one-token query at position 0 (as a sink's step calls it once
        the sink is stored): the attention kernel compiles without the store."""
        self._attend_decode(q, _POS0, out)

    @contextlib.contextmanager
    def steps_apart(self, attention: bool = True, one_call: bool = True) -> Iterator[None]:
        """Within, decode steps leave out the attention's calls alone (a sink's step stores only) unless
        ``attention``, and store through the Python path, never the one-call step, unless ``one_call``; nested
        settings add up.  The layer is emptied on the way out."""
        saved = {name: vars(self)[name] for name in ("_attend_decode", "FAST_DECODE") if name in vars(self)}
        if not attention:
            self._attend_decode = _no_attention
        if not one_call:
            self.FAST_DECODE = False
        try:
            yield
        finally:
            vars(self).pop("_attend_decode", None)
            vars(self).pop("FAST_DECODE", None)
            vars(self).update(saved)
            self.reset()

    # ------------------------------------------------------------ insertion
    @staticmethod
    def _rot(x: np.ndarray, h: np.ndarray | None) -> np.ndarray:
        """Values [T, n_kv, Dv] into the cache basis: ``x @ h`` for the Hadamard ``h``, by the butterflies
        the one-call steps use (so a value's fp16 row does not depend on the path that stored it)."""
        x = np.ascontiguousarray(x, np.float32)
        return x if h is None else fwht_copy(x)

    def _push(self, k: np.ndarray, v: np.ndarray, p: int, t: int = -1) -> None:
        """Store one token (all heads).  k: [n_kv, D] original basis; v: [n_kv, Dv] cache basis.

        t >= 0: the token is row t of a prefill chunk whose scores the policy holds.
        """
        n_kv = k.shape[0]
        self._floor = p - p % self._chunk if self._chunk else 0
        if p < self.S:
            j = p
        elif self.R > 0:
            row = self.pos[0, self.S : self.F]
            if row.min() < 0:
                j = self.S + int(np.argmax(row < 0))
            else:  # the oldest window token moves to the pools (or out, when there are none; or an older chunk's: dropped)
                j = self.S + int(np.argmin(row))
                if self.N > self.F and self.pos[0, j] >= self._floor:
                    self._spill(j)
        else:  # no fp16 window: straight into the pools
            self._to_pools(self.basis.keys(k), v, p, src=-1)
            return
        kc = self.basis.keys(k)  # (after the spill above: it may have fixed the basis)
        self.k16[:, j] = kc.astype(np.float16).view(np.uint16)
        self.v16[:, j] = v.astype(np.float16).view(np.uint16)
        self.pos[:, j] = p
        if self.logw.size:
            self.logw[:, j] = 0.0
        if self.policy is not None:
            slots = np.full(n_kv, j, np.int64)
            self.policy.on_insert(slots, p, k)
            if t >= 0:
                self.policy.adopt(slots, t)

    def _spill(self, j: int) -> None:
        """Quantize the token in fp16 slot ``j`` into the pools."""
        if not self.pools[0].calibrated:  # key basis and scale tables from the whole window
            live = self.pos[0, : self.F] >= 0
            window = live.copy()
            window[: self.S] = False
            if not self.basis.calibrated:
                idx = np.flatnonzero(live)
                korig = self.basis.to_original(self.k16[:, idx].view(np.float16).astype(np.float32))  # [n_kv, n, D]
                self.basis.calibrate(korig[:, window[idx]])
                kc = self.basis.keys(korig.transpose(1, 0, 2)).transpose(1, 0, 2)  # the stored keys, re-expressed
                self.k16[:, idx] = kc.astype(np.float16).view(np.uint16)
                self._fp16_rewritten(idx)
            kw = self.k16[:, window].view(np.float16).astype(np.float32)
            vw = self.v16[:, window].view(np.float16).astype(np.float32)
            for pl in self.pools:
                pl.calibrate(kw, vw)
        k = self.k16[:, j].view(np.float16).astype(np.float32)  # [n_kv, D]
        v = self.v16[:, j].view(np.float16).astype(np.float32)
        self._to_pools(k, v, int(self.pos[0, j]), src=j)

    def _fp16_rewritten(self, slots: np.ndarray) -> None:
        """Hook: fp16-area ``slots`` were rewritten in place (the GPU mirror re-sends them)."""

    def _to_pools(self, k: np.ndarray, v: np.ndarray, p: int, src: int) -> None:
        if self.policy is None:  # every head keeps the same tokens: one slot for all
            j = self._take_shared(0)
            if self.pos[0, j] >= 0 and self.pools[1].cap > 0:  # warm tier full: its oldest token cools
                self._cool(j)
            self.pools[0].write(np.full(k.shape[0], j - self.lo[0], np.int64), k, v)
            self.pos[0, j] = p
            if self.logw.size and src >= 0:
                self.logw[:, j] = self.logw[:, src]
            return
        for h in range(k.shape[0]):
            self._place(0, h, k[h], v[h], p, src)

    def _cool(self, j: int) -> None:
        """Move the token in warm slot ``j`` (pool 0) to the cold pool, re-quantized at its widths."""
        p0, p1 = self.pools
        n_kv = self.spec.n_head_kv
        kd = np.empty((n_kv, p0.D), np.float32)
        vd = np.empty((n_kv, p0.Dv), np.float32)
        for h in range(n_kv):
            kd[h], vd[h] = p0.read_row(h, j - self.lo[0])
        c = self._take_shared(1)
        p1.write(np.full(n_kv, c - self.lo[1], np.int64), kd, vd)
        self.pos[0, c] = self.pos[0, j]
        if self.logw.size:
            self.logw[:, c] = self.logw[:, j]

    def _take_shared(self, i: int) -> int:
        """A slot of pool ``i`` for all heads (pos row shared): a free one, else the oldest."""
        lo, cap = self.lo[i], self.pools[i].cap
        row = self.pos[0, lo : lo + cap]
        if self._free[i][0] > 0:
            self._free[i][0] -= 1
            return lo + int(np.argmax(row < 0))
        return lo + int(np.argmin(row))

    def _place(self, i: int, h: int, k: np.ndarray, v: np.ndarray, p: int, src: int) -> None:
        """Put one head's token into pool ``i``, making room by demotion or eviction."""
        pool, lo = self.pools[i], self.lo[i]
        row = self.pos[h, lo : lo + pool.cap]
        if self._free[i][h] > 0:
            self._free[i][h] -= 1
            j = lo + int(np.argmax(row < 0))
        else:
            j = lo + int(np.argmin(row)) if self._floor else -1  # an older chunk's token (the oldest) goes first, never merged,
            old = j >= 0 and self.pos[h, j] < self._floor  # nor demoted but into an empty slot (insert._policy_token)
            j = j if old else self.policy.victim(h, lo, lo + pool.cap, row)
            k_old, v_old = pool.read_row(h, j - lo)
            if i == 0 and self.pools[1].cap > 0 and not (old and self._free[1][h] == 0):  # demote to the low-precision pool
                self._place(1, h, k_old, v_old, int(self.pos[h, j]), j)
            elif self.merger is not None and not old:
                self.merger.evict(self, i, h, j, k_old, v_old)
        pool.write_one(h, j - lo, k, v)
        self.pos[h, j] = p
        if src >= 0:
            self.policy.move(h, src, j)
            if self.logw.size:
                self.logw[h, j] = self.logw[h, src]
        elif self.logw.size:
            self.logw[h, j] = 0.0

    # ------------------------------------------------------------ steady-state decode
    def _fast_decode_ready(self, p: int, T: int = 1) -> bool:
        """Whether this step of ``T`` tokens from position ``p`` is one :func:`.insert.decode_step` call:
        the plain steady state, or, before the first spill calibrates the cache, tokens that only fill
        empty fp16 window slots (the basis is then the rotation alone; the queries are still observed)."""
        return self.FAST_DECODE and (self._steady_state(p) or self._window_room(p) >= T)

    def _window_room(self, p: int) -> int:
        """How many tokens from position ``p`` on go into empty fp16 window slots, so that nothing
        spills, in a layer without policy or merge weights (0 where that does not apply).
        Before calibration such tokens took the Python path, ~4x a one-call step: the first R
        tokens of every conversation (a third of a ``tg128`` from an empty cache at 4 bits)."""
        if not self._plain_slots or self.R == 0 or p < self.S:
            return 0
        return int(np.count_nonzero(self.pos[0, self.S : self.F] < 0))

    def _steady_state(self, p: int) -> bool:
        """Whether a decode token at position ``p`` only moves slots by age: no policy, no merge weights, calibrated."""
        return self._plain_slots and self._calibrated_entry(p)

    def _calibrated_entry(self, p: int) -> bool:
        """Whether a token at position ``p`` enters the fp16 window of a calibrated cache whose pools the one-call steps store."""
        return self._stored_window and p >= self.S and self.pools[0].calibrated and self.basis.calibrated

    # asked every layer-step (a few us of Python each time otherwise): what cannot change, worked out once
    @functools.cached_property
    def _plain_slots(self) -> bool:
        """No eviction policy and no merge weights: slots move by age alone."""
        return self.policy is None and not self.logw.size

    @functools.cached_property
    def _stored_window(self) -> bool:
        """An fp16 window in front of pools of :attr:`STORED_WIDTHS` (every token that leaves the window is stored there)."""
        w = self.STORED_WIDTHS
        p0, p1 = self.pools
        return self.R > 0 and p0.bits_k in w and p0.bits_v in w and (p1.cap == 0 or (p1.bits_k in w and p1.bits_v in w))

    def _policy_steady(self, p: int) -> bool:
        """Whether a decode token at ``p`` of a layer with a policy goes in with one call (the victims picked, demoted and merged there)."""
        return self.policy is not None and (self.merger is None or self.merger.mode > 0) and self._calibrated_entry(p)

    def _ranked_steady(self, p: int) -> bool:
        """:meth:`_policy_steady` where the one-call steps rank the victims themselves, from the policy's
        score (``Policy.ranks_by_score``; a policy that ranks otherwise goes the Python way)."""
        return self.FAST_DECODE and self._policy_steady(p) and self.policy.ranks_by_score

    @functools.cached_property
    def _merge_args(self) -> tuple[int, float, Any]:
        """(mode, threshold, score) of the merger for the one-call steps; score: the policy's that weighs a KeepKV merge, or None.

        Fixed for the cache's life (the policy updates its arrays in place): computed at the first step.
        """
        m, pol = self.merger, self.policy
        if m is None:
            return 0, 0.0, None
        return m.mode, float(m.threshold), pol.score if m.name == "keepkv" and pol.needs_probs else None

    @functools.cached_property
    def _policy_state(self) -> tuple[tuple, tuple]:
        """The policy's per-slot arrays and the ones a merge adds up in, as the one-call steps take them (fixed, as :attr:`_merge_args`)."""
        return tuple(self.policy.per_slot()), tuple(self.policy.fold_arrays())

    @functools.cached_property
    def _policy_args(self) -> tuple:
        """What the one-call policy steps (:func:`.insert.policy_push`, ``policy_push_tokens``,
        ``policy_decode_step``) take after the store's arguments: the policy's arrays and the merger's
        (state, n_state, folds, n_fold, logw, mode, threshold, score), fixed as :attr:`_merge_args`."""
        mode, thr, score = self._merge_args
        state, folds = self._policy_state
        # padded with the dummy to fixed lengths: a tuple's length is part of its Numba type, and policies with 1, 2
        # and 3 arrays had compiled each one-call step once for each (policy_push_tokens 4 times, ~16 s each, a first
        # run); the kernels read the first n_state / n_fold only
        state_p = state + (self._dummy,) * (POLICY_STATE_SLOTS - len(state))
        folds_p = folds + (self._dummy,) * (POLICY_FOLD_SLOTS - len(folds))
        return state_p, len(state), folds_p, len(folds), self.logw, mode, thr, _EMPTY2 if score is None else score

    @functools.cached_property
    def _fused_hooks(self) -> tuple[int, int, float] | None:
        """``Policy.fused_hooks``: what the one-call policy step does in place of the hooks' Python calls, or None."""
        return self.policy.fused_hooks() if self.policy is not None else None

    def _policy_decode_fast(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """A decode step (up to MAX_DECODE_T tokens) of a layer with a policy: where the policy's hooks are
        ones :func:`.insert.policy_decode_step` does itself, the whole step in that one call; else each token
        in one Numba call (:func:`.insert.policy_push`), then the step's queries attend."""
        T = q.shape[0]
        hooks = self._fused_hooks
        if hooks is not None:
            pol, s = self.policy, self.spec
            rot_v = self.rot_v is not None
            policy_decode_step(
                np.ascontiguousarray(q, np.float32), np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32),
                np.ascontiguousarray(pos, np.int32), self.basis.rot is not None, rot_v, *self._store_args(), *self._policy_args,
                pol.rank_pool, self._ranking, self._qr[:T], hooks[0], hooks[1], hooks[2], pol.acc if pol.needs_probs else _EMPTY2,
                s.window, s.scale, s.softcap, self._or[:T] if rot_v else out, out, self._s, split_threads(), self.int_keys,
                self._sinks, self._alibi, self._chunk,
            )  # fmt: skip
            return
        for t in range(T):
            self._policy_push_fast(q[t], k[t], v[t], int(pos[t]), self.rot_v is not None, self._qr[t])
        self._attend_decode(q, pos, out, qr=self._qr[:T])

    def _policy_push_fast(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, p: int, rot_v: bool, qr: np.ndarray) -> None:
        """One decode token into a layer with a policy in one Numba call (:func:`.insert.policy_push`); its queries into ``qr``.

        q [n_head, D], k [n_kv, D] original basis; v [n_kv, Dv], rotated into the cache basis there when ``rot_v``.
        """
        kt = np.ascontiguousarray(k, np.float32)
        j = policy_push(
            np.ascontiguousarray(q, np.float32), kt, np.ascontiguousarray(v, np.float32), p, self.basis.rot is not None, rot_v,
            *self._store_args(), *self._policy_args, self.policy.rank_pool, self._ranking, qr, self._chunk,
        )  # fmt: skip
        self.policy.on_insert(np.full(self.spec.n_head_kv, j, np.int64), p, kt)

    def _fast_basis(self) -> tuple[np.ndarray, np.ndarray]:
        """(t, mu) of the key basis as dense [n_kv, D] arrays (ones / zeros where unused), cached per basis version."""
        b = self.basis
        if getattr(self, "_fb_version", None) != b.version:
            n_kv, D = b.n_kv, b.D
            self._fb = (
                np.ascontiguousarray(b.t if b.t is not None else np.ones((n_kv, D)), np.float32),
                np.ascontiguousarray(b.mu if b.mu is not None else np.zeros((n_kv, D)), np.float32),
            )  # fmt: skip
            self._fb_version = b.version
        return self._fb

    def _decode_fast(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """A steady-state decode step (up to MAX_DECODE_T tokens) in one Numba call (:func:`.insert.decode_step`):
        each token stored, then the step's queries attend."""
        T, s = q.shape[0], self.spec
        rot_v = self.rot_v is not None
        decode_step(
            np.ascontiguousarray(q, np.float32), np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32),
            np.ascontiguousarray(pos, np.int32), self.basis.rot is not None, rot_v, *self._store_args(), self._qr[:T],
            self.logw, s.window, s.scale, s.softcap, self._or[:T] if rot_v else out, out, self._s, split_threads(), self.int_keys,
            self._sinks, self._alibi,
        )  # fmt: skip

    def _pool_args(self, i: int) -> tuple:
        """Pool ``i``'s tuple as the one-call steps of :mod:`.insert` take it (see there)."""
        pl = self.pools[i]
        return (self.lo[i], self._free[i], pl.kc, pl.km, pl.vc, pl.vm, pl.bits_k, pl.bits_v, pl.klut, pl.vlut,
                CLIPS[pl.bits_k], CLIPS[pl.bits_v])  # fmt: skip

    def _store_args(self) -> tuple:
        """What :func:`.insert.decode_push`, :func:`.insert.push_tokens` and :func:`.insert.policy_push_tokens`
        take after the rotation flags: the key basis, the fp16 area, the positions, the group size,
        both pools' tuples and the quantizer's scratch."""
        p0, p1 = self.pools
        key = (self.basis.version, id(p0.klut), id(p0.vlut), id(p1.klut), id(p1.vlut))  # what calibration replaces
        if getattr(self, "_sa_key", None) != key:  # built once a calibration (~6 us a layer-step otherwise)
            t_k, mu = self._fast_basis()
            self._sa = (t_k, mu, self.k16, self.v16, self.pos, self.S, self.F, self.kv.group, self._pool_args(0), self._pool_args(1), p0._tmp)
            self._sa_key = key
        return self._sa

    # ------------------------------------------------------------ attention
    def _attend_decode(self, q: np.ndarray, pos: np.ndarray, out: np.ndarray, qr: np.ndarray | None = None) -> None:
        T = q.shape[0]
        if qr is None:
            qr = self.basis.queries(q, out=self._qr[:T])
        o = out if self.rot_v is None else self._or[:T]
        pol = self.policy
        acc = _EMPTY2
        if pol is not None and pol.needs_probs:
            pol.before_step()
            acc = pol.acc
        self.attend_slots(qr, pos, self.spec, o, self._s, acc, self._sinks, self._alibi)
        if pol is not None and pol.needs_probs:
            pol.after_step()
        if self.rot_v is not None:
            fwht_rows(o, out)

    def attend_slots(self, qr: np.ndarray, pos: np.ndarray, spec: LayerSpec, o: np.ndarray, s_all: np.ndarray, acc: np.ndarray,
                     sinks: np.ndarray, alibi: np.ndarray) -> None:  # fmt: skip
        """The decode kernel (:func:`attend_decode_q`): queries ``qr`` [T, n_head, D] (the cache's key basis) at ``pos``
        over every stored slot, with ``spec``'s window, scale and soft-cap and the given sinks and slopes, into ``o``
        (the values' basis); the probabilities added into ``acc`` ([n_kv, N], or ``[0, 0]``); ``s_all`` the logits'
        scratch.  This layer's own steps, and those of the layers that read its K/V (cache/shared_compressed.py)."""
        p0, p1 = self.pools
        attend_decode_q(
            qr, pos, self.k16, self.v16,
            p0.kc, p0.km, p0.vc, p0.vm, p0.bits_k, p0.bits_v,
            p1.kc, p1.km, p1.vc, p1.vm, p1.bits_k, p1.bits_v,
            p0.klut, p0.vlut, p1.klut, p1.vlut, self.kv.group, self.pos, self.logw,
            spec.window, spec.scale, spec.softcap, o,
            s_all, acc, int_keys=self.int_keys, sink_logits=sinks, alibi=alibi,
        )  # fmt: skip

    def stored_rows(self, h: int, spare: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slot ids of head ``h``'s held tokens, and their keys and values in the cache basis:
        ([n], [n + spare, D], [n + spare, Dv]), ``spare`` rows left after them (a prefill chunk's own).

        The rows are decoded in place into this thread's reused buffers (the next call overwrites
        them): fresh multi-megabyte arrays per head and chunk cost page faults (see ``ops/cpu/attention.py``)."""
        row = self.pos[h if self.P > 1 else 0]
        ids = np.flatnonzero(row >= 0)
        n = ids.size
        kb = scratch("cache.k", n + spare, self.key_dim)
        vb = scratch("cache.v", n + spare, self.spec.head_dim_v)
        a = int(np.searchsorted(ids, self.F))
        decode_half_slots(self.k16[h], ids[:a], kb[:a])
        decode_half_slots(self.v16[h], ids[:a], vb[:a])
        for i, pl in enumerate(self.pools):
            e = int(np.searchsorted(ids, self.lo[i] + pl.cap))
            pl.read_into(h, ids[a:e] - self.lo[i], kb[a:e], vb[a:e])
            a = e
        return ids, kb, vb

    def _prefill(self, q: np.ndarray, k: np.ndarray, vr: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """Attend the chunk over stored slots + its own tokens (BLAS), then insert its tokens."""
        s = self.spec
        T, H, D = q.shape
        n_kv = s.n_head_kv
        gqa = H // n_kv
        qr = self.basis.queries(np.ascontiguousarray(q, np.float32))
        k16 = through_f16(self.basis.keys(k), scratch("cache.k16", T * n_kv, self.key_dim))  # what the fp16 window will hold
        v16 = through_f16(vr, scratch("cache.v16", T * n_kv, s.head_dim_v))
        pq = pos.astype(np.int64)
        o = scratch("cache.o", T * H, s.head_dim_v).reshape(T, H, s.head_dim_v)
        pol = self.policy
        keep: list | None = [] if self.keep_chunk else None
        for h in range(n_kv):
            ids, kall, vall = self.stored_rows(h, spare=T)
            kall[ids.size :] = k16[:, h]
            vall[ids.size :] = v16[:, h]
            pk = np.concatenate([self.pos[h if self.P > 1 else 0, ids].astype(np.int64), pq])
            bias = np.concatenate([self.logw[h, ids], np.zeros(T, np.float32)]) if self.logw.size else None
            g = slice(h * gqa, (h + 1) * gqa)
            want = pol is not None and pol.needs_probs
            probs = attend_group(qr[:, g], kall, vall, pk, pq, s.window, s.scale, s.softcap, o[:, g], bias, probs=want,
                                 sink_logits=self._sinks[g] if self._sinks.size else None, alibi=self._alibi[g] if self._alibi.size else None)
            if pol is not None:
                pol.prefill(h, probs, ids)
            if keep is not None:  # (copies: the rows are this thread's reused buffers)
                keep.append((pk, kall.copy(), vall.copy(), bias))
        if self.rot_v is not None:  # back from the cache basis by the butterflies, as a decode step does
            fwht_rows(o, out)
        else:
            out[:] = o
        if keep is not None:  # (the basis as the chunk's keys were expressed in: its first spill may fix a new one)
            self.shared_chunk = (pq, copy.copy(self.basis), keep)
        self._insert_chunk(k, vr, pos)

    def store(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        """Store rows as :meth:`update_and_attend` does, bit for bit, computing their attention only where something
        reads it (a decode step's kernels, a policy that scores a prefill chunk by it): a picture's rows, which
        attended before they are stored (cache/picture_block.py)."""
        if q.shape[2] > self.key_dim:  # (as update_and_attend)
            q, k = self._without_position_channel(q, k)
        T, pol = q.shape[0], self.policy
        if T <= MAX_DECODE_T or (pol is not None and pol.needs_probs):
            self.update_and_attend(q, k, v, pos, np.empty((T, self.spec.n_head, self.spec.head_dim_v), np.float32))
            return
        if self.basis.wants_queries:
            self.basis.observe(q)
        if pol is not None:  # (what _prefill tells it without probabilities)
            for h in range(self.spec.n_head_kv):
                pol.prefill(h, None, np.flatnonzero(self.pos[h if self.P > 1 else 0] >= 0))
        self._insert_chunk(np.ascontiguousarray(k, np.float32), self._rot(v, self.rot_v), pos)

    def _insert_chunk(self, k: np.ndarray, vr: np.ndarray, pos: np.ndarray) -> None:
        """A prefill chunk's tokens into the cache, once its attention scored them (k: [T, n_kv, D] original basis;
        vr: [T, n_kv, Dv] cache basis)."""
        T, t = len(pos), 0
        while t < T:
            p = int(pos[t])
            # once calibrated (maybe by this chunk's first spill), the rest of the chunk goes in by the one-call steps
            if self.FAST_DECODE and self._steady_state(p):  # every token only moves slots by age: one call
                self._push_chunk_fast(k[t:], vr[t:], pos[t:])
                return
            if self._ranked_steady(p):  # the rest of the chunk in one call, victims picked there
                self._policy_chunk_fast(k[t:], vr[t:], pos[t:], t)
                return
            n = min(self._window_room(p), T - t) if self.FAST_DECODE else 0
            if n > 0:  # tokens that fill empty window slots, before the spill that calibrates: one call
                self._push_chunk_fast(k[t : t + n], vr[t : t + n], pos[t : t + n])
                t += n
                continue
            self._push(k[t], vr[t], p, t=t)
            t += 1

    def _policy_chunk_fast(self, k: np.ndarray, vr: np.ndarray, pos: np.ndarray, first: int) -> None:
        """Rows ``first`` on of a prefill chunk into a layer whose policy ranks by its score, in one Numba call
        (:func:`.insert.policy_push_tokens`; each token's first state from ``Policy.insert_chunk``).
        k: [T, n_kv, D] original basis; vr: [T, n_kv, Dv] already in the cache basis."""
        init = np.ascontiguousarray(self.policy.insert_chunk(pos, k, first), np.float32)
        if not init.flags.writeable:  # (a policy's read-only view: one more compiled variant of the step for nothing)
            init = init.copy()
        policy_push_tokens(
            np.ascontiguousarray(k, np.float32), np.ascontiguousarray(vr, np.float32), np.asarray(pos, np.int64),
            self.basis.rot is not None, False, *self._store_args(), *self._policy_args, init, self.policy.rank_pool, self._ranking,
            self._chunk,
        )  # fmt: skip

    def _push_chunk_fast(self, k: np.ndarray, vr: np.ndarray, pos: np.ndarray) -> None:
        """A steady-state prefill chunk's tokens in one Numba call (:func:`.insert.push_tokens`).
        k: [T, n_kv, D] original basis; vr: [T, n_kv, Dv] already in the cache basis."""
        push_tokens(
            np.ascontiguousarray(k, np.float32), np.ascontiguousarray(vr, np.float32), np.asarray(pos, np.int64),
            self.basis.rot is not None, False, *self._store_args(),
        )  # fmt: skip
