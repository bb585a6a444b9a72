"""Launching lora.cu: LoRA adapters that control tokens switch on, token by token, on the device (Granite Switch,
models/graniteswitch.py), as :class:`TokenSwitch`.

The CPU's forward looks each token id up on the host (its slot for the router, its substitute for the embedding),
rounds the router's output there and groups the tokens of a slot for numpy's products.  A captured decode step's token
id is a device buffer each replay refills, so here every lookup is a kernel reading it, through vocabulary-sized int32
tables uploaded once, and the products are one launch a projection, each token its own slot's ``A`` and ``B``: the step
copies nothing to the host and is captured as a CUDA graph.  Rows are float32, C-contiguous; ids and slots int32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .arrays import device_out, to_device

_LORA_BLOCK = 256  # (8 warps: a warp a row of A, then a thread a row of B)


class TokenSwitch:
    """One model's control tokens on the device: ``slot_of`` (a control token's adapter slot, 1 to ``n_adapters``) and
    ``substitute_of`` (the token it is embedded as) over a vocabulary of ``n_vocab``; the router's key ``gain``."""

    def __init__(self, slot_of: dict[int, int], substitute_of: dict[int, int], n_vocab: int, n_adapters: int, gain: float) -> None:
        slot, shown = np.zeros(n_vocab, np.int32), np.arange(n_vocab, dtype=np.int32)
        for t, s in slot_of.items():
            if 0 <= t < n_vocab:  # (a control token past the vocabulary is never fed: it has no embedding)
                slot[t], shown[t] = s, substitute_of[t]
        self.n_vocab, self.n_adapters, self.gain = n_vocab, int(n_adapters), float(gain)
        self.slot_of, self.shown_as = to_device(slot, np.int32), to_device(shown, np.int32)

    def router_qkv(self, tokens: Any, q: Any, k: Any, v: Any) -> None:
        """The router layer's rows ``[T, 1, hd]`` of ``tokens`` ``[T]``: ``q`` 1, ``k`` +gain for a control token and
        -gain for any other, ``v`` its slot, all on channel 0 (the other channels zeros)."""
        T, hd = len(tokens), q.shape[-1]
        if any(a.size != T * hd for a in (q, k, v)):
            raise ValueError(f"the router's rows: {T} tokens, q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
        td = to_device(tokens, np.int32)
        with device_out(q) as qd, device_out(k) as kd, device_out(v) as vd:
            K.launch("lora_router_qkv", K.ew_grid(T * hd), (K.EW_BLOCK,), td, self.slot_of, qd, kd, vd, T, hd, self.n_vocab, self.gain)

    def route(self, att: Any, slots: Any) -> None:
        """``slots`` ``[T]`` int32: the router's output ``att`` ``[T, 1, hd]`` (channel 0) clamped to ``[0, n_adapters]``
        and rounded half away from zero (ggml_round's ``roundf``)."""
        T = att.shape[0]
        if len(slots) != T:
            raise ValueError(f"the router's slots: output {tuple(att.shape)}, slots {tuple(slots.shape)} do not match")
        ad = to_device(att)
        with device_out(slots, np.int32) as sd:
            K.launch("lora_route_slots", K.ew_grid(T), (K.EW_BLOCK,), ad, sd, T, att.size // max(T, 1), self.n_adapters)

    def substitute(self, tokens: Any, shown: Any) -> None:
        """``shown`` ``[T]`` int32: each of ``tokens`` as it is embedded (a control token's substitute, another itself)."""
        T = len(tokens)
        if len(shown) != T:
            raise ValueError(f"the substitution: {T} tokens, {len(shown)} ids out")
        td = to_device(tokens, np.int32)
        with device_out(shown, np.int32) as sd:
            K.launch("lora_substitute", K.ew_grid(T), (K.EW_BLOCK,), td, self.shown_as, sd, T, self.n_vocab)


    @staticmethod
    def upload(a: np.ndarray) -> Any:
        """A host float32 array (an adapter's ``A`` or ``B``) as a device array: once, at load."""
        return to_device(a)

    @staticmethod
    def lora_add(lora: tuple[Any, Any], x: Any, slots: Any, out: Any) -> None:
        """``out[t] += B[s] (A[s] x[t])`` for each token t of slot ``s = slots[t]``: ``lora`` the device arrays ``(A
        [n_slots, rank, in], B [n_slots, out, rank])``, ``x`` ``[T, in]``, ``out`` ``[T, out]``, ``slots`` ``[T]`` int32."""
        a, b = lora
        n_slots, rank, n_in = a.shape
        T, n_out = out.shape
        if tuple(b.shape) != (n_slots, n_out, rank) or tuple(x.shape) != (T, n_in) or len(slots) != T:
            raise ValueError(f"an adapter's product: A {tuple(a.shape)}, B {tuple(b.shape)}, x {tuple(x.shape)}, {len(slots)} slots, "
                             f"out {tuple(out.shape)} do not match")  # fmt: skip
        if T == 0:
            return
        xd, sd = to_device(x), to_device(slots, np.int32)
        with device_out(out) as od:
            K.launch("lora_add_f32", (T,), (_LORA_BLOCK,), to_device(a), to_device(b), xd, sd, od, n_slots, rank, n_in, n_out,
                     shared_mem=4 * rank)  # fmt: skip
