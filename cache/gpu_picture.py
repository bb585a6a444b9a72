"""A picture's rows that see each other both ways (Gemma 3's image block) in the GPU's plain fp16 KV cache.

As on the CPU (cache/bidirectional.py), libmtmd feeds such a picture with causal attention off: each row of a forward
sees every cached position before the picture and every row of its own forward, before or after it, and a sliding-window
layer still hides a key ``window`` or more positions behind the query.  The rows are stored first, as any prefill's
(attention.cu's ``kv_store_f16``), and then attended over from the ring under that mask by ``picture.cu``'s kernel,
which differs from the prefill kernel only in the mask (a key is visible up to the forward's last position, not the
query's).  Everything stays on the device: one kernel launch a layer a picture piece, no host copy but the positions
the plain cache's bookkeeping reads anyway.  The GPU's compressed cache is refused in one line: the CPU's attends
before it stores (cache/picture_block.py), which its kernels do not do yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..ops.gpu import kernels as K
from ..ops.gpu import attention as attn
from ..ops.gpu.arrays import device_out, is_device, positions, to_device
from ..ops.gpu.picture import attend_picture
from .base import LayerCache
from .gpu_plain import GPUPlainLayerCache
from .gpu_shared import GPUSharedLayerCache


def update_and_attend_picture(layer: LayerCache, q: Any, k: Any, v: Any, pos: Any, out: Any) -> None:
    """Store a picture's rows ``k``/``v`` [T, n_kv, D] at positions ``pos`` in the GPU plain ``layer`` and write their
    attention, both ways within the forward, into ``out`` [T, n_head, head_dim_v]; a layer sharing another's K/V
    (cache/gpu_shared.py, Gemma 4's) stores nothing and attends over its source's ring by its own spec; another cache:
    a one-line KvrunError."""
    s, store = layer.spec, True
    if type(layer) is GPUSharedLayerCache:  # (Gemma 4's last layers: the source's ring, which stored the rows this step)
        layer, store = layer.source, False
    if type(layer) is not GPUPlainLayerCache:
        raise KvrunError("on the GPU, pictures whose rows see each other both ways (Gemma 3, Gemma 4) need the plain fp16 KV cache: "
                         "drop the --kv-* flags")  # fmt: skip
    if s.sink_logits or s.alibi_slopes:
        raise KvrunError("images are not supported with attention sinks or ALiBi")
    if s.window < 0:
        raise KvrunError("images are not supported with chunked attention")
    T = q.shape[0]
    if T > layer.capacity:
        raise ValueError(f"batch of {T} tokens exceeds the layer cache of {layer.capacity} slots")
    pos_h = K.runtime().asnumpy(pos) if is_device(pos) else np.asarray(pos)
    pd = positions(pos_h)
    if store:
        layer.note_positions(pos_h)
        attn.kv_store(to_device(k), to_device(v), pd, layer.k, layer.v, layer.pos)
    with device_out(out) as od:
        attend_picture(to_device(q), layer.k, layer.v, layer.pos, layer.used, pd, int(pos_h.max()), s.window, s.scale, s.softcap, od)
