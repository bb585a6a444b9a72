"""MiMo-V2.5's image side (Xiaomi's; projector type "mimovl"), as llama.cpp's libmtmd builds it (``clip_graph_mimovl``,
tools/mtmd/models/mimovl.cpp) from an mmproj file (loaders/mmproj.py).

It is Qwen2.5-VL's windowed ViT (models/qwen2vl_image.py) in most of its steps, which are imported from there: the
picture's size and pixels (the file's ``image_min_pixels`` / ``image_max_pixels``, bicubic, padded), the two temporal
patch kernels, the patches in 2x2 blocks, the 2-D vision rope (base 10000, a head's first quarter of pairs by the row,
the second by the column), a gated SiLU MLP, the 2x2 merger.  What sets it apart, each held to clip.cpp:

* grouped heads: one fused ``attn_qkv`` product of ``n_head`` query heads and ``head_count_kv`` K/V heads whose width
  comes from the product's rows ((n_head + 2 n_kv) * head_dim; MiMo's 32 x 64 are wider than its 1280), scale
  1/sqrt(head_dim);
* per-layer attention (``clip.vision.wa_pattern_mode``): -1 the whole picture; 0 a band of ``window_size`` patches
  either side in the patches' (block) order, plus a per-head sink (``attn_sinks``: an extra score in the softmax's sum
  whose value is nothing); 1 the same band and sinks with the blocks in column-major order (clip.cpp reorders the rows
  on entering such layers and back on leaving, and after the last);
* RMSNorms in the blocks (the file's epsilon), then the merger's LayerNorm (epsilon 1e-6), and a merger MLP of
  ``mm.0``, GELU, ``mm.2`` without biases.

Rows are not reordered here: attention is the same sums whatever the rows' order, so a column layer scores the
picture in place, each patch against those within the band in the column-major order (its rank there), and its
rope turns by its own (row, column) as clip.cpp's reordered positions give it.  The attention is written once on
``ops.xp`` (numpy, or cupy on the GPU backend), query rows a chunk at a time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from . import qwen2vl_image
from .qwen2vl_image import MERGE, Qwen2VLEncoder, check_pixels, patch_kernels, patch_rows, target_size, vision_rope
from .siglip import MmprojEncoder
from .vit_ops import ops_of

POST_LN_EPS = 1e-6  # (clip_graph_mimovl's merger LayerNorm: fixed, not the file's)
SCORES = 1 << 24  # scores held at once (query rows a chunk: SCORES / (heads * patches))

#: uint8 RGB [h, w, 3] -> normalised pixels [3, H, W]: libmtmd's dyn_size preprocessing, Qwen2-VL's (bicubic, padded)
#: within the file's pixel limits
preprocess = qwen2vl_image.preprocess


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the merged rows a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * MERGE
    return w // f, h // f


def column_rank(npx: int, npy: int) -> np.ndarray:
    """Each patch's place (patches in block order) in clip.cpp's column-major order: the 2x2 blocks by column, then by
    row, each block's 4 patches kept in their order (``mimovl_idx_col``)."""
    nbx, nby = npx // MERGE, npy // MERGE
    u = np.arange(nbx * nby)
    r, c = u // nbx, u % nbx
    unit_rank = c * nby + r
    return (unit_rank[:, None] * MERGE * MERGE + np.arange(MERGE * MERGE)[None, :]).reshape(-1)


