"""DeepSeek-OCR 2's image side: DeepSeek-OCR's SAM ViT-B image encoder feeding a Qwen2 decoder run as an encoder over
SAM's features and learned queries, then one projection, as llama.cpp's clip.cpp builds them
(``clip_graph_deepseekocr2``, PROJECTOR_TYPE_DEEPSEEKOCR2), read from an mmproj file (loaders/mmproj.py).

A view (the picture padded to a 1024-pixel square, or a 768-pixel tile of it: runtime/vision_deepseekocr2.py cuts
them) becomes rows of the text model's width:

    pixels [3, S, S] (normalised by image_mean/std)
    -> SAM, exactly DeepSeek-OCR's (models/deepseekocr_image.py ``_sam_features``): [C, S/64, S/64], C the Qwen2
       encoder's width (clip.cpp allows only S/64 = 16 or 12: the global view or a tile)
    -> the sequence: SAM's N = (S/64)^2 features (raster order), then N learned queries (``v.resample_query_1024``,
       256 rows, for the global view; ``v.resample_query_768``, 144, for a tile)
    -> Qwen2 blocks (clip.cpp's ``build_vit``: RMSNorm, eps the file's), grouped-query attention with biased Q/K/V,
       NEOX rope (base 1e6) at positions 0..2N-1 over the whole sequence, under clip.cpp's mask: a feature attends to
       every feature and no query, a query to every feature and causally to the queries up to itself; RMSNorm, a
       SwiGLU MLP; ``v.post_ln`` (RMSNorm)
    -> the queries' rows alone, ``mm.model.fc`` (+ bias) -> [N, n_text_embd]; the global view's followed by the row
       ``v.view_seperator`` (:meth:`DeepseekOCR2Encoder.view_rows`; no newline rows, unlike DeepSeek-OCR's)

The forward is written once against models/vit_ops.py's ops, as DeepSeek-OCR's (whose SAM it calls): on the CPU
numpy on the host, the weight products on the CPU backend's kernels in the file's format; beside a GPU text model the
same steps on device arrays (models/vit_device.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr_image import DeepseekOCREncoder, _sam_features
from .vit_ops import ops_of

F32 = np.float32

#: clip.cpp's fixed geometry for deepseekocr2: 1024-pixel global views, 768-pixel tiles (2 to 6 unless the file says)
IMAGE_SIZE, TILE, MIN_TILES, MAX_TILES = 1024, 768, 2, 6
#: the Qwen2 encoder's rope (clip_graph_deepseekocr2's ggml_rope_ext: NEOX, freq_base 1e6)
ROPE_BASE = 1000000.0
#: clip.cpp's mask value where a row may not attend
MASKED = -1e9

TENSOR_NAMES.update({"v_gate": "v.blk.{i}.ffn_gate.weight", "v_gate_b": "v.blk.{i}.ffn_gate.bias"})  # (the projector's "dsocr_fc" is DeepSeek-OCR's)


def rope_table(n: int, d: int, base: float = ROPE_BASE) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [n, d/2] of ggml's rope at positions 0..n-1 over a head of ``d``: pair i turns by pos * base^(-2i/d),
    the angle carried from pair to pair by float32 products as ggml's CPU ``rope_cache_init`` does."""
    step = np.power(F32(base), F32(-2.0 / d), dtype=F32)
    theta = np.arange(n, dtype=F32)
    cos, sin = np.empty((n, d // 2), F32), np.empty((n, d // 2), F32)
    for i in range(d // 2):
        cos[:, i], sin[:, i] = np.cos(theta), np.sin(theta)
        theta = (theta * step).astype(F32)
    return cos, sin


def query_mask(n: int) -> np.ndarray:
    """clip.cpp's ``qwen2_attn_mask`` [2n, 2n] for n features then n queries: 0 where a row attends, :data:`MASKED`
    elsewhere (features see the features; queries the features and the queries up to their own)."""
    i, j = np.arange(2 * n)[:, None], np.arange(2 * n)[None, :]
    see = np.where(i < n, j < n, (j < n) | (j <= i))
    return np.where(see, F32(0), F32(MASKED)).astype(F32)


class DeepseekOCR2Encoder(DeepseekOCREncoder):
    """DeepSeek-OCR 2's SAM and Qwen2 encoders and projector from an mmproj file: :meth:`encode` a view's pixels into
    its query rows, :meth:`view_rows` lays them out with the separator row."""

    sam_only = True  # (DeepseekOCREncoder.__init__ loads SAM; the rest is below)

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        super().__init__(g, cfg, backend)
        ld = WeightLoader(g, backend)
        C = cfg.n_embd
        if self.net[1].w.shape[0] != C:
            raise KvrunError(f"{g.path}: v.sam.net_3.weight makes {self.net[1].w.shape[0]} channels, the Qwen2 encoder is {C} wide")
        kv = g.get("clip.vision.attention.head_count_kv")
        self.n_head_kv = int(kv) if kv is not None else cfg.n_head
        if C % cfg.n_head or cfg.n_head % max(self.n_head_kv, 1):
            raise KvrunError(f"{g.path}: inconsistent Qwen2 encoder heads (width {C}, {cfg.n_head} heads, {self.n_head_kv} K/V heads)")

        # the tiles' counts (clip.cpp reads them where the file has them: the converter writes 2 and 6)
        self.min_tiles = int(g.get("clip.vision.preproc_min_tiles", MIN_TILES))
        self.max_tiles = int(g.get("clip.vision.preproc_max_tiles", MAX_TILES))
        if not 0 <= self.min_tiles <= self.max_tiles <= 256:
            raise KvrunError(f"{g.path}: preproc tiles {self.min_tiles} to {self.max_tiles}: not a range libmtmd takes")

        def tensor(name: str) -> np.ndarray:
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the DeepSeek-OCR 2 projector file is incomplete")
            return dequantize(t.data, t.qtype, t.shape).astype(F32).reshape(t.shape)

        self.queries = {}
        for side in (768, 1024):  # (clip.cpp's: a view of S pixels has (S/64)^2 features and as many queries)
            q = tensor(f"v.resample_query_{side}.weight")
            n = (side // 64) ** 2
            if q.shape != (n, C):
                raise KvrunError(f"{g.path}: v.resample_query_{side}.weight has shape {list(q.shape)}, expected {[n, C]}")
            self.queries[n] = np.ascontiguousarray(q)
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = {r: ld.host_vector(f"v_{r}", i) for r in ("ln1", "ln2")}
            for r in ("q", "k", "v", "o", "gate", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            self.layers.append(L)
        self.post_ln = ld.host_vector("v_post_ln", required=False)
        self.fc, self.fc_b = ld.matrix("dsocr_fc"), ld.host_vector("dsocr_fc_b")
        self.view_sep = tensor("v.view_seperator").reshape(-1)
        self._tables: dict[int, tuple[np.ndarray, ...]] = {}

    def tables(self, n: int) -> tuple[np.ndarray, ...]:
        """The rope's cos, sin and the mask for n features and n queries (made once a view size)."""
        if n not in self._tables:
            self._tables[n] = (*rope_table(2 * n, self.cfg.n_embd // self.cfg.n_head), query_mask(n))
        return self._tables[n]

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (S 1024, a global view, or 768, a tile) -> the view's query rows
        [(S/64)^2, n_text_embd], no separator."""
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] != pixels.shape[2] or (pixels.shape[1] // 64) ** 2 not in self.queries:
            raise KvrunError(f"the DeepSeek-OCR 2 encoder takes pixels [3, S, S], S 1024 or 768, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)

    def view_rows(self, grids: list[np.ndarray], overview: bool) -> np.ndarray:
        """The rows of views libmtmd encodes: each of ``grids`` in turn, then (``overview``: the global view's) the
        row ``v.view_seperator``."""
        rows = np.concatenate(grids + ([self.view_sep[None]] if overview else []))
        return np.ascontiguousarray(rows, F32)


# ---------------------------------------------------------------- the forward, once for both devices (models/vit_ops.py)


def _forward(ops: Any, enc: DeepseekOCR2Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`DeepseekOCR2Encoder.encode` past its checks on either device's ``ops``: SAM, the Qwen2 encoder over the
    features and the queries, the projector on the queries' rows."""
    c, xp = enc.cfg, ops.xp
    sam = _sam_features(ops, enc, pixels)  # [C, n, n]
    C = sam.shape[0]
    N = sam.shape[1] * sam.shape[2]
    x = xp.concatenate([xp.ascontiguousarray(sam.reshape(C, N).T), ops.const(enc.queries[N])])
    cos, sin, mask = enc.tables(N)
    cos, sin, mask = ops.const(cos), ops.const(sin), ops.const(mask)
    H, Hkv = c.n_head, enc.n_head_kv
    D = C // H
    T = x.shape[0]
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = ops.rms_norm(x, L["ln1"], c.eps)
        q = ops.linear(L["q"], h, L["q_b"]).reshape(T, H, D)
        k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, Hkv, D) for r in ("k", "v"))
        q, k = ops.rope_neox(q, k, cos, sin)
        x = x + ops.linear(L["o"], ops.attend_masked(q, k, v, mask, scale), L["o_b"])
        h = ops.rms_norm(x, L["ln2"], c.eps)
        g = ops.act(ops.linear(L["gate"], h, L["gate_b"]), "silu") * ops.linear(L["up"], h, L["up_b"])
        x = x + ops.linear(L["down"], g, L["down_b"])
    if enc.post_ln is not None:
        x = ops.rms_norm(x, enc.post_ln, c.eps)
    return ops.to_host(ops.linear(enc.fc, xp.ascontiguousarray(x[N:]), enc.fc_b))
