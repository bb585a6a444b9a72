"""Granite 4 Vision's image side (projector type "granite4_vision": Granite Vision 4.1), as llama.cpp's libmtmd 0.3.36
prepares a picture (``mtmd_image_preprocessor_granite``) and clip.cpp encodes it (``clip_graph_granite4_vision``),
from an mmproj file.

The picture (llava-next's "anyres", always tiled, however small): the best of the file's pinpoint grids (llava's
``select_best_resolution``: the grid showing the most of the picture's pixels, then wasting the least), the picture
fitted into it keeping its aspect on black (Pillow's bicubic, sides rounded up: PAD_CEIL) and cut row by row into
``image_size`` tiles, after an overview, the picture stretched to one tile (bicubic, no padding).  libmtmd stacks
them [overview, tile (0, 0), tile (0, 1), ...] and encodes them in one graph, each tile on its own:

    pixels -> patches (F16 kernel, + bias) + learned positions -> the SigLIP blocks (pre-norm, GELU; ``v.post_ln`` is
    not run), every layer's output kept
    -> for each WindowQFormer block k (one per ``clip.vision.feature_layer`` entry, that layer's output):
       LayerNorm (``norm``, the encoder's epsilon) -> x [side, side]
       the encoder side: x cut into windows of ``window_side``^2 patches, + ``img_pos``
       the queries: x brought down to ``new_side`` = side / window_side * query_side a side (spatial offset -1:
       averaged in blocks; 0..3: the pixel (offset >> 1, offset & 1) of each 2x2, which needs a ratio of 1/2), cut
       into windows of ``query_side``^2, + ``query``; LayerNorm (``post_norm``, epsilon 1e-12)
       one QFormer layer per window (heads 64 wide, as clip.cpp fixes them): self-attention + residual, LayerNorm;
       cross-attention to the window's encoder side + residual, LayerNorm; MLP (exact GELU) + residual, LayerNorm
       -> the windows back into raster order -> ``linear`` (+ bias) -> [new_side^2, projection_dim]
    -> the blocks side by side -> [new_side^2, K * projection_dim]

and the assembly (``build_anyres_assembly``): the overview's rows, then the tiles' grid read as one raster
(grid_x * new_side wide), less the rows and columns that cover only the padding (llava-next's ``unpad_image``), each
of its rows followed by the newline row (``v.image_newline`` repeated K times).

The rows are K * projection_dim wide: Granite 4.1 Vision's text model (granite with ``deepstack_mapping``) takes the
first projection_dim as the embedding and adds the others at the layers its mapping names; kvrun runs the text models
that take the whole row as their input (K * projection_dim = n_embd, no mapping: runtime/vision_granite4.py).

ggml's CPU numerics are followed where they show, as models/siglip.py does; the forward is written once against
models/vit_ops.py's ops, so it runs on the GPU too.  runtime/vision_granite4.py lays the rows out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .internvl_image import best_resolution, normalise
from .llava_image import fit_padded, pinpoints
from .pillow_resize import BICUBIC, resize_axes
from .siglip import MmprojEncoder, embed_patches, vit_block, vit_layer
from .vit_ops import ops_of

F32 = np.float32
#: clip.cpp's WindowQFormer: heads 64 wide, its LayerNorms' epsilon after the first
QF_HEAD, QF_EPS = 64, 1e-12
#: the WindowQFormer block's tensors (clip.cpp's TN_MULTI_PROJ_* and TN_QF_*), each with ``.weight`` and ``.bias``
QF_PARTS = ("norm", "post_norm", "self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out", "self_attn_norm", "cross_attn_q",
            "cross_attn_k", "cross_attn_v", "cross_attn_out", "cross_attn_norm", "ffn_up", "ffn_down", "ffn_norm", "linear")  # fmt: skip
#: of those, the products (the rest are LayerNorms)
QF_PRODUCTS = ("self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out", "cross_attn_q", "cross_attn_k", "cross_attn_v",
               "cross_attn_out", "ffn_up", "ffn_down", "linear")  # fmt: skip

TENSOR_NAMES.update({f"g4v_{p}": f"v.proj_blk.{{i}}.{p}.weight" for p in QF_PARTS})
TENSOR_NAMES.update({f"g4v_{p}_b": f"v.proj_blk.{{i}}.{p}.bias" for p in QF_PARTS})
TENSOR_NAMES["g4v_newline"] = "v.image_newline"


# ---------------------------------------------------------------- the picture


@dataclass
class Tiles:
    """A picture as libmtmd prepares it for Granite 4 Vision: the overview then the tiles row by row, each uint8 RGB
    [S, S, 3]; the grid (columns, rows) and the picture's own size (for the unpadding)."""

    images: list[np.ndarray]
    grid_x: int
    grid_y: int
    width: int
    height: int


