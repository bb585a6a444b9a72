"""Eviction policies, registered by name.  A new policy is one file here and one line below."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Policy
from .gkv import GKV
from .h2o import H2O
from .keydiff import KeyDiff
from .snapkv import SnapKV
from .streaming import Streaming
from .tova import TOVA

POLICIES: dict[str, type[Policy]] = {
    "streaming": Streaming,
    "h2o": H2O,
    "tova": TOVA,
    "snapkv": SnapKV,
    "keydiff": KeyDiff,
    "gkv": GKV,
}


def make_policy(name: str, n_kv: int, n_slots: int, xp: Any = np) -> Policy:
    """An instance of the policy registered as ``name``, its per-slot state allocated with ``xp``.

    xp: numpy (the CPU cache) or the device array module (the GPU cache keeps
    the scores on the device; see :mod:`.base`).
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    return cls(n_kv, n_slots, xp)


__all__ = ["POLICIES", "Policy", "make_policy"]
