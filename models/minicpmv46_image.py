"""MiniCPM-V 4.6's image side (projector type "minicpmv4_6"), as llama.cpp's libmtmd runs it (``clip_graph_minicpmv4_6``),
from an mmproj file (loaders/mmproj.py).

What sets it apart from MiniCPM-V 2.5 to 4.5 (projector type "resampler", models/minicpmv_image.py, whose slicing,
bucketed learned positions and SigLIP blocks this reuses): no perceiver resampler and no fixed count of rows a part.
A part's rows are its patches merged 4 x 4 (``clip.vision.projector.scale_factor`` 4, clip.cpp's default) by two 2 x 2
mergers, so a part of h x w pixels becomes (h/p/4)(w/p/4) rows (64 for a 448-pixel slice), and slices are cut in
whole blocks of 4 x 4 patches:

    pixels [3, h, w] -> patches (the F16 kernel) + bias + the 70 x 70 learned positions bucketed (as MiniCPM-V's)
    -> ViT blocks 0..insert (``clip.vision.wa_layer_indexes[0]``) at full resolution
    -> the ViT merger: LayerNorm ``v.vit_merger.ln1``, attention within each 2 x 2 window of patches (``attn_q/k/v/out``
       with biases, the ViT's heads), plus the residual; then each 2 x 2 window's four patches side by side ([top left,
       top right, bottom left, bottom right]) LayerNormed (``ds_ln``) through a GELU (tanh) MLP (``ds_ffn_up``,
       ``ds_ffn_down``), plus the four's mean
    -> the remaining ViT blocks on the half-resolution grid -> ``v.post_ln``
    -> the final merger: each 2 x 2 window side by side, LayerNorm ``mm.input_norm``, ``mm.up``, GELU (erf),
       ``mm.down`` into the text width.

With ``scale_factor`` 2 (libmtmd's "4x" variant) the ViT merger is left out: every block runs at full resolution and
the final merger alone merges 2 x 2, and a picture no larger than a slice is scaled keeping its aspect (whole blocks
of 2 x 2 patches, up to about a slice's area) rather than stretched to a square slice.  ggml's CPU numerics are
followed where they show, as models/minicpmv_image.py does.  The layout is MiniCPM-V 2.6's (runtime/vision_minicpmv.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .minicpmv_image import POS_SIDE, Cut, Plan, best_resize, bucket_positions, cut, plan
from .siglip import SiglipEncoder, vit_layer
from .vit_ops import ops_of

F32 = np.float32
#: the mergers' norms and products, weight and bias each (clip.cpp's TN_VIT_MERGER_* and the final merger's): role -> name
MERGER_TENSORS = {"m46v_ln1": "v.vit_merger.ln1", "m46v_q": "v.vit_merger.attn_q", "m46v_k": "v.vit_merger.attn_k",
                  "m46v_v": "v.vit_merger.attn_v", "m46v_o": "v.vit_merger.attn_out", "m46v_ds_ln": "v.vit_merger.ds_ln",
                  "m46v_up": "v.vit_merger.ds_ffn_up", "m46v_down": "v.vit_merger.ds_ffn_down",
                  "m46_ln": "mm.input_norm", "m46_up": "mm.up", "m46_down": "mm.down"}  # fmt: skip
TENSOR_NAMES.update({r: n + ".weight" for r, n in MERGER_TENSORS.items()})
TENSOR_NAMES.update({r + "_b": n + ".bias" for r, n in MERGER_TENSORS.items()})
TENSOR_NAMES.update({"v_pre_ln": "v.pre_ln.weight", "v_pre_ln_b": "v.pre_ln.bias"})


def plan46(width: int, height: int, cfg: MmprojConfig) -> Plan:
    """libmtmd's slice instructions for MiniCPM-V 4.6: MiniCPM-V's (blocks of ``n_merge`` patches), except that with
    scale_factor 2 a picture no larger than a slice's area is scaled keeping its aspect, not stretched to a square."""
    S = cfg.image_size
    if cfg.n_merge == 2 and width * height <= S * S:
        return Plan(best_resize(width, height, S, cfg.patch_size * 2, True), 0, 0, (0, 0))
    return plan(width, height, cfg)