def grid(width: int, height: int, size: int, cands: list[tuple[int, int]]) -> tuple[int, int]:
    """(columns, rows) of tiles a width x height picture is cut into: the best of the pinpoint grids ``cands``."""
    w, h = best_resolution(width, height, cands)
    return w // size, h // size


def tiles(img: np.ndarray, size: int, cands: list[tuple[int, int]]) -> Tiles:
    """uint8 RGB ``img`` [h, w, 3] -> its overview (stretched to a tile) and its tiles (fitted on black into the grid)."""
    h, w = img.shape[:2]
    overview = img if (w, h) == (size, size) else resize_axes(img, size, size, BICUBIC)
    gx, gy = grid(w, h, size, cands)
    refined = fit_padded(img, gx * size, gy * size, (0, 0, 0))
    cut = [np.ascontiguousarray(refined[y : y + size, x : x + size]) for y in range(0, gy * size, size) for x in range(0, gx * size, size)]
    return Tiles([overview, *cut], gx, gy, w, h)


def unpad(cur_w: int, cur_h: int, orig_w: int, orig_h: int) -> tuple[int, int, int, int]:
    """clip.cpp's ``clip_anyres_unpad``: (off_x, off_y, w, h) of the rows kept of a cur_w x cur_h grid of rows once
    those covering only the padding of an orig_w x orig_h picture are dropped (ratios compared in float32)."""
    if F32(orig_w) / F32(orig_h) > F32(cur_w) / F32(cur_h):
        new_h = math.floor(orig_h * cur_w / orig_w + 1e-7)
        off = (cur_h - new_h) // 2
        return 0, off, cur_w, cur_h - 2 * off
    new_w = math.floor(orig_w * cur_h / orig_h + 1e-7)
    off = (cur_w - new_w) // 2
    return off, 0, cur_w - 2 * off, cur_h


# ---------------------------------------------------------------- the encoder


