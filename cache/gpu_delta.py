"""The Gated DeltaNet / Kimi Delta Attention layers' cache on the GPU: cache/deltanet.py with the state, its copies and the
ring of kept inputs in device memory, the convolution ``ops/gpu/ssm.cu``'s and the delta rule ``ops/gpu/delta.cu``'s.

The machinery is the state-space layers' GPU cache's (``cache/gpu_ssm.py``'s ``_DeviceState``: the CPU's ring, copies
and bookkeeping field for field, so ``truncate`` / ``can_truncate`` are the CPU class's, and its CUDA graph protocol:
the one host decision of a decode step, which copy slot the state goes to, comes through the graph's input buffer), with
the delta rule's state ``[n_v_heads, d_v, d_k]`` and ring rows of the raw ``qkv`` then each head's ``g`` and ``beta``
(after their activations, as the CPU keeps them: going back replays them without a weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..ops.gpu import delta as D
from ..ops.gpu import ssm as S
from ..ops.gpu.arrays import positions
from .base import LayerCache, LayerSpec
from .deltanet import DeltaNetLayerCache
from .gpu_ssm import _DeviceState
from .ssm import RING


class GPUDeltaNetLayerCache(_DeviceState, DeltaNetLayerCache):
    """A Gated DeltaNet (or, ``spec.deltanet[5]``, Kimi Delta Attention) layer's state on the device; ``scan`` as the
    CPU's (``qkv`` and ``gb`` device arrays)."""

    host_class = DeltaNetLayerCache

    def __init__(self, spec: LayerSpec) -> None:  # (DeltaNetLayerCache's fields without its host arrays)
        self.spec = spec
        self.d_conv, self.n_k_heads, self.n_v_heads, self.d_k, self.d_v = spec.deltanet[:5]
        self.per_channel = len(spec.deltanet) > 5 and bool(spec.deltanet[5])
        self.d_inner = self.n_v_heads * self.d_v
        self.channels = 2 * self.n_k_heads * self.d_k + self.d_inner
        self.n_head = self.n_v_heads * ((self.d_k if self.per_channel else 1) + 1)
        self.n_ring = RING + self.d_conv - 1
        self._alloc((self.n_v_heads, self.d_v, self.d_k), self.channels + self.n_head)

    def scan(self, qkv: Any, gb: Any, pos: np.ndarray, w: Any, y: Any) -> None:
        """The convolution and the delta rule of a chunk at ``pos``: ``qkv`` [T, channels] the projections' rows, ``gb``
        [T, n_head] the decay's logs then beta (both kept in the ring); writes ``y`` [T, n_v_heads * d_v]."""
        p0, T, capturing = self._open(pos)
        if not capturing and self.replay_from < p0:  # (after going back: the state catches up on the kept inputs first)
            r0 = self.replay_from
            rows = self._kept_rows(r0, p0)
            pr = positions(np.arange(r0, p0, dtype=np.int32))
            self._advance(r0, rows, rows, self.channels, pr, w, self._buf("y_replay", p0 - r0, self.d_inner))
        self._advance(p0, qkv, gb, 0, positions(pos), w, y, store=True)
        if not capturing:
            self._close(p0, T)

    def _advance(self, p0: int, src: Any, gb: Any, gb_col0: int, pd: Any, w: Any, y: Any, store: bool = False) -> None:
        T = y.shape[0]
        xc = self._buf("xconv", T, self.channels)
        S.conv(src, src.shape[1], 0, self.ring, self.n_ring, pd, S.const(w.conv), S.const(w.conv_b), xc)
        if store:  # (once the convolution has read the ring)
            S.store(src, src.shape[1], 0, self.channels, self.ring, 0, self.n_ring, pd, T)
            S.store(gb, gb.shape[1], 0, self.n_head, self.ring, self.channels, self.n_ring, pd, T)
        ck, n_ck = self._ck_arg(p0, T)
        D.rule(self.state, xc, gb, gb_col0, D.const(w.k_of_v, np.int32), y, ck, n_ck, self.ck, self.n_k_heads, self.per_channel, w.eps)


def make_gpu_delta_cache(specs: list[LayerSpec], attention: Callable[[list[LayerSpec]], list[LayerCache]]) -> list[LayerCache]:
    """The GPU caches of a model with Gated DeltaNet / KDA layers: theirs from this module, the attention layers' from
    ``attention`` (make_cache's GPU path on their specs)."""
    for s in specs:
        if s.deltanet and s.deltanet[3] > D.MAX_K:
            raise ValueError(f"a delta-rule layer of {s.deltanet[3]} key values a head exceeds the GPU kernel's {D.MAX_K}; use --device cpu")
    attn = [replace(s, ssm=(), ssm_attn=False) for s in specs if not s.deltanet]
    made = iter(attention(attn) if attn else [])
    return [GPUDeltaNetLayerCache(s) if s.deltanet else next(made) for s in specs]
