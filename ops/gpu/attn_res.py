"""Launching attn_res.cu: Kimi K3's cross-layer residual attention on the device (models/kimi_k3.py ``res_mix``).

The CPU keeps its checkpoints in a list of host arrays and mixes them with the stream in host numpy; on the device the
checkpoints are slots of one preallocated buffer ``[T, n_slot, n_embd]`` (:func:`bank` writes a layer's input into its
slot) and the softmax mix of the first ``n_bank`` of them and the stream is one launch (:func:`mix`), so a decode step
copies nothing to the host and is captured as a CUDA graph.  Rows are float32, C-contiguous.
"""

from __future__ import annotations

import math
from typing import Any

from . import kernels as K
from .arrays import device_out, to_device

MAX_SOURCES = 64  # ATTN_RES_MAX_SRC in attn_res.cu: the checkpoints and the stream one mix reads


def bank(x: Any, bank: Any, slot: int) -> None:
    """``bank[:, slot] = x``: the rows ``x`` ``[T, n_embd]`` kept as checkpoint ``slot`` of ``bank`` ``[T, n_slot, n_embd]``."""
    T, n_slot, n_embd = bank.shape
    if tuple(x.shape) != (T, n_embd) or not 0 <= slot < n_slot:
        raise ValueError(f"attention residuals' bank: x {tuple(x.shape)} into slot {slot} of {tuple(bank.shape)} does not fit")
    total = math.prod(x.shape)
    xd = to_device(x)
    with device_out(bank) as bd:
        K.launch("attn_res_bank_f32", K.ew_grid(total), (K.EW_BLOCK,), xd, bd, slot, n_slot, n_embd, total)


def mix(bank: Any, n_bank: int, x: Any, score: Any, eps: float, out: Any) -> None:
    """``out`` = the softmax mix of the checkpoints ``bank[:, :n_bank]`` and the stream ``x`` (last), each scored by
    ``sum(rms_norm(s) * score)`` (RMS ``eps``), as models/kimi_k3.py ``res_mix``; ``out`` ``[T, n_embd]`` is not ``x``."""
    T, n_slot, n_embd = bank.shape
    if tuple(x.shape) != (T, n_embd) or tuple(out.shape) != (T, n_embd) or math.prod(score.shape) != n_embd \
            or not 0 <= n_bank <= n_slot or n_bank + 1 > MAX_SOURCES:  # fmt: skip
        raise ValueError(f"attention residuals' mix: bank {tuple(bank.shape)} ({n_bank} banked), x {tuple(x.shape)}, "
                         f"score {tuple(score.shape)}, out {tuple(out.shape)} do not match")  # fmt: skip
    bd, xd, sd = to_device(bank), to_device(x), to_device(score)
    with device_out(out) as od:
        K.launch("attn_res_mix_f32", (T,), (K.EW_BLOCK,), bd, xd, sd, od, n_bank, n_slot, n_embd, float(eps))