class Granite4VisionEncoder(MmprojEncoder):
    """Granite 4 Vision's SigLIP tower and WindowQFormer projector from an mmproj file: :meth:`encode` a picture's
    tiles into its rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend)
        E, side = cfg.n_embd, cfg.n_patches_side
        pos = g.tensor("v.position_embd.weight")
        if pos.n_elements != side * side * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(side * side, E)}")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(side * side, E).astype(F32)
        self.ffn_op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        layers, offsets = g.get("clip.vision.feature_layer"), g.get("clip.vision.projector.spatial_offsets")
        win, qs = g.get("clip.vision.projector.window_side"), g.get("clip.vision.projector.query_side")
        if layers is None or offsets is None or win is None or qs is None:
            raise KvrunError(f"{g.path}: clip.vision.feature_layer, projector.spatial_offsets, window_side or query_side is missing; "
                             "the Granite 4 Vision projector file is incomplete")  # fmt: skip
        self.feature_layers, self.offsets = [int(v) for v in layers], [int(v) for v in offsets]
        self.window, self.query = int(win), int(qs)
        K = len(self.feature_layers)
        if K == 0 or len(self.offsets) != K:
            raise KvrunError(f"{g.path}: {K} feature layers and {len(self.offsets)} spatial offsets; Granite 4 Vision pairs them")
        if any(not 0 <= v < cfg.n_layer for v in self.feature_layers):
            raise KvrunError(f"{g.path}: feature layers {self.feature_layers} are not all of the encoder's {cfg.n_layer} layers")
        if self.window <= 0 or self.query <= 0 or side % self.window or E % QF_HEAD:
            raise UnsupportedModelError(f"{g.path}: windows of {self.window} on {side} patches a side, or width {E} not whole "
                                        f"{QF_HEAD}-wide heads; libmtmd's Granite 4 Vision graph needs both")  # fmt: skip
        for o in self.offsets:  # (clip.cpp: -1 pools down by window/query; 0..3 picks one of each 2x2)
            if o >= 4 or o < -1 or (o >= 0 and 2 * self.query != self.window) or (o < 0 and self.window % self.query):
                raise UnsupportedModelError(f"{g.path}: spatial offset {o} with windows of {self.window} queried by {self.query}; "
                                            "libmtmd's graph averages whole blocks or picks one of each 2x2")  # fmt: skip
        self.cands = pinpoints(g)
        if not self.cands:
            raise KvrunError(f"{g.path}: clip.vision.image_grid_pinpoints is missing; the Granite 4 Vision projector file is incomplete")
        self.layers = [vit_layer(ld, i) for i in range(max(self.feature_layers) + 1)]  # (the layers past the deepest unread)
        self.blocks: list[dict[str, Any]] = []
        for k in range(K):
            B = {p: (ld.matrix(f"g4v_{p}", k) if p in QF_PRODUCTS else ld.host_vector(f"g4v_{p}", k)) for p in QF_PARTS}
            B.update({p + "_b": ld.host_vector(f"g4v_{p}_b", k) for p in QF_PARTS})
            for name, n in (("img_pos", self.window**2), ("query", self.query**2)):
                t = g.tensors.get(f"v.proj_blk.{k}.{name}")
                if t is None:
                    raise KvrunError(f"{g.path}: tensor 'v.proj_blk.{k}.{name}' is missing; the Granite 4 Vision projector file is incomplete")
                if t.n_elements != n * E:
                    raise KvrunError(f"{g.path}: v.proj_blk.{k}.{name} has shape {t.shape}, expected {(n, E)}")
                B[name] = dequantize(t.data, t.qtype, t.shape).reshape(n, E).astype(F32)
            self.blocks.append(B)
        P = cfg.n_text_embd // K  # (loaders/mmproj.py: K times block 0's ``linear``, one block's projection_dim)
        self.newline = ld.host_vector("g4v_newline")
        if self.newline.size != P:
            raise KvrunError(f"{g.path}: v.image_newline has {self.newline.size} values, expected the projection's {P}")

    @property
    def out_side(self) -> int:
        """Rows a side each tile becomes (clip.cpp's ``out_side``)."""
        return self.cfg.n_patches_side // self.window * self.query

    def n_rows(self, width: int, height: int) -> int:
        """Rows a width x height picture becomes: the overview's, then the unpadded grid's with a newline each row."""
        n = self.out_side
        gx, gy = grid(width, height, self.cfg.image_size, self.cands)
        _, _, w, h = unpad(gx * n, gy * n, width, height)
        return n * n + h * (w + 1)

    def prepare(self, img: np.ndarray) -> Tiles:
        """uint8 RGB ``img`` [h, w, 3] -> its :class:`Tiles` (libmtmd's preprocessing)."""
        return tiles(img, self.cfg.image_size, self.cands)

    def encode_tiles(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Normalised tiles [3, S, S] -> each one's rows [n_tiles, out_side^2, n_text_embd] (on either device, the rows
        down once)."""
        S = self.cfg.image_size
        for p in pixels:
            if p.shape != (3, S, S):
                raise KvrunError(f"the Granite 4 Vision encoder takes pixels [3, {S}, {S}], got {list(p.shape)}")
        return _forward(ops_of(self), self, pixels)

    def encode(self, img: np.ndarray) -> np.ndarray:
        """uint8 RGB ``img`` [h, w, 3] -> its rows [:meth:`n_rows`, n_text_embd]: the overview's, then the grid's."""
        t = self.prepare(img)
        rows = self.encode_tiles([normalise(x, self.cfg) for x in t.images])
        return assemble(rows, t.grid_x, t.grid_y, t.width, t.height, np.tile(self.newline, len(self.blocks)))


def windows(xp: Any, x: Any, n_tiles: int, side: int, win: int) -> Any:
    """Rows of ``n_tiles`` raster grids side x side [n_tiles * side^2, E] -> their windows [n_tiles * (side/win)^2, win^2,
    E], windows in raster order within a tile, rows in raster order within a window (clip.cpp's ``make_win_idx``)."""
    n, E = side // win, x.shape[-1]
    t = x.reshape(n_tiles, n, win, n, win, E).transpose(0, 1, 3, 2, 4, 5)
    return xp.ascontiguousarray(t).reshape(n_tiles * n * n, win * win, E)


def unwindows(xp: Any, x: Any, n_tiles: int, side: int, win: int) -> Any:
    """:func:`windows` undone: [n_tiles * (side/win)^2, win^2, E] -> [n_tiles * side^2, E]."""
    n, E = side // win, x.shape[-1]
    t = x.reshape(n_tiles, n, n, win, win, E).transpose(0, 1, 3, 2, 4, 5)
    return xp.ascontiguousarray(t).reshape(n_tiles * side * side, E)


def _attend(ops: Any, q: Any, k: Any, v: Any, n_win: int) -> Any:
    """Attention within each window: q [n_win * nq, E], k and v [n_win * nk, E], heads of 64 -> [n_win * nq, E]; the
    windows' heads as the heads of one attention (``ops.attend``: the keys may outnumber the queries)."""
    xp, E = ops.xp, q.shape[-1]
    H = E // QF_HEAD

    def heads(t: Any) -> Any:  # [n_win * n, E] -> [n, n_win * H, 64]
        n = t.shape[0] // n_win
        return xp.ascontiguousarray(t.reshape(n_win, n, H, QF_HEAD).transpose(1, 0, 2, 3)).reshape(n, n_win * H, QF_HEAD)

    a = ops.attend(heads(q), heads(k), heads(v), F32(1.0 / math.sqrt(QF_HEAD)))
    nq = q.shape[0] // n_win
    return xp.ascontiguousarray(a.reshape(nq, n_win, E).transpose(1, 0, 2)).reshape(n_win * nq, E)


def _qformer_block(ops: Any, enc: Granite4VisionEncoder, B: dict[str, Any], h: Any, n_tiles: int, offset: int) -> Any:
    """One WindowQFormer block (clip.cpp's ``build_block``) on a feature layer's rows ``h`` [n_tiles * side^2, E]:
    -> [n_tiles * new_side^2, projection_dim]."""
    xp, c = ops.xp, enc.cfg
    side, win, qs = c.n_patches_side, enc.window, enc.query
    new_side, E = side // win * qs, h.shape[-1]
    n_win = n_tiles * (side // win) ** 2

    def lin(p: str, x: Any) -> Any:
        return ops.linear(B[p], xp.ascontiguousarray(x), B[p + "_b"])

    def norm(p: str, x: Any, eps: float = QF_EPS) -> Any:
        return ops.layer_norm(xp.ascontiguousarray(x), B[p], B[p + "_b"], eps)

    x = norm("norm", h, c.eps)
    enc_in = (windows(xp, x, n_tiles, side, win) + ops.const(B["img_pos"])).reshape(-1, E)
    if offset >= 0:  # (one pixel of each 2x2: row offset >> 1, column offset & 1)
        d = x.reshape(n_tiles, new_side, 2, new_side, 2, E)[:, :, (offset >> 1) & 1, :, offset & 1, :]
    else:  # (ggml_pool_2d's average over blocks of window/query a side; tiles stacked, blocks never straddle two)
        d = ops.avg_pool(x, side, n_tiles * side, side // new_side)
    q = norm("post_norm", (windows(xp, xp.ascontiguousarray(d), n_tiles, new_side, qs) + ops.const(B["query"])).reshape(-1, E))
    a = _attend(ops, lin("self_attn_q", q), lin("self_attn_k", q), lin("self_attn_v", q), n_win)
    q = norm("self_attn_norm", lin("self_attn_out", a) + q)
    a = _attend(ops, lin("cross_attn_q", q), lin("cross_attn_k", enc_in), lin("cross_attn_v", enc_in), n_win)
    q = norm("cross_attn_norm", lin("cross_attn_out", a) + q)
    q = norm("ffn_norm", lin("ffn_down", ops.act(lin("ffn_up", q), "gelu_erf")) + q)
    return lin("linear", unwindows(xp, q.reshape(n_win, qs * qs, E), n_tiles, new_side, qs))


def _forward(ops: Any, enc: Granite4VisionEncoder, pixels: list[np.ndarray]) -> np.ndarray:
    """:meth:`Granite4VisionEncoder.encode_tiles` past its check on either device's ``ops`` (models/vit_ops.py): each
    tile through the ViT, its layers' outputs kept; each WindowQFormer block on its layer's, all tiles at once; the
    blocks side by side."""
    xp, n_tiles = ops.xp, len(pixels)
    outs: list[list[Any]] = [[] for _ in enc.layers]
    for px in pixels:  # (each tile attends within itself: clip.cpp batches them as a 4-D attention)
        x = embed_patches(ops, enc, px) + ops.const(enc.pos_embd)
        for il, L in enumerate(enc.layers):
            x = vit_block(ops, enc, L, x, enc.ffn_op)
            outs[il].append(x)
    feats = [xp.concatenate(o) if len(o) > 1 else o[0] for o in outs]
    streams = [_qformer_block(ops, enc, B, feats[v], n_tiles, o) for B, v, o in zip(enc.blocks, enc.feature_layers, enc.offsets)]
    rows = xp.concatenate(streams, axis=-1) if len(streams) > 1 else streams[0]
    return ops.to_host(xp.ascontiguousarray(rows, F32)).reshape(n_tiles, enc.out_side**2, -1)


def assemble(rows: np.ndarray, grid_x: int, grid_y: int, width: int, height: int, newline: np.ndarray) -> np.ndarray:
    """clip.cpp's ``build_anyres_assembly``: the tiles' rows [1 + grid_x * grid_y, n^2, D] (the overview first) ->
    the overview's rows, then the grid as one raster (grid_x * n wide) unpadded for a width x height picture, a
    ``newline`` row after each of its rows."""
    n, D = int(round(math.sqrt(rows.shape[1]))), rows.shape[-1]
    g = rows[1:].reshape(grid_y, grid_x, n, n, D).transpose(0, 2, 1, 3, 4).reshape(grid_y * n, grid_x * n, D)
    ox, oy, w, h = unpad(grid_x * n, grid_y * n, width, height)
    g = g[oy : oy + h, ox : ox + w]
    g = np.concatenate([g, np.broadcast_to(newline.astype(F32), (h, 1, D))], axis=1).reshape(-1, D)
    return np.ascontiguousarray(np.concatenate([rows[0], g]), F32)
