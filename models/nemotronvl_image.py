"""Nemotron Nano VL's image side (NVIDIA's RADIO v2.5 ViT and its MLP projector), as llama.cpp's libmtmd prepares a
picture (``mtmd_image_preprocessor_fixed_size``) and clip.cpp encodes it (``clip_graph_nemotron_v2_vl`` for
PROJECTOR_TYPE_NEMOTRON_V2_VL), from an mmproj file (loaders/mmproj.py).

The picture.  libmtmd 0.3.36 cuts no tiles for Nemotron Nano VL: any picture is resized into one square of
``image_size`` (512 for RADIO) keeping its aspect (bicubic, sides rounded up) and centred on black (clip.cpp's
defaults, BICUBIC and PAD_CEIL: :func:`square`), one already that square kept as it is.  Then:

    pixels [3, S, S] -> patches of p x p, embedded by the patch kernel (F16, as ggml's conv_2d; no bias)
    -> + learned position embeddings, one a patch (the converter resamples RADIO's table to the fixed square)
    -> RADIO's CLS token and registers (``v.class_embd`` [n_registers, E], no positions) put BEFORE the patches
    -> n_layer pre-norm ViT blocks (clip.cpp's ``build_vit``: LayerNorm, biased attention, GELU MLP), ``v.post_ln``
    -> the register rows dropped -> 2x2 pixel shuffle (clip.cpp's ``build_patch_merge_permute``)
    -> RMSNorm (eps 1e-6, ``mm.model.mlp.0``) -> ``mlp.1``, squared ReLU, ``mlp.3`` (no biases)
    -> [(S/(p n_merge))^2, n_text_embd] (256 rows for RADIO's 512-pixel square of 16-pixel patches)

What sets it apart from InternVL's (models/internvl_image.py), whose pieces it reuses: several leading register rows
rather than one trailing CLS row, the positions added to the patches alone, an RMSNorm and a squared ReLU in the
projector, and no LayerScale.  ggml's CPU numerics are followed where they show, as models/siglip.py does.
runtime/vision_nemotronvl.py lays the rows out (no markers around them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .internvl_image import normalise, resize_padded  # (importing it names the mm.model.mlp.* roles, ivl_mlp*)
from .siglip import MmprojEncoder, embed_patches, vit_block, vit_layer
from .vit_ops import merge_permute, ops_of

F32 = np.float32
PROJ_EPS = 1e-6  # the projector's RMSNorm (clip.cpp's build_norm(..., NORM_TYPE_RMS, 1e-6))


def square(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> the encoder's square [S, S, 3]: resized keeping its aspect (bicubic, Pillow's
    as the oracle's clip.cpp runs it) and centred on black; a picture already S x S is kept."""
    return resize_padded(img, cfg.image_size, cfg.image_size)


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, S, S] (:func:`square`, then ImageNet's mean and std as the
    file states them)."""
    return normalise(square(img, cfg), cfg)


class NemotronVLEncoder(MmprojEncoder):
    """Nemotron Nano VL's RADIO ViT and projector from an mmproj file: :meth:`encode` a square's pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend)
        E, n = cfg.n_embd, cfg.n_patches_side**2
        reg = g.tensors.get("v.class_embd")
        if reg is None:
            raise KvrunError(f"{g.path}: tensor 'v.class_embd' is missing; the nemotron_v2_vl projector file is incomplete (RADIO's CLS token and registers)")
        if reg.n_elements % E:
            raise KvrunError(f"{g.path}: v.class_embd has shape {reg.shape}, not rows of the encoder's width {E}")
        self.registers = dequantize(reg.data, reg.qtype, reg.shape).reshape(-1, E).astype(F32)
        pos = g.tensor("v.position_embd.weight")
        if pos.n_elements != n * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n, E)} (one row a patch)")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n, E).astype(F32)
        if cfg.n_merge < 2:
            raise KvrunError(f"{g.path}: clip.vision.projector.scale_factor is {cfg.n_merge}; clip.cpp's nemotron_v2_vl graph merges at least 2x2")
        # (the ViT MLP's activation as clip.cpp reads any file's: GELU where use_gelu, SiLU where use_silu, else GELU-quick)
        self.ffn_op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mlp0 = ld.host_vector("ivl_mlp0")
        self.mlp1, self.mlp3 = ld.matrix("ivl_mlp1"), ld.matrix("ivl_mlp3")

    @property
    def n_registers(self) -> int:
        return self.registers.shape[0]

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (:func:`preprocess`) -> the picture's rows [(S/(p n_merge))^2, n_text_embd]."""
        S = self.cfg.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the Nemotron Nano VL encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def relu_sqr(ops: Any, x: Any) -> Any:
    """ggml's FFN_RELU_SQR: relu(x) squared (float32, exact on either device)."""
    r = ops.xp.maximum(x, F32(0.0))
    return r * r


def _forward(ops: Any, enc: NemotronVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`NemotronVLEncoder.encode` past its check on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches plus their positions, the register rows before them,
    the ViT blocks, the post norm, the registers dropped, the 2x2 shuffle, the projector's RMSNorm and squared-ReLU
    MLP."""
    c, xp = enc.cfg, ops.xp
    n = c.n_patches_side
    x = embed_patches(ops, enc, pixels) + ops.const(enc.pos_embd)
    x = xp.concatenate([ops.const(enc.registers), x])  # (ggml_concat(class_embedding, inp): the registers first)
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, enc.ffn_op)
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    x = xp.ascontiguousarray(merge_permute(x[enc.n_registers :], n, n, c.n_merge))  # (the register rows dropped)
    h = relu_sqr(ops, ops.linear(enc.mlp1, ops.rms_norm(x, enc.mlp0, PROJ_EPS)))
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mlp3, h), F32))
