"""``make_cache``: one layer cache per layer spec, plain or compressed as the KVConfig says."""

from __future__ import annotations

import sys
from dataclasses import replace

from .base import LayerCache, LayerSpec
from .compressed import CompressedLayerCache
from .conv import ConvLayerCache
from .deltanet import DeltaNetLayerCache
from .kvconfig import DEFAULT_WARM_TARGET, KVConfig
from .plain import PlainLayerCache, make_plain_cache
from .quant import MIN_ROTATION_BLOCK, rotation_block
from .mamba import MambaLayerCache
from .rwkv import RWKVLayerCache
from .ssm import ParallelSSMLayerCache, SSMLayerCache


def make_cache(specs: list[LayerSpec], n_ctx: int, n_batch: int, kv: KVConfig | None = None, device: str = "cpu") -> list[LayerCache]:
    """Layer caches for a model, in host memory or (``device="gpu"``) on the GPU.

    Parameters
    ----------
    specs : list[LayerSpec]
        One per layer (``model.layer_specs()``).
    n_ctx : int
        Context size (positions ``0 .. n_ctx-1``).
    n_batch : int
        Largest chunk a forward call feeds (sizes the plain cache's window rings, and Llama 4's chunked layers' rings:
        ``|window| + n_batch``, llama.cpp's iSWA size, cache/plain.py ``ring_capacity``).
    kv : KVConfig or None
        None, or 16 bits with no policy and no mixed precision: the plain fp16
        cache.  Otherwise :class:`CompressedLayerCache` per layer; sliding-window
        layers keep a ring of their window (quantized alike), the budget and the
        policy apply to global layers; Llama 4's chunked layers at most the sinks,
        one chunk and a decode step's tokens (cache/compressed.py).
    device : str
        ``"cpu"`` or ``"gpu"`` (the same choice with the GPU classes of
        :mod:`.gpu_plain` / :mod:`.gpu_compressed`).

    Raises
    ------
    ValueError
        One line naming an impossible combination and what to do.
    """
    if any(spec.rwkv for spec in specs) and device == "gpu":  # (the same on the device: cache/gpu_recurrent.py)
        from .gpu_recurrent import GPURWKVLayerCache

        return [GPURWKVLayerCache(spec) for spec in specs]
    if any(spec.rwkv for spec in specs):  # RWKV's blocks: the WKV state and the token shift's inputs (cache/rwkv.py), no K/V
        return [RWKVLayerCache(spec) for spec in specs]
    if device == "gpu" and any(spec.mamba or spec.ssm for spec in specs) and not any(spec.conv or spec.deltanet for spec in specs):
        from .gpu_ssm import make_gpu_ssm_cache  # Mamba's and Mamba-2's state on the device, the rest K/V as below

        return make_gpu_ssm_cache(specs, lambda attn: make_cache(attn, n_ctx, n_batch, kv, device))
    if any(spec.mamba for spec in specs) and not all(spec.mamba for spec in specs):  # Jamba's, PLaMo 2's Mamba layers among
        # attention ones (models/jamba.py): their state (cache/mamba.py), the rest K/V
        made = iter(make_cache([spec for spec in specs if not spec.mamba], n_ctx, n_batch, kv, device))
        return [MambaLayerCache(spec) if spec.mamba else next(made) for spec in specs]
    if any(spec.mamba for spec in specs):  # Mamba 1's layers: the state and the convolution's inputs (cache/mamba.py), no K/V
        return [MambaLayerCache(spec) for spec in specs]
    if device == "gpu" and any(spec.deltanet for spec in specs) and not any(spec.conv or spec.ssm or spec.mamba for spec in specs):
        from .gpu_delta import make_gpu_delta_cache  # Gated DeltaNet's / KDA's state on the device, the rest K/V as below

        return make_gpu_delta_cache(specs, lambda attn: make_cache(attn, n_ctx, n_batch, kv, device))
    if device == "gpu" and any(spec.conv for spec in specs) and not any(spec.ssm or spec.deltanet or spec.mamba for spec in specs):
        from .gpu_recurrent import GPUConvLayerCache  # LFM2's convolution layers' inputs on the device, the rest K/V as below

        attn = [spec for spec in specs if not spec.conv]
        made = iter(make_cache(attn, n_ctx, n_batch, kv, device) if attn else [])
        return [GPUConvLayerCache(spec) if spec.conv else next(made) for spec in specs]
    if any(spec.conv or spec.ssm or spec.deltanet for spec in specs):  # LFM2's convolution layers, Mamba-2's, Gated
        # DeltaNet's: their state (cache/conv.py, cache/ssm.py, cache/deltanet.py); the rest K/V, and Falcon-H1's layers
        # both (their K/V made here with the rest)
        attn = [replace(spec, ssm=(), ssm_attn=False) for spec in specs if spec.ssm_attn or not (spec.conv or spec.ssm or spec.deltanet)]
        made = iter(make_cache(attn, n_ctx, n_batch, kv, device) if attn else [])
        return [ConvLayerCache(spec) if spec.conv else DeltaNetLayerCache(spec) if spec.deltanet
                else ParallelSSMLayerCache(spec, next(made)) if spec.ssm_attn
                else SSMLayerCache(spec) if spec.ssm else next(made) for spec in specs]  # fmt: skip
    if any(spec.kv_from >= 0 for spec in specs) and kv is not None and kv.is_compressed:  # (both devices' plain caches share)
        # (a source's policy ranks its slots by its sharers' attention too: cache/shared_compressed.py)
        from .shared_compressed import make_shared_compressed  # (the sources' compressed slots, read as stored)

        return make_shared_compressed(specs, lambda own: make_cache(own, n_ctx, n_batch, kv, device), device)
    # ALiBi: the CPU's models give the keys a position channel (models/bloom.py), the GPU's the slopes; the compressed
    # caches take either (a bias from the slots' positions, cache/compressed.py), the plain ones their device's own
    if any(spec.position_channel for spec in specs) and device != "cpu":
        raise ValueError("ALiBi's position channel (the CPU's form) has no GPU cache; load the model with --device gpu")
    if any(spec.alibi_slopes for spec in specs) and device == "cpu" and (kv is None or not kv.is_compressed):
        raise ValueError("ALiBi's slopes (the GPU's form) have no plain CPU cache; load the model with --device cpu")
    # (Llama 4's chunked layers take a policy: an older chunk's tokens, which no query sees again, go first, cache/insert.py chunk_floor)
    layer_cls, plain = CompressedLayerCache, make_plain_cache
    if device == "gpu":  # imported here: the CPU path never needs CuPy or the GPU kernels
        from .gpu_compressed import GPUCompressedLayerCache as layer_cls
        from .gpu_plain import make_gpu_plain_cache as plain  # (keys of any width: MLA's latent, 576, decodes in passes)
    if kv is None or not kv.is_compressed:
        return plain(specs, n_ctx, n_batch)
    kv = kv.validate(n_ctx)
    kvs = [_fit_group(kv, replace(spec, head_dim=spec.head_dim - 1) if spec.position_channel else spec) for spec in specs]
    if kv.warm is None and kv.warm_on:
        kvs = _size_warm_tiers(specs, kvs, n_ctx, DEFAULT_WARM_TARGET[kv.widths[0]])
    return [layer_cls(spec, k, n_ctx) for spec, k in zip(specs, kvs)]


