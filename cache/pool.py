"""A pool of quantized KV slots of one (K width, V width), per KV head.

Shapes (``C`` slots, ``G`` values per group, ``w`` bits a code)::

    kc [n_kv, C, D * w_k / 8]   uint8   key codes (16 bits: float16 bytes)
    km [n_kv, C, D / G, 2]      uint8   key (scale code, zero code) per group
    vc [n_kv, C, Dv * w_v / 8]  uint8   value codes
    vm [n_kv, C, Dv / G, 2]     uint8
    klut, vlut [256]            float32 scale tables (calibrated on the first write):
                                views of one shared table, so each costs one
                                exponent (``quant.TABLE_BYTES``)

Rows are written and read in the cache's (possibly rotated) basis; the pool
does not know about positions or scores.
"""

from __future__ import annotations

import numpy as np

from ..ops.cpu.qattention import decode_slots
from .insert import dequant_pair
from .quant import TABLE_BYTES, calibrate_lut, quant_scratch, quantize_into, row_bytes, scale_lut


class Pool:
    """``cap`` quantized slots per KV head; see the module docstring for the layout."""

    def __init__(self, n_kv: int, cap: int, D: int, Dv: int, bits_k: int, bits_v: int, G: int) -> None:
        self.cap, self.D, self.Dv, self.G = cap, D, Dv, G
        self.bits_k, self.bits_v = bits_k, bits_v
        self.kc = np.zeros((n_kv, cap, row_bytes(D, bits_k)), np.uint8)
        self.km = np.zeros((n_kv, cap, D // G if bits_k < 16 else 0, 2), np.uint8)
        self.vc = np.zeros((n_kv, cap, row_bytes(Dv, bits_v)), np.uint8)
        self.vm = np.zeros((n_kv, cap, Dv // G if bits_v < 16 else 0, 2), np.uint8)
        self.klut = scale_lut(-8)  # placeholders until the first write calibrates them
        self.vlut = scale_lut(-8)
        self.calibrated = False
        self._tmp = quant_scratch(G)  # quantizer scratch
        self._slots = np.full(n_kv, -1, np.int64)  # [n_kv] one-head writes

    def calibrate(self, k: np.ndarray, v: np.ndarray) -> None:
        """Fix the scale tables from sample rows.  k: [..., D]; v: [..., Dv] float32."""
        if self.bits_k < 16:
            self.klut = calibrate_lut(k, self.bits_k)
        if self.bits_v < 16:
            self.vlut = calibrate_lut(v, self.bits_v)
        self.calibrated = True

    def write(self, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Quantize k[h], v[h] into slot ``slots[h]`` of each head (-1: skip).

        slots: [n_kv] int64; k: [n_kv, D]; v: [n_kv, Dv] float32.
        """
        if not self.calibrated:
            self.calibrate(k, v)
        quantize_into(k, slots, self.bits_k, self.G, self.klut, self.kc, self.km, self._tmp)
        quantize_into(v, slots, self.bits_v, self.G, self.vlut, self.vc, self.vm, self._tmp)

    def write_one(self, head: int, slot: int, k: np.ndarray, v: np.ndarray) -> None:
        """One head's row.  k: [D]; v: [Dv] float32."""
        s = self._slots
        s[:] = -1
        s[head] = slot
        n_kv = s.shape[0]
        kk = np.broadcast_to(k, (n_kv, self.D))
        vv = np.broadcast_to(v, (n_kv, self.Dv))
        self.write(s, np.ascontiguousarray(kk), np.ascontiguousarray(vv))

    def read_into(self, head: int, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Dequantized rows of ``slots`` ([n] int, ascending) of one head into ``k`` [n, D] and ``v`` [n, Dv]
        float32 (C-contiguous)."""
        decode_slots(self.kc[head], self.km[head], self.klut, self.bits_k, self.G, slots, k)
        decode_slots(self.vc[head], self.vm[head], self.vlut, self.bits_v, self.G, slots, v)

    def read_row(self, head: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """One slot's rows ([D], [Dv] float32) for moving a token (demotion, cooling, merging).

        Bit for bit what the one-call decode steps (:func:`.insert.policy_push`,
        :func:`.insert.decode_push`) and the CUDA kernels (``kvq.cuh``) read, so
        that a re-quantized token gets the same codes on every path; :meth:`read_into`
        (the fused decoders, for attention) may differ by an ulp.
        """
        k = np.empty(self.D, np.float32)
        v = np.empty(self.Dv, np.float32)
        dequant_pair(self.kc[head, slot], self.km[head, slot], self.klut, self.bits_k,
                     self.vc[head, slot], self.vm[head, slot], self.vlut, self.bits_v, self.G, k, v)  # fmt: skip
        return k, v

    def slot_bytes(self) -> int:
        """Bytes of one slot of one head (codes and metadata of K and V)."""
        return self.kc.shape[2] + self.km.shape[2] * 2 + self.vc.shape[2] + self.vm.shape[2] * 2

    def nbytes(self) -> int:
        return self.kc.nbytes + self.km.nbytes + self.vc.nbytes + self.vm.nbytes + 2 * TABLE_BYTES
