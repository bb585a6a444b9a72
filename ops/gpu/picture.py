"""Launcher for ``picture.cu``: a picture's rows attending to each other both ways over the GPU's fp16 KV ring.

Shapes and layouts as ``attention.py``'s (device arrays): q [T, n_head, D] float32, k/v [n_kv, cap, D/Dv] float16,
kpos [cap] int32 (-1 empty), qpos [T] int32, out [T, n_head, Dv] float32.  Each row sees every stored position up to
``pend`` (the forward's last row), before or after its own, a sliding window still hiding keys ``window`` or more
behind it: Gemma 3's image block as libmtmd feeds it (cache/gpu_picture.py).  The tiles are attention.py's prefill's.
"""

from __future__ import annotations

from typing import Any

from . import kernels as K
from .attention import prefill_tiles


def attend_picture(q: Any, k: Any, v: Any, kpos: Any, n_slots: int, qpos: Any, pend: int, window: int, scale: float, softcap: float,
                   out: Any) -> None:  # fmt: skip
    """Tiled attention (online softmax) of the rows ``q`` over slots [0, n_slots), keys up to position ``pend``."""
    T, H, D = q.shape
    n_kv, cap, Dv = v.shape
    bq, bkv, smem = prefill_tiles(D, Dv)
    K.launch(
        "attn_picture_f16", (K.cdiv(T, bq), H), (128,),
        q, k, v, kpos, qpos, out,
        T, n_slots, cap, H, n_kv, D, Dv, pend, window, scale, softcap, bq, bkv,
        shared_mem=smem,
    )  # fmt: skip