def attend(xp: Any, q: Any, k: Any, v: Any, rank: Any | None, window: int, sinks: Any | None, scale: float) -> Any:
    """softmax(q k^T scale) v with ggml's grouped heads (query head h reads K/V head h // (H / H_kv)): q [T, H, D],
    k, v [T, H_kv, D] -> [T, H*D].  With ``rank`` (each row's place in the layer's order), a row sees only the rows
    within ``window`` places of its own (clip.cpp's banded mask); with ``sinks`` [H], each head's softmax sum holds
    exp(sink) besides (ggml's soft_max_add_sinks)."""
    T, H, D = q.shape
    g = H // k.shape[1]
    k, v = xp.repeat(k, g, axis=1), xp.repeat(v, g, axis=1)
    out = xp.empty((T, H, D), np.float32)
    step = max(1, SCORES // (H * T))
    for q0 in range(0, T, step):
        s = xp.einsum("thd,shd->hts", q[q0 : q0 + step], k).astype(np.float32) * np.float32(scale)
        if rank is not None:
            far = xp.abs(rank[q0 : q0 + step, None] - rank[None, :]) > window
            s = xp.where(far[None], np.float32(-np.inf), s)
        m = s.max(axis=-1, keepdims=True)
        if sinks is not None:
            m = xp.maximum(m, sinks[:, None, None])
        e = xp.exp(s - m)
        den = e.sum(axis=-1, keepdims=True)
        if sinks is not None:
            den = den + xp.exp(sinks[:, None, None] - m)
        out[q0 : q0 + step] = xp.einsum("hts,shd->thd", e / den, v)
    return out.reshape(T, H * D)


class MimoVLEncoder(MmprojEncoder):
    """MiMo-V2.5's vision encoder and merger from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        E, p = cfg.n_embd, cfg.patch_size
        self.kernels = patch_kernels(g, E, p)
        modes = g.get("clip.vision.wa_pattern_mode")
        self.n_head_kv = int(g.get("clip.vision.attention.head_count_kv", 0) or 0)
        self.window = int(g.get("clip.vision.window_size", 0) or 0)
        if modes is None or len(modes) != cfg.n_layer or any(int(m) not in (-1, 0, 1) for m in modes):
            raise GGUFError(f"{g.path}: clip.vision.wa_pattern_mode is missing or not -1/0/1 for each of {cfg.n_layer} layers; "
                            "the mimovl projector file is incomplete")  # fmt: skip
        self.modes = [int(m) for m in modes]
        if int(g.get("clip.vision.spatial_merge_size", MERGE) or MERGE) != MERGE:  # (clip_graph_mimovl's patch order is 2x2's)
            raise GGUFError(f"{g.path}: clip.vision.spatial_merge_size is not {MERGE}; llama.cpp's mimovl graph merges 2x2")
        if self.n_head_kv <= 0 or cfg.n_head % self.n_head_kv or self.window <= 0:
            raise GGUFError(f"{g.path}: clip.vision.attention.head_count_kv ({self.n_head_kv}) or window_size ({self.window}) "
                            f"is missing or does not fit {cfg.n_head} heads; the mimovl projector file is incomplete")  # fmt: skip
        need = self._need(g)
        self.layers = []
        for i in range(cfg.n_layer):
            b = f"v.blk.{i}."
            L: dict[str, Any] = {r: need(b + r + ".weight") for r in ("ln1", "ln2")}
            for r in ("attn_qkv", "attn_out", "ffn_gate", "ffn_up", "ffn_down"):
                need(b + r + ".weight")
                L[r], L[r + "_b"] = Qwen2VLEncoder._named_matrix(ld, b + r + ".weight"), self._vector(g, b + r + ".bias")
            L["sinks"] = need(b + "attn_sinks") if self.modes[i] != -1 else None  # (clip.cpp requires them of window layers)
            self.layers.append(L)
        rows = self.layers[0]["attn_qkv"].n_rows  # (the product's outputs: clip.cpp's qkv_w->ne[1])
        self.head_dim = rows // (cfg.n_head + 2 * self.n_head_kv)
        if self.head_dim * (cfg.n_head + 2 * self.n_head_kv) != rows or self.head_dim % 4:
            raise GGUFError(f"{g.path}: v.blk.0.attn_qkv has {rows} outputs, not (n_head + 2 n_head_kv) heads of a width "
                            f"a multiple of 4 ({cfg.n_head} + 2 x {self.n_head_kv})")  # fmt: skip
        self.post_ln, self.post_ln_b = need("v.post_ln.weight"), self._vector(g, "v.post_ln.bias")
        need("mm.0.weight")
        self.mm0, self.mm2 = Qwen2VLEncoder._named_matrix(ld, "mm.0.weight"), Qwen2VLEncoder._named_matrix(ld, "mm.2.weight")

    def _need(self, g: GGUFFile) -> Any:
        def need(name: str) -> np.ndarray:
            v = self._vector(g, name)
            if v is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the mimovl projector file is incomplete")
            return v

        return need

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`~kvrun.models.qwen2vl_image.preprocess`; sides whole 2x2 blocks of
        patches) -> the rows [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: MimoVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`MimoVLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py): the patches (Qwen2-VL's),
    the blocks with grouped heads, banded windows with sinks by rows or by columns, the merger."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    T, H, Hkv, D = x.shape[0], c.n_head, enc.n_head_kv, enc.head_dim
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    ranks = {0: xp.asarray(np.arange(T)), 1: xp.asarray(column_rank(npx, npy))}
    scale = 1.0 / math.sqrt(D)
    for L, mode in zip(enc.layers, enc.modes):
        h = ops.rms_norm(x, L["ln1"], c.eps)
        qkv = ops.linear(L["attn_qkv"], h, L["attn_qkv_b"])
        q = qkv[:, : H * D].reshape(T, H, D)
        k = qkv[:, H * D : (H + Hkv) * D].reshape(T, Hkv, D)
        v = xp.ascontiguousarray(qkv[:, (H + Hkv) * D :]).reshape(T, Hkv, D)
        q, k = ops.rope_neox(q, k, cos, sin)
        sinks = None if mode == -1 else ops.vector(L["sinks"])
        a = attend(xp, q, k, v, ranks.get(mode), enc.window, sinks, scale)
        x = x + ops.linear(L["attn_out"], a, L["attn_out_b"])
        h = ops.rms_norm(x, L["ln2"], c.eps)
        act = ops.act(ops.linear(L["ffn_gate"], h, L["ffn_gate_b"]), c.ffn_op) * ops.linear(L["ffn_up"], h, L["ffn_up_b"])
        x = x + ops.linear(L["ffn_down"], act, L["ffn_down_b"])
    x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, POST_LN_EPS).reshape(T // 4, 4 * c.n_embd)  # (a block's 4 side by side)
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x), "gelu")), np.float32))