def cut46(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its overview and slices, as :func:`plan46` says."""
    pl = plan46(img.shape[1], img.shape[0], cfg)
    if cfg.n_merge == 2 and not pl.n_cols:
        from .minicpmv_image import resize

        return Cut(resize(img, *pl.overview), 0, 0, [])
    return cut(img, cfg)


def window_order(ny: int, nx: int) -> np.ndarray:
    """The patches of an ny x nx grid in 2 x 2 window-major order (clip.cpp's ``vit_merger_window_idx``)."""
    i, j = np.meshgrid(np.arange(ny // 2), np.arange(nx // 2), indexing="ij")
    quads = [(2 * i + r) * nx + (2 * j + c) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))]
    return np.stack(quads, axis=-1).reshape(-1)


def quads(x: Any, ny: int, nx: int) -> list[Any]:
    """Rows [ny * nx, d] of a grid -> its 2 x 2 windows' top left, top right, bottom left, bottom right rows, each
    [(ny/2)(nx/2), d] in raster order of the windows (clip.cpp's ``*_ds_idx_0..3``)."""
    g = x.reshape(ny // 2, 2, nx // 2, 2, -1)  # (either device's rows: array methods alone)
    return [g[:, r, :, c].reshape((ny // 2) * (nx // 2), -1) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))]


class MiniCPMV46Encoder(SiglipEncoder):
    """MiniCPM-V 4.6's SigLIP encoder with its ViT merger and final merger from an mmproj file: :meth:`encode` a part's
    pixels into its rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:  # (SiglipEncoder's loader wants (S/p)^2 positions)
        ld = self._begin(g, cfg, backend)
        E = cfg.n_embd
        pos = g.tensor("v.position_embd.weight")
        if pos.n_elements != POS_SIDE * POS_SIDE * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(POS_SIDE * POS_SIDE, E)} (clip.cpp's 70 x 70 buckets)")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(-1, E).astype(F32)
        self.pre_ln, self.pre_ln_b = ld.host_vector("v_pre_ln", required=False), ld.host_vector("v_pre_ln_b", required=False)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.vit_merger: dict[str, Any] | None = None
        if cfg.n_merge == 4:
            idx = g.get("clip.vision.wa_layer_indexes")
            if not idx:  # (clip.cpp reads it without a default of its own: a file without it is not MiniCPM-V 4.6's)
                raise GGUFError(f"{g.path}: clip.vision.wa_layer_indexes (the ViT merger's layer) is missing; the projector file is incomplete")
            self.insert = int(list(idx)[0])
            if not 0 <= self.insert < cfg.n_layer - 1:
                raise GGUFError(f"{g.path}: clip.vision.wa_layer_indexes puts the ViT merger after layer {self.insert} of {cfg.n_layer}")
            self.vit_merger = self._load(ld, "m46v")
        self.merger = self._load(ld, "m46")

    def _load(self, ld: WeightLoader, prefix: str) -> dict[str, Any]:
        """A merger's (roles ``prefix*``) norms, float32 on the host, and products, each with its bias (required, as
        clip.cpp's loader: a missing one is named in one line), under the role's last part."""
        out: dict[str, Any] = {}
        for role in (r for r in MERGER_TENSORS if r.startswith(prefix + "_")):
            key = role[len(prefix) + 1 :]
            out[key] = ld.host_vector(role) if key in ("ln1", "ds_ln", "ln") else ld.matrix(role)
            out[key + "_b"] = ld.host_vector(role + "_b")
        return out

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, h, w] (one part, sides whole blocks of ``n_merge`` patches) -> its rows
        [(h/p/n_merge)(w/p/n_merge), n_text_embd]."""
        p, m = self.cfg.patch_size, self.cfg.n_merge
        _, h, w = pixels.shape
        if pixels.shape[0] != 3 or h % (p * m) or w % (p * m) or not h or not w:
            raise KvrunError(f"the MiniCPM-V 4.6 encoder takes pixels [3, h, w] of whole {p * m}-pixel blocks, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)

    def _attention(self, L: dict[str, Any], hh: Any, group: int) -> Any:
        """Self-attention of ``hh`` [T, E] (products with biases, the ViT's heads) within consecutive groups of
        ``group`` rows (all of them: one group), on the encoder's device (models/vit_ops.py)."""
        ops, c = ops_of(self), self.cfg
        T, H = hh.shape[0], c.n_head
        D = c.n_embd // H
        q, k, v = (ops.linear(L[r], hh, L[r + "_b"]).reshape(T // group, group, H, D) for r in ("q", "k", "v"))
        scale = F32(1.0 / math.sqrt(D))
        a = ops.attend(q[0], k[0], v[0], scale) if group == T else ops.attend_batched(q, k, v, scale)  # (windows of 4: all at once)
        return ops.linear(L["o"], a, L["o_b"])


def _forward(ops: Any, enc: MiniCPMV46Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`MiniCPMV46Encoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), a part a call: the patches and the bucketed position rows,
    ``v.pre_ln``, SigLIP's blocks up to the insert layer, the ViT merger (:func:`_vit_merger`), the remaining blocks,
    the post LayerNorm, the final merger (each 2 x 2 window's patches LayerNormed, ``mm.up``, GELU(erf), ``mm.down``)."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = ops.embed_patches(pixels) + ops.vector(enc.pos_embd[bucket_positions(ny, nx)])
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    for L in enc.layers if enc.vit_merger is None else enc.layers[: enc.insert + 1]:
        x = ops.vit_block(L, x, "gelu")
    if enc.vit_merger is not None:
        x = _vit_merger(ops, enc, x, ny, nx)
        ny, nx = ny // 2, nx // 2
        for L in enc.layers[enc.insert + 1 :]:
            x = ops.vit_block(L, x, "gelu")
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    M = enc.merger
    y = ops.layer_norm(xp.concatenate(quads(x, ny, nx), axis=1), M["ln"], M["ln_b"], c.eps)
    y = ops.linear(M["down"], ops.act(ops.linear(M["up"], y, M["up_b"]), "gelu_erf"), M["down_b"])
    return ops.to_host(xp.ascontiguousarray(y, F32))


def _vit_merger(ops: Any, enc: MiniCPMV46Encoder, x: Any, ny: int, nx: int) -> Any:
    """The ViT merger: attention within 2 x 2 windows (the rows in :func:`window_order`, plus the residual), then each
    window's 4 patches into one row: their MLP'd LayerNormed concatenation plus their mean.  [ny * nx, E] ->
    [(ny/2)(nx/2), E]."""
    V, c, xp = enc.vit_merger, enc.cfg, ops.xp
    assert V is not None
    eps = c.eps
    order = xp.asarray(window_order(ny, nx))
    hh = ops.layer_norm(x, V["ln1"], V["ln1_b"], eps)[order]
    a = xp.empty_like(x)
    a[order] = enc._attention(V, hh, 4)
    x = x + a
    parts = quads(x, ny, nx)
    mean = (parts[0] + parts[1] + parts[2] + parts[3]) * F32(0.25)
    y = ops.layer_norm(xp.concatenate(parts, axis=1), V["ds_ln"], V["ds_ln_b"], eps)
    return ops.linear(V["down"], ops.act(ops.linear(V["up"], y, V["up_b"]), "gelu"), V["down_b"]) + mean
