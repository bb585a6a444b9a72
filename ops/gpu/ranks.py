"""Eviction-policy ranks on the device (``ranks.cu``): what a policy ranks by when it is more than its score."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K


def pooled_ranks(s: Any, pos: Any, width: int) -> Any:
    """SnapKV's ranks: each slot's score ``s`` [m, n] max-pooled over the ``width`` slots nearest in
    position order (``pos`` [m, n] int32; a stable order, the ends repeated), per row; [m, n] float32.
    Equal to ``cache/policies/snapkv.py`` ``_pooled`` bit for bit (a max)."""
    xp = K.runtime().xp
    m, n = s.shape
    s = xp.ascontiguousarray(s, dtype=np.float32)
    pos = xp.ascontiguousarray(pos, dtype=np.int32)
    out = xp.empty((m, n), np.float32)
    scratch = xp.empty((2, m, n), np.int32)  # each row's slots in position order, and each slot's rank
    if m and n:
        K.launch("pol_pooled_ranks", (m,), (min(1024, -(-n // 32) * 32),), s, pos, out, scratch[0], scratch[1], n, width)
    return out
