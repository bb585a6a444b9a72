"""Merging: fold an evicted token into the most similar kept token of the same head.

Used as a wrapper around any policy: when the cache evicts a token from a
pool, the merger looks for the kept token of that pool (same KV head) whose
key has the highest cosine similarity with the victim's key and folds the
victim's K and V into it instead of dropping them.

* ``mean`` — similarity-weighted averaging above a threshold (D2O,
  https://arxiv.org/abs/2406.13035; CaM, https://proceedings.mlr.press/v235/zhang24n.html):
  ``x_t <- (x_t + w x_e) / (1 + w)`` with ``w = cos(k_e, k_t)`` when it is at
  least ``threshold``; below it the victim is dropped.
* ``keepkv`` — KeepKV's electoral votes (https://arxiv.org/abs/2504.09936):
  every slot carries how many tokens it stands for, as a log weight added to
  its attention logit (``logw``, read by the kernels), so a merged slot keeps
  the attention mass of all its tokens; K and V are averaged weighted by
  votes x accumulated attention (a simplified ZIP-merging).

Shapes: victim key/value [D] / [Dv] float32 in the cache basis; similarity
scratch [C] float32 per pool.
"""

from __future__ import annotations

import math

import numpy as np

from ..ops.cpu.qattention import key_similarity


class Merger:
    """Base: finds the merge target; subclasses combine."""

    name = "base"
    threshold = -1.0  # minimum cosine similarity to merge
    mode = 0  # its code in the one-call decode steps (insert.policy_push, kvquant.cu); 0: not there, merged by evict()

    def evict(self, cache, i: int, h: int, j: int, k: np.ndarray, v: np.ndarray) -> int:
        """Token in slot ``j`` of pool ``i``, head ``h`` (k: [D], v: [Dv]) is evicted; return the target slot or -1."""
        pool, lo = cache.pools[i], cache.lo[i]
        sims = np.empty(pool.cap, np.float32)  # [C]
        # (fp16 pools too: the one-call steps' function, so both paths pick the same target on near-ties)
        key_similarity(k, pool.kc, pool.km, pool.klut, pool.bits_k, pool.G, h, sims)
        sims[j - lo] = -np.inf
        sims[cache.pos[h, lo : lo + pool.cap] < 0] = -np.inf
        t = int(np.argmax(sims))
        if not sims[t] >= self.threshold:
            return -1
        tgt = lo + t
        kt, vt = pool.read_row(h, t)
        k_new, v_new = self.combine(cache, h, j, tgt, float(sims[t]), k, v, kt, vt)
        pool.write_one(h, t, k_new, v_new)
        if cache.policy is not None:
            cache.policy.fold(h, j, tgt)
        return tgt

    def combine(self, cache, h, j, tgt, sim, k, v, kt, vt):  # pragma: no cover - abstract
        raise NotImplementedError


class MeanMerge(Merger):
    """D2O/CaM-style similarity-weighted averaging."""

    name = "mean"
    threshold = 0.5
    mode = 1

    def combine(self, cache, h, j, tgt, sim, k, v, kt, vt):
        w = np.float32(sim)
        return (kt + w * k) / (1 + w), (vt + w * v) / (1 + w)


class KeepKVMerge(Merger):
    """KeepKV electoral votes: counts as log weights, vote- and attention-weighted averages."""

    name = "keepkv"
    mode = 2

    def combine(self, cache, h, j, tgt, sim, k, v, kt, vt):
        lw = cache.logw
        ne, nt = math.exp(float(lw[h, j])), math.exp(float(lw[h, tgt]))
        ae = ne
        at = nt
        if cache.policy is not None and cache.policy.needs_probs:
            # both scores in one read: one copy down where the policy keeps them on the device
            sj, st = cache.policy.score[h, [j, tgt]].tolist()
            ae *= max(sj, 1e-6)
            at *= max(st, 1e-6)
        we, wt = ae / (ae + at), at / (ae + at)
        lw[h, tgt] = np.float32(math.log(ne + nt))
        return (wt * kt + we * k).astype(np.float32), (wt * vt + we * v).astype(np.float32)


MERGERS: dict[str, type[Merger]] = {"mean": MeanMerge, "keepkv": KeepKVMerge}


def make_merger(name: str) -> Merger:
    """The merger registered as ``name``."""
    try:
        return MERGERS[name]()
    except KeyError:
        raise ValueError(f"unknown merge {name!r}; known: {', '.join(MERGERS)}") from None
