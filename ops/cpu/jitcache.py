"""Is Numba's on-disk cache warm?  The first forward on a machine compiles every
kernel (about 30 s here, 50 s with a compressed cache); later starts load them in well under a second.
The CLI says so before that first forward, instead of going silent."""

from __future__ import annotations


def kernels_cached() -> bool:
    """True when the cache holds a fresh index for each main decode kernel (else the first forward compiles).

    Reads Numba's cache locator (an internal API): where it is not there, says True
    (no notice) rather than fail.
    """
    from . import fused, nn, qattention, qmatmul

    def cached(k) -> bool:
        # an index of this source's stamp (jitstamp.py: all kernel files), not a stale one an edit or a
        # checkout left: that one compiles too, and the notice is owed
        return bool(k._cache._cache_file._load_index())

    try:  # one matvec (one thread or many), a fused norm + products, decode attention, a norm
        attention = cached(qattention._attend_decode_f16) or cached(qattention._attend_decode_q)  # plain or compressed cache
        products = (cached(qmatmul._mv_1) or cached(qmatmul._mv_n)) and (cached(fused._fused_1) or cached(fused._fused_n))
        return products and attention and cached(nn.rms_norm)
    except AttributeError:
        return True