def _size_warm_tiers(specs: list[LayerSpec], kvs: list[KVConfig], n_ctx: int, target_bpv: float) -> list[KVConfig]:
    """Explicit warm-tier sizes for a default (``warm=None``) cache.

    The tiers grow until the whole cache, full and everything counted, reaches
    ``target_bpv`` bits per value: first the sliding-window layers' (up to their
    whole quantized window: all of it is recent, and those layers are where 2-bit
    keys hurt most), then the global layers', as one share of their quantized
    slots.  Bytes grow linearly with a tier, so one trial layout with one-slot
    tiers gives the shares.  The window and group the tier implies are pinned
    first, so a tier that comes out at one slot keeps that layout (global layers of a
    model with sliding-window layers keep a shorter window: see ``kvconfig``).

    The target is for values as narrow as the keys, so the trial layout has them so: wider
    values (``bits_v=4``) get the same tiers, not starved ones (Gemma 3, ctx 1024: sized with
    4-bit values, every tier came out at one slot and PPL rose 23% over fp16, against 0.35%
    with 2-bit values).
    """
    hybrid = any(s.window > 0 for s in specs)
    kvs = [k.with_(residual=k.residual_for(hybrid and s.window <= 0)) for s, k in zip(specs, kvs)]
    trial = [k.with_(warm=1, bits_v=k.widths[0]) for k in kvs]
    used = vals = 0
    room: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}  # sliding? -> (layer, quantized slots, bytes per warm slot)
    for i, (s, k) in enumerate(zip(specs, trial)):
        layer = CompressedLayerCache(s, k, n_ctx)
        b, v = layer.footprint(n_ctx)
        used, vals = used + b, vals + v
        if len(layer.pools) > 1 and layer.pools[1].cap + layer.pools[0].cap > 1:
            warm, cold = layer.pools
            room[s.window > 0].append((i, warm.cap + cold.cap, s.n_head_kv * (warm.slot_bytes() - cold.slot_bytes())))
    left = target_bpv * vals / 8 - used
    sized = [k.with_(warm=1) for k in kvs]
    for sliding in (True, False):
        extra = sum((cq - 1) * per for _, cq, per in room[sliding])
        share = min(max(left / extra, 0.0), 1.0) if extra > 0 else 0.0
        left -= share * extra
        for i, cq, _ in room[sliding]:
            sized[i] = kvs[i].with_(warm=1 + int(share * (cq - 1)))
    return sized


