"""CogVLM's image side, as llama.cpp's clip.cpp builds it (``clip_graph_cogvlm`` for projector type "cogvlm") from an
mmproj file (loaders/mmproj.py): THUDM's EVA2-CLIP ViT and CogVLM's GLU projector with its begin/end-of-image rows.

    pixels [3, S, S] (the picture resized to image_size as libmtmd's fixed-size preprocessor does: scaled to fit,
       sides rounded up, clip.cpp's port of Pillow's bicubic filter, centred on LLaVA's mean colour (122, 116, 104);
       models/janus_image.py's :func:`~kvrun.models.janus_image.preprocess`; normalised)
    -> patch embedding (+ bias); the CLS token ``v.class_embd`` appended *after* the patches; + learned positions
       (``v.position_embd``, n_patches + 1 rows, the CLS token's last)
    -> n_layer *post*-norm blocks: attention from one fused ``attn_qkv`` (+ bias; Q's rows, then K's, then V's), its
       output (+ bias) LayerNorm-ed (``ln1``) then added to the residual; the MLP (up, the ViT's activation, down,
       biases; a gate where the file has one) LayerNorm-ed (``ln2``) then added
    -> the CLS token dropped
    -> ``mm.model.fc`` (no bias), LayerNorm ``mm.post_fc_norm`` (eps 1e-5), GELU,
       SiLU(``mm.gate``) * ``mm.up``, ``mm.down`` -> [n_patches, n_text_embd]
    -> ``v.boi`` before the rows and ``v.eoi`` after (clip.cpp concatenates them in its graph: part of the image)

so a picture is (image_size / patch_size)^2 + 2 rows whatever its size.  The text model runs them through its
visual expert (models/cogvlm.py); runtime/vision_cogvlm.py lays them out with no marker tokens.  ggml's CPU numerics
are followed where they show, as models/siglip.py does.
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
from .janus_image import preprocess as fixed_size
from .siglip import MmprojEncoder, patch_kernel
from .vit_ops import ops_of

F32 = np.float32
PAD = (122, 116, 104)  #: the pad colour around a picture not square (clip.cpp's image_pad_color for cogvlm, LLaVA's)
FC_NORM_EPS = 1e-5  # mm.post_fc_norm's epsilon (clip.cpp's, fixed)

TENSOR_NAMES.update({  # CogVLM's (clip.cpp's TN_ATTN_QKV, TN_MM_PROJECTOR, TN_MM_POST_FC_NORM, TN_MM_H_TO_4H, TN_MM_GATE, TN_MM_4H_TO_H)
    "cv_qkv": "v.blk.{i}.attn_qkv.weight", "cv_qkv_b": "v.blk.{i}.attn_qkv.bias",
    "cv_gate": "v.blk.{i}.ffn_gate.weight", "cv_gate_b": "v.blk.{i}.ffn_gate.bias",
    "cv_fc": "mm.model.fc.weight", "cv_fc_norm": "mm.post_fc_norm.weight", "cv_fc_norm_b": "mm.post_fc_norm.bias",
    "cv_up": "mm.up.weight", "cv_gate_mm": "mm.gate.weight", "cv_down": "mm.down.weight",
})  # fmt: skip


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, S, S] float32, on CogVLM's pad colour."""
    return fixed_size(img, cfg, PAD)


class CogVLMEncoder(MmprojEncoder):
    """CogVLM's EVA2-CLIP encoder and GLU projector from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E = cfg.n_embd
        self.patch_w = patch_kernel(g, cfg)
        self.patch_b = ld.host_vector("v_patch_b", required=False)
        self.cls = self._host(g, "v.class_embd", E)
        n_pos = cfg.n_patches_side**2 + 1
        self.pos_embd = self._host(g, "v.position_embd.weight", n_pos * E).reshape(n_pos, E)
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = dict(zip(("q", "k", "v"), ld.matrix_rows("cv_qkv", i, (E, E, E))))
            b = ld.host_vector("cv_qkv_b", i, required=False)
            L["q_b"], L["k_b"], L["v_b"] = (None, None, None) if b is None else np.split(b, 3)
            for r, role in (("o", "v_o"), ("up", "v_up"), ("down", "v_down"), ("gate", "cv_gate")):
                L[r], L[r + "_b"] = ld.matrix(role, i, required=r != "gate"), ld.host_vector(role + "_b", i, required=False)
            for r in ("ln1", "ln2"):  # (after the attention and after the MLP: EVA2-CLIP's post-norm blocks)
                L[r], L[r + "_b"] = ld.host_vector(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            self.layers.append(L)
        self.fc = ld.matrix("cv_fc")
        self.fc_norm, self.fc_norm_b = ld.host_vector("cv_fc_norm"), ld.host_vector("cv_fc_norm_b")
        self.up, self.gate, self.down = ld.matrix("cv_up"), ld.matrix("cv_gate_mm"), ld.matrix("cv_down")
        self.boi = self._host(g, "v.boi", cfg.n_text_embd)
        self.eoi = self._host(g, "v.eoi", cfg.n_text_embd)

    @staticmethod
    def _host(g: GGUFFile, name: str, n: int) -> np.ndarray:
        """Tensor ``name`` as float32 values (``n`` of them), or a one-line error naming it."""
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the cogvlm projector file is incomplete")
        if t.n_elements != n:
            raise KvrunError(f"{g.path}: {name} has {t.n_elements} values, expected {n}")
        return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(F32)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (:func:`preprocess`) -> the image chunk's rows [n_patches + 2, n_text_embd]:
        ``v.boi``, the patches' rows in raster order, ``v.eoi``."""
        c = self.cfg
        S = c.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the CogVLM encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: CogVLMEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`CogVLMEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once, the rows come down once)."""
    c, xp = enc.cfg, ops.xp
    n = c.n_patches_side
    T, H = n * n, c.n_head
    D = c.n_embd // H
    x = xp.concatenate([ops.embed_patches(pixels), ops.const(enc.cls).reshape(1, -1)])  # (the CLS token after the patches)
    x = x + ops.const(enc.pos_embd)
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        q, k, v = (ops.linear(L[r], x, L[r + "_b"]).reshape(T + 1, H, D) for r in ("q", "k", "v"))
        a = ops.linear(L["o"], ops.attend(q, k, v, scale), L["o_b"])
        x = x + ops.layer_norm(a, L["ln1"], L["ln1_b"], c.eps)
        up = ops.linear(L["up"], x, L["up_b"])
        if L["gate"] is not None:
            up = ops.act(ops.linear(L["gate"], x, L["gate_b"]), c.ffn_op) * up
        else:
            up = ops.act(up, c.ffn_op)
        x = x + ops.layer_norm(ops.linear(L["down"], up.astype(F32), L["down_b"]), L["ln2"], L["ln2_b"], c.eps)
    h = ops.layer_norm(ops.linear(enc.fc, x[:T]), enc.fc_norm, enc.fc_norm_b, FC_NORM_EPS)
    h = ops.act(h, "gelu")
    h = ops.act(ops.linear(enc.gate, h), "silu") * ops.linear(enc.up, h)
    rows = ops.linear(enc.down, h.astype(F32))
    rows = xp.concatenate([ops.const(enc.boi).reshape(1, -1), rows, ops.const(enc.eoi).reshape(1, -1)])
    return ops.to_host(xp.ascontiguousarray(rows, F32))
