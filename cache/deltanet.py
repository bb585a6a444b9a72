"""The state of a Gated DeltaNet layer (Qwen3.5's and Qwen3-Next's linear-attention layers), kept beside the
attention layers' K/V in the same :class:`~.base.KVCache`.

For the next token llama.cpp keeps what the layer reads of the past: the convolution's last ``d_conv - 1``
inputs (the raw ``q``/``k``/``v`` rows of the in-projection) and the delta rule's state, a matrix
``[d_v, d_k]`` per value head.  As a Mamba-2 state it cannot go back a token, so this is Mamba-2's cache
(``cache/ssm.py``: its ring of the last inputs, its copies of the state every ``EVERY`` positions, going back
from a copy and feeding the kept inputs again, starting over further back) with another recurrence: the
inputs kept are the ``qkv`` rows and each head's decay ``g`` and write strength ``beta`` (after their
activations: a replay needs no weight at all), the state copied is the delta rule's.

Everything is float32, never quantized or evicted: a state of Qwen3.5-0.8B is 2 MiB a layer (16 heads of
128 x 128), with its two copies and the kept inputs 6.5 MiB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.cpu.deltanet import gated_delta_rule
from ..ops.cpu.kda import kda_delta_rule
from ..ops.cpu.ssm import ssm_conv
from .base import LayerSpec
from .ssm import CHECKPOINTS, EVERY, RING, SSMLayerCache


class DeltaNetLayerCache(SSMLayerCache):
    """Mamba-2's cache machinery (``scan``, ``truncate``, the ring and the copies) around the delta rule.

    ``scan(qkv, gb, pos, w, y)``: ``qkv`` [T, channels] the in-projection's rows, ``gb`` [T, 2 * n_v_heads] each
    head's decay log ``g`` then ``beta``; ``w`` the layer's weights (``conv`` [d_conv, channels], ``conv_b``,
    ``k_of_v``, ``eps``); writes ``y`` [T, n_v_heads * d_v] (before the gated norm).

    Kimi Delta Attention (models/kimi_linear.py): a sixth ``spec.deltanet`` value 1 gives each head a decay per key
    channel (``ops/cpu/kda.py``): ``gb`` is then [T, n_v_heads * d_k + n_v_heads], every head's d_k decay logs, then beta."""

    def __init__(self, spec: LayerSpec) -> None:  # (not SSMLayerCache's: other shapes, the same fields)
        self.spec = spec
        self.d_conv, self.n_k_heads, self.n_v_heads, self.d_k, self.d_v = spec.deltanet[:5]
        self.per_channel = len(spec.deltanet) > 5 and bool(spec.deltanet[5])  # (KDA's decay: d_k logs a head, not one)
        self.d_inner = self.n_v_heads * self.d_v  # (what a replay writes: y's width)
        self.channels = 2 * self.n_k_heads * self.d_k + self.d_inner  # the convolution's: q, k, v
        self.n_head = self.n_v_heads * ((self.d_k if self.per_channel else 1) + 1)  # (the ring's columns after the channels: g, beta)
        shape = (self.n_v_heads, self.d_v, self.d_k)
        self.state = np.zeros(shape, np.float32)
        self.ck = np.zeros((CHECKPOINTS, *shape), np.float32)
        self.ck_pos = np.full(CHECKPOINTS, -1, np.int64)
        self.n_ring = RING + self.d_conv - 1
        self.ring = np.zeros((self.n_ring, self.channels + self.n_head), np.float32)
        self.ring_lo = 0
        self.offset = 0
        self.replay_from = 0

    def update_and_attend(self, q, k, v, pos, out) -> None:  # (LayerCache's protocol: not this layer's)
        raise TypeError("a Gated DeltaNet layer has no softmax attention")

    def _advance(self, p0: int, win: np.ndarray, gb: np.ndarray, w: Any, y: np.ndarray) -> None:
        """The convolution (``win``: the d_conv - 1 inputs before p0, then the chunk's) and the delta rule from
        position ``p0`` on; the state is copied at the multiples of EVERY the chunk reaches (the last CHECKPOINTS)."""
        T = gb.shape[0]
        qkv = np.empty((T, self.channels), np.float32)
        ssm_conv(win, w.conv, w.conv_b, qkv)
        kept = self.ck_pos.tolist()
        at = [q for q in range(-(-(p0 + 1) // EVERY) * EVERY, p0 + T + 1, EVERY) if q not in kept][-CHECKPOINTS:]
        slots = sorted(range(CHECKPOINTS), key=kept.__getitem__)[: len(at)]  # the oldest copies (none: -1) make room
        self.ck_pos[slots] = at
        ck_t, ck_slot = np.array([q - p0 for q in at], np.int64), np.array(slots, np.int64)
        ng = self.n_head - self.n_v_heads  # (g's columns: one a head, or KDA's d_k)
        g, beta = np.ascontiguousarray(gb[:, :ng]), np.ascontiguousarray(gb[:, ng:])
        rule = kda_delta_rule if self.per_channel else gated_delta_rule
        rule(self.state, qkv, g, beta, w.k_of_v, w.eps, y, ck_t, ck_slot, self.ck)