def _fit_group(kv: KVConfig, spec: LayerSpec) -> KVConfig:
    """Groups never span heads: a head smaller than the group makes the group one head wide, and a group that does not
    divide the key and value heads (MLA's tiny latent, 40 and 32 wide) shrinks to the largest one that does.  Heads
    that are no power of two rotate block by block (``quant.hadamard``); the default skips the rotation where a block
    would be under ``MIN_ROTATION_BLOCK`` channels, and an explicit ``rotate=1`` is refused in one line on odd heads."""
    d = min(spec.head_dim, spec.head_dim_v)
    if kv.group > d:
        kv = kv.with_(group=d)
    if spec.head_dim % kv.group or spec.head_dim_v % kv.group:
        kv = kv.with_(group=max(g for g in range(1, kv.group + 1) if spec.head_dim % g == 0 and spec.head_dim_v % g == 0))
    if kv.rotate is None and kv.rotated and any(rotation_block(n) < MIN_ROTATION_BLOCK for n in (spec.head_dim, spec.head_dim_v)):
        kv = kv.with_(rotate=False)  # (the default rotation is block-diagonal Hadamard: MLA's 576 turns as 9 x 64, a head of 12 not)
    return kv


def bits_per_value(layers: list[LayerCache], n_tokens: int) -> float:
    """Bits of storage and metadata per cached K/V value after ``n_tokens`` tokens, all layers."""
    gpu_plain = sys.modules.get(f"{__package__}.gpu_plain")  # (imported where a GPU cache was made: not on the CPU)
    plain = (PlainLayerCache,) if gpu_plain is None else (PlainLayerCache, gpu_plain.GPUPlainLayerCache)
    tot_b, tot_v = 0, 0
    for layer in layers:
        layer = layer.kv if isinstance(layer, ParallelSSMLayerCache) else layer  # (Falcon-H1's: the K/V beside the state)
        if isinstance(layer, CompressedLayerCache):
            b, v = layer.footprint(n_tokens)
        elif isinstance(layer, plain):
            s = layer.spec
            n = min(n_tokens, layer.capacity)
            v = n * s.n_head_kv * (s.head_dim + s.head_dim_v)
            b = layer.nbytes() * n // layer.capacity  # (fp16 K and V and a position a slot; MLA's V, a view of K, none)
        else:
            continue
        tot_b += b
        tot_v += v
    return 8.0 * tot_b / max(tot_v, 1)
