"""``make_cache``: one layer cache per layer spec, plain or compressed as the KVConfig says."""

from __future__ import annotations

from .base import LayerCache, LayerSpec
from .compressed import CompressedLayerCache
from .kvconfig import KVConfig
from .plain import PlainLayerCache, make_plain_cache


def make_cache(specs: list[LayerSpec], n_ctx: int, n_batch: int, kv: KVConfig | None = None, device: str = "cpu") -> list[LayerCache]:
    """Layer caches for a model, in host memory or (``device="gpu"``) on the GPU.

    Parameters
    ----------
    specs : list[LayerSpec]
        One per layer (``model.layer_specs()``).
    n_ctx : int
        Context size (positions ``0 .. n_ctx-1``).
    n_batch : int
        Largest chunk a forward call feeds (sizes the plain cache's window rings).
    kv : KVConfig or None
        None, or 16 bits with no policy and no mixed precision: the plain fp16
        cache.  Otherwise :class:`CompressedLayerCache` per layer; sliding-window
        layers keep a ring of their window (quantized alike), the budget and the
        policy apply to global layers.
    device : str
        ``"cpu"`` or ``"gpu"`` (the same choice with the GPU classes of
        :mod:`.gpu_plain` / :mod:`.gpu_compressed`).

    Raises
    ------
    ValueError
        One line naming an impossible combination and what to do.
    """
    layer_cls, plain = CompressedLayerCache, make_plain_cache
    if device == "gpu":  # imported here: the CPU path never needs CuPy or the GPU kernels
        from .gpu_compressed import GPUCompressedLayerCache as layer_cls
        from .gpu_plain import make_gpu_plain_cache as plain
    if kv is None or not kv.is_compressed:
        return plain(specs, n_ctx, n_batch)
    kv = kv.validate(n_ctx)
    return [layer_cls(spec, _fit_group(kv, spec), n_ctx) for spec in specs]


def _fit_group(kv: KVConfig, spec: LayerSpec) -> KVConfig:
    """Groups never span heads: a head smaller than the group makes the group one head wide."""
    d = min(spec.head_dim, spec.head_dim_v)
    return kv.with_(group=d) if kv.group > d else kv


def bits_per_value(layers: list[LayerCache], n_tokens: int) -> float:
    """Bits of storage and metadata per cached K/V value after ``n_tokens`` tokens, all layers."""
    tot_b, tot_v = 0, 0
    for layer in layers:
        if isinstance(layer, CompressedLayerCache):
            b, v = layer.footprint(n_tokens)
        elif isinstance(layer, PlainLayerCache):
            s = layer.spec
            n = min(n_tokens, layer.capacity)
            v = n * s.n_head_kv * (s.head_dim + s.head_dim_v)
            b = 2 * v + 4 * n
        else:
            continue
        tot_b += b
        tot_v += v
    return 8.0 * tot_b / max(tot_v, 1)
