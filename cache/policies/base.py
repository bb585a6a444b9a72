"""What every eviction policy shares: per-slot scores, moving them with their token, picking victims.

A policy only *scores*; the cache decides when to evict and calls
:meth:`Policy.victim`.  Scores come from what the kernels already compute:
the attention probabilities the decode kernel adds into :attr:`Policy.acc`
(summed over the query heads of each KV head, so a GQA group shares one
decision), the prefill attention matrix, and the keys themselves.

Shapes (``n_kv`` KV heads, ``N`` slots of the layer, ``D`` head size)::

    score  [n_kv, N]  float32   importance, higher = keep
    acc    [n_kv, N]  float32   where the kernel adds this step's probabilities
    probs  [T, n_cols]        prefill attention of T queries over one KV head's columns

Where the state lives: every per-slot array (``score``, ``acc`` and a
policy's own, such as G-KV's ``hist``) is allocated with the array module
``xp`` the policy is built with: numpy on the CPU, the device module on the
GPU (CuPy, or the emulator's numpy stand-in), so the GPU cache keeps it next
to the decode kernel's probabilities.  Every hook then works on it with
``xp`` operations and it never leaves the device: per decode step nothing
comes down.  The GPU cache's decode step picks every head's victim on the
device, from :meth:`Policy.rank_rows`, in its push kernel; on its host path
(merging, several tokens) an eviction brings down only the victim's slot
number (one scalar, in :meth:`Policy.victim`).  What a hook is handed on the host (prefill
probabilities, slot ids, positions, keys) is reduced on the host where the
hook reduces it, then uploaded with ``xp.asarray`` (no copy with numpy), so
the CPU policies compute exactly what they did before and a device policy
the same values; the GPU cache's device prefill hands over its probabilities
on the device, and the hooks reduce them there.  ``rank`` and ``top_k``
return arrays of ``xp``.

On Llama 4's chunked layers (``LayerSpec.window`` < 0) the cache, not the
policy, puts the tokens of an older chunk than the newest token's first
(no query sees them again): a pool's oldest token goes before any ranking
where it is one (``cache/insert.py`` chunk_floor, ``kvquant.cu`` kq_pick,
the host path's ``CompressedLayerCache._place``); within the current chunk
the policy ranks as it does elsewhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

Array = Any  # an array of the policy's module ``xp``: numpy.ndarray, or a device array


#: what a policy's hooks do, as the one-call decode step (``cache/insert.py`` policy_decode_step) does it
#: instead of calling them.  on_insert: every per-slot array 0 in the new slot (Policy's), or the score the
#: token's position (StreamingLLM's)
INSERT_ZERO, INSERT_POS = 0, 1
#: before_step / after_step: nothing (H2O: the kernel adds into the score); acc 0, then score = score *
#: decay + acc (SnapKV); the score 0 before the kernel adds into it (TOVA)
STEP_NONE, STEP_DECAY, STEP_RESET = 0, 1, 2


class Column(NamedTuple):
    """Slot ``j[0]`` of every head, read when the operation runs: a captured CUDA graph's decode
    step, whose slot the host writes into a device buffer before each replay (runtime/graphs.py)."""

    j: Array  # [1] int32, an array of ``xp``


class Policy:
    """Base: a heavy-hitter-style accumulator; subclasses override the hooks.

    Parameters
    ----------
    n_kv : int
        KV heads of the layer.
    n_slots : int
        Slots of the layer (fp16 area and pools).
    xp : module
        Array module of the per-slot state: numpy (default; the CPU cache) or
        the device module (the GPU cache), see the module docstring.
    """

    name = "base"
    needs_probs = True  # the attention kernels must report probabilities
    # its decode-step hooks are array operations a CUDA graph can capture now (no sort: CuPy's runs Thrust,
    # which synchronises; no allocation on first use)
    capturable = True
    # rank_rows is the score itself (per_slot()[0]), max-pooled over rank_pool neighbours in position order
    # when > 0: a kernel can compute the ranks as a chunk's tokens come (kv_policy_push_tokens)
    ranks_by_score = True
    rank_pool = 0
    #: (insert, step) codes of this class's hooks for the one-call decode step (see :meth:`fused_hooks`);
    #: None: they run as Python calls around it
    fused: tuple[int, int] | None = (INSERT_ZERO, STEP_NONE)

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        self.xp = xp
        self._rows = xp.arange(n_kv)  # [n_kv]: every head, to index a Column with
        self.score = xp.zeros((n_kv, n_slots), np.float32)  # [n_kv, N]
        self.acc = self.score  # [n_kv, N]; accumulators may alias score
        self._pending: dict[int, list[tuple[Array, Array]]] = {}  # head -> (array, [T] values)

    # ------------------------------------------------------------ host -> xp
    def _up(self, a: np.ndarray) -> Array:
        """Host array ``a`` as an array of :attr:`xp`: an upload on the device, ``a`` itself with numpy."""
        return self.xp.asarray(a)

    def _heads(self, slots: np.ndarray | Column) -> tuple[Any, Any]:
        """Index of slot ``slots[h]`` of each head ``h`` in a [n_kv, N] array; slots: [n] int64, host,
        or a :class:`Column` (the slot on the device).

        The cache puts a token in the same slot of every head: then a column
        (basic indexing, nothing to upload), else the two index arrays.
        """
        if isinstance(slots, Column):
            return self._rows, slots.j
        n = len(slots)
        if n == self.score.shape[0] and (slots == slots[0]).all():
            return slice(None), int(slots[0])
        return self._up(np.arange(n)), self._up(slots)

    # ------------------------------------------------------------ hooks
    def fused_hooks(self) -> tuple[int, int, float] | None:
        """(insert, step, decay) codes for the one-call decode step, which then does what :meth:`on_insert`,
        :meth:`before_step` and :meth:`after_step` do (their Python calls cost ~15 us a layer-step), or None:
        call them.  None too where a subclass overrides a hook of the class that declared :attr:`fused`."""
        owner = next(c for c in type(self).__mro__ if "fused" in vars(c))
        for name in ("on_insert", "before_step", "after_step"):
            if getattr(type(self), name) is not getattr(owner, name):
                return None
        return None if self.fused is None else (*self.fused, float(getattr(self, "decay", 0.0)))

    def per_slot(self) -> list[Array]:
        """Arrays [n_kv, N] whose entries travel with a token from slot to slot."""
        return [self.score] if self.acc is self.score else [self.score, self.acc]

    def on_insert(self, slots: np.ndarray | Column, pos: int | Array, k: np.ndarray) -> None:
        """A token enters ``slots`` ([n_kv] int64, one per head, or a :class:`Column`); ``k``: [n_kv, D]
        float32 (host, or on the device); ``pos``: its position (with a Column: [1] int32 on the device)."""
        idx = self._heads(slots)
        for arr in self.per_slot():
            arr[idx] = 0.0

    def before_step(self) -> None:
        """Called before the decode kernel adds probabilities into :attr:`acc`."""

    def after_step(self) -> None:
        """Called after it; fold :attr:`acc` into :attr:`score`."""

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        """Score from a prefill chunk's attention (one KV head).

        probs: [T, n_old + T] float32 (host, or an array of :attr:`xp` on the
        GPU cache's device path), the attention of the chunk's T queries
        (summed over the head's query heads) over its ``n_old`` stored
        slots ``old`` ([n_old] int64, host), then over the chunk's own T
        tokens; None when :attr:`needs_probs` is False.  Update the stored
        slots' scores and keep the new tokens' for :meth:`adopt`.
        """
        n_old = len(old)
        col = self._up(probs.sum(axis=0))  # [n_old + T], reduced on the host
        self.score[head, self._up(old)] += col[:n_old]
        self._pending[head] = [(self.score, col[n_old:])]

    # ------------------------------------------------------------ layers that read this one's K/V
    # (cache/shared_compressed.py: Gemma 3n's, Gemma 4's last layers attend over this layer's slots; a token they
    # attend to must rank as one this layer attends to, so their attention joins this layer's in the same arrays)
    def shared_acc(self) -> Array:
        """[n_kv, N] where a sharing layer's decode kernel adds its step's probabilities; then :meth:`after_shared`.

        The sharers run after this layer within a step (its after_step done), and this layer's next victims are
        picked before its next before_step: so the score itself, where a step's attention adds up as-is: H2O's
        (``acc`` is the score), TOVA's (reset at the next before_step, after the victims), SnapKV's (after_step
        adds ``acc`` undecayed, just so).  A policy whose after_step does more overrides both (G-KV)."""
        return self.score

    def after_shared(self) -> None:
        """Fold what a sharing layer's kernel added into :meth:`shared_acc` (here: nothing, it is the score)."""

    def prefill_shared(self, head: int, probs: Array, slots: np.ndarray) -> None:
        """A sharing layer's prefill chunk attended over this layer's stored ``slots`` of ``head`` ([n] int64, host;
        the chunk already stored): probs [T, n] (its query heads summed; host, or an array of :attr:`xp`).

        Every policy's :meth:`prefill` leaves a stored slot's state as an affine function of its old state plus a term
        of the chunk's probabilities alone (H2O adds the column sums; TOVA, SnapKV set the last / observed rows' sums;
        G-KV decays its history and adds).  That term is what ``prefill`` makes of ``probs`` from a zero state, so it is
        computed so, on a one-head scratch instance, and added into each per-slot array: the slot then holds what a
        ``prefill`` of both layers' probabilities, summed, would have given it."""
        n = len(slots)
        if not self.needs_probs or n == 0:
            return
        fresh = type(self)(1, n, self.xp)
        fresh.prefill(0, probs, np.arange(n, dtype=np.int64))
        s = self._up(np.asarray(slots, np.int64))
        for mine, term in zip(self.per_slot(), fresh.per_slot()):
            mine[head, s] += term[0]

    def adopt(self, slots: np.ndarray, t: int) -> None:
        """Row ``t`` of the last prefill chunk entered ``slots`` ([n_kv] int64): give it its scores."""
        for h, items in self._pending.items():
            for arr, vals in items:
                arr[h, slots[h]] = vals[t]

    def insert_chunk(self, pos: Array, k: Array, first: int = 0) -> Array:
        """Rows ``first`` on of the last prefill chunk, T tokens, enter in order, one slot per head each: the
        state each starts with, [len(per_slot()), n_kv, T] float32, an array of :attr:`xp` (what
        :meth:`on_insert` then :meth:`adopt` leave in its slot, token by token; a kernel writes them as it
        places the tokens).

        pos: [T] their positions; k: [T, n_kv, D] float32 their keys (arrays of :attr:`xp`, or host).
        Here: zero, then the chunk's own scores from :meth:`prefill`.
        """
        arrays = self.per_slot()
        T = k.shape[0]
        init = self.xp.zeros((len(arrays), self.score.shape[0], T), np.float32)
        for h, items in self._pending.items():
            for arr, vals in items:
                init[next(i for i, a in enumerate(arrays) if a is arr), h] = vals[first : first + T]
        return init

    # ------------------------------------------------------------ selection
    def move(self, head: int, src: int, dst: int) -> None:
        """The token of ``head`` in slot ``src`` now lives in slot ``dst``."""
        for arr in self.per_slot():
            arr[head, dst] = arr[head, src]

    def fold_arrays(self) -> list[Array]:
        """Arrays [n_kv, N] whose entries add up when a token is merged into another (:meth:`fold`)."""
        return [self.score]

    def fold(self, head: int, src: int, dst: int) -> None:
        """The token in ``src`` was merged into ``dst``: its importance adds up."""
        for arr in self.fold_arrays():
            arr[head, dst] += arr[head, src]

    def rank(self, head: int, slots: Array, pos: Array) -> Array:
        """Importance of candidate ``slots`` of ``head`` ([n] -> [n] float); ``pos``: their positions.

        slots, pos: arrays of :attr:`xp` (or host arrays, uploaded).
        """
        return self.score[head, self._up(slots)]

    def rank_rows(self, lo: int, hi: int, pos: Array) -> Array:
        """Importance of slots ``[lo, hi)`` of every head at once: [n_kv, hi - lo] float32, C-contiguous.

        pos: [n_kv, hi - lo] their positions (an array of :attr:`xp`; rows with
        empty slots may rank anything there).  For the device decode step,
        which picks each head's victim from these in one kernel
        (``ops/gpu/kvquant.cu`` kq_pick: least important, oldest on ties, as
        :meth:`victim`); row ``h`` equals :meth:`rank` of head ``h``.
        """
        return self.xp.ascontiguousarray(self.score[:, lo:hi])

    def victim(self, head: int, lo: int, hi: int, pos: np.ndarray) -> int:
        """The slot in ``[lo, hi)`` of ``head`` to evict: the least important (oldest on ties).

        pos: [hi - lo] int32 positions of those slots (all occupied; host).
        The choice is made with :attr:`xp`; only its index comes back (one
        scalar; the positions go up for the tie-break).
        """
        xp = self.xp
        p = self._up(pos)
        r = self.rank(head, xp.arange(lo, hi), p)  # [n]
        # the oldest of the least important: ties keep their position as the
        # key, the rest get one no position reaches (positions are unique)
        key = xp.where(r == r.min(), p, np.iinfo(p.dtype).max)
        return lo + int(key.argmin())

    def top_k(self, head: int, slots: Array, pos: Array, k: int) -> Array:
        """The ``k`` most important of ``slots`` (for prompt compression and tests); an array of :attr:`xp`."""
        xp = self.xp
        s, p = self._up(slots), self._up(pos)
        r = self.rank(head, s, p)
        # by score desc, then newest first (the last key is the primary one);
        # stacked: CuPy's lexsort takes one [2, n] array (float64: exact for both)
        order = xp.lexsort(xp.stack([-p, -r]))
        return s[order[:k]]
