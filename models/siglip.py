"""Gemma 3's image side: the SigLIP vision encoder and Gemma 3's projector, as llama.cpp's clip.cpp builds them
(``clip_graph_siglip`` for PROJECTOR_TYPE_GEMMA3), read from an mmproj file (loaders/mmproj.py).

An image becomes rows of the text model's width, which the text model reads in place of token embeddings
between ``<start_of_image>`` and ``<end_of_image>`` (runtime/vision.py lays the prompt out):

    pixels [3, S, S] (RGB, resized to S = image_size, normalised by image_mean/std)
    -> patch embedding: a stride-p convolution, i.e. one matrix over the flattened p x p x 3 patches, + bias
    -> + learned position embeddings (one per patch, raster order)
    -> n_layer pre-norm ViT blocks: LayerNorm (with bias), multi-head attention without rope (every patch sees
       every patch), residual; LayerNorm, GELU MLP (with biases), residual
    -> post LayerNorm
    -> average pooling of n_merge x n_merge patches (Gemma 3: 64x64 patches -> 16x16 = 256 rows)
    -> RMSNorm (mm.soft_emb_norm, its weight already 1 + w in the file) -> x @ mm.input_projection -> [n_rows, n_text_embd]

SmolVLM's projector (clip.cpp's PROJECTOR_TYPE_IDEFICS3, same graph builder) runs the same encoder on each tile of
a picture (models/idefics3_image.py) and, after the post LayerNorm, a pixel shuffle of n_merge x n_merge patches
into one row n_merge^2 times wider (:func:`pixel_shuffle`) and one matrix ``mm.model.fc`` into the text width.

The forward (:func:`embed_patches`, :func:`vit_block`, :func:`_forward`) is written once against models/vit_ops.py's
ops: on the CPU the activations are numpy arrays (as models/bert.py's) and the ViT's weight products run on the CPU
backend's kernels in the file's format; on --device gpu every encoder runs on the GPU backend, the
activations device arrays (models/vit_device.py), and the text model reads the rows there (cache/gpu_picture.py).  What ggml's CPU does to the
numbers is reproduced where it shows: a product with an F16 weight rounds its input to F16 first (ggml's
vec_dot_type), the convolution runs on F16 patches and an F16 kernel, GELU is looked up in an F16 table
(models/bert.gelu).  Attention is float32 softmax(QK^T)V, llama.cpp's path without flash attention (measured on the
tiny projector: 1e-4 off its rows; libmtmd's default turns flash attention on, whose F16 K/V put llama.cpp itself
1.7e-3 off that, on rows of magnitude ~6).
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, TypeVar

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig, open_mmproj
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from . import vit_device, vit_ops
from .bert import gelu
from .common import TENSOR_NAMES, WeightLoader

F16 = 1  # ggml's type id of float16

TENSOR_NAMES.update({  # the encoder's names (clip.cpp's TN_*, prefix "v")
    "v_ln1": "v.blk.{i}.ln1.weight", "v_ln1_b": "v.blk.{i}.ln1.bias",
    "v_ln2": "v.blk.{i}.ln2.weight", "v_ln2_b": "v.blk.{i}.ln2.bias",
    "v_q": "v.blk.{i}.attn_q.weight", "v_q_b": "v.blk.{i}.attn_q.bias",
    "v_k": "v.blk.{i}.attn_k.weight", "v_k_b": "v.blk.{i}.attn_k.bias",
    "v_v": "v.blk.{i}.attn_v.weight", "v_v_b": "v.blk.{i}.attn_v.bias",
    "v_o": "v.blk.{i}.attn_out.weight", "v_o_b": "v.blk.{i}.attn_out.bias",
    "v_up": "v.blk.{i}.ffn_up.weight", "v_up_b": "v.blk.{i}.ffn_up.bias",
    "v_down": "v.blk.{i}.ffn_down.weight", "v_down_b": "v.blk.{i}.ffn_down.bias",
    "v_post_ln": "v.post_ln.weight", "v_post_ln_b": "v.post_ln.bias",
    "v_patch_b": "v.patch_embd.bias",
    "mm_soft_emb_norm": "mm.soft_emb_norm.weight",
    "mm_fc": "mm.model.fc.weight",  # (SmolVLM's projection, projector type idefics3)
})  # fmt: skip


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def rope_halves(t: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """``t`` [T, H, D] turned as clip.cpp's ``build_rope_2d``: each half of a head by ggml's normal rope over adjacent
    pairs, the first half by ``cos``/``sin``'s first D/4 columns, the second by the rest ([T, D/2] each: rope_2d's)."""
    D = t.shape[-1]
    q4, half = D // 4, D // 2
    out = np.empty_like(t)
    for h0, cs, sn in ((0, cos[:, :q4], sin[:, :q4]), (half, cos[:, q4:], sin[:, q4:])):
        a, b = t[..., h0 : h0 + half : 2], t[..., h0 + 1 : h0 + half : 2]
        cc, ss = cs[:, None, :], sn[:, None, :]
        out[..., h0 : h0 + half : 2] = a * cc - b * ss
        out[..., h0 + 1 : h0 + half : 2] = a * ss + b * cc
    return out


def attend_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: Any, chunk: int | None = None) -> np.ndarray:
    """Every row of ``q`` [T, H, D] attending to every row of ``k``/``v`` both ways, head by head (a ViT's attention):
    [T, H, D]; ``chunk`` query rows at a time where the [T, T] scores would be large."""
    T, H, D = q.shape
    step = chunk or T
    a = np.empty((T, H, D), np.float32)
    for q0 in range(0, T, step):
        for hd in range(H):
            sc = (q[q0 : q0 + step, hd] @ k[:, hd].T) * scale
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            a[q0 : q0 + step, hd] = sc @ v[:, hd]
    return a


def gelu_quick(x: np.ndarray) -> np.ndarray:
    """ggml's CPU GELU-quick, x * sigmoid(1.702 x), looked up in its float16 table (GGML_GELU_QUICK_FP16): input and
    result rounded to float16 (measured on the tiny projector: 5e-3 off llama.cpp's rows without the rounding, 2e-3
    with it, on rows ~13)."""
    xh = x.astype(np.float16).astype(np.float32)
    return (xh / (np.float32(1.0) + np.exp(np.float32(-1.702) * xh))).astype(np.float16).astype(np.float32)


def activation(x: np.ndarray, op: str) -> np.ndarray:
    """The ViT MLP's activation (MmprojConfig.ffn_op): Qwen2-VL's files state none, so clip.cpp's default, GELU-quick
    (Hugging Face's quick_gelu); Qwen2.5-VL's state SiLU."""
    if op == "silu":
        return x / (np.float32(1.0) + np.exp(-x))
    return gelu(x) if op == "gelu" else gelu_quick(x)


def vit_layer(ld: WeightLoader, i: int) -> dict[str, Any]:
    """Layer i's weights under clip.cpp's names: its two norms and six products, each with its bias where it has one."""
    L: dict[str, Any] = {}
    for r in ("ln1", "ln2"):
        L[r], L[r + "_b"] = ld.host_vector(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
    for r in ("q", "k", "v", "o", "up", "down"):
        L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
    return L


def patch_kernel(g: GGUFFile, cfg: MmprojConfig) -> np.ndarray:
    """``v.patch_embd.weight``, the patch embedding's convolution as a matrix [n_embd, 3*p*p] over patches flattened
    (channel, row, column) as the kernel is stored, in F16 as ggml's conv_2d runs it (the patches go in F16 too)."""
    E, p = cfg.n_embd, cfg.patch_size
    pt = g.tensor("v.patch_embd.weight")
    if pt.n_elements != E * 3 * p * p:
        raise KvrunError(f"{g.path}: v.patch_embd.weight has shape {pt.shape}, expected {(E, 3, p, p)}")
    return _f16(dequantize(pt.data, pt.qtype, pt.shape).reshape(E, 3 * p * p))


def embed_patches(ops: Any, enc: MmprojEncoder, pixels: np.ndarray) -> Any:
    """clip.cpp's patch embedding on either device's ``ops`` (models/vit_ops.py): normalised ``pixels`` [3, h, w]
    (sides whole patches) -> [(h/p)(w/p), n_embd], raster order: ``enc.patch_w`` (:func:`patch_kernel`) over the patches
    flattened and rounded to F16 (ggml's conv_2d; on the GPU the patches are the one copy up), plus ``enc.patch_b``
    where there is one."""
    p = enc.cfg.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = pixels.reshape(3, ny, p, nx, p).transpose(1, 3, 0, 2, 4).reshape(ny * nx, 3 * p * p)
    return ops.product_f16(ops.vector(np.ascontiguousarray(x, np.float32)), enc.patch_w, enc.patch_b)


def vit_block(ops: Any, enc: MmprojEncoder, L: dict[str, Any], x: Any, ffn_op: str) -> Any:
    """One of clip.cpp's pre-norm ViT blocks (:func:`vit_layer`'s weights ``L``) over the rows ``x`` [T, n_embd] on
    either device's ``ops``: LayerNorm, biased Q/K/V products, attention both ways with no rope (:func:`attend_heads`
    on the host), the output product added; LayerNorm, the MLP (``ffn_op``: :func:`activation`; the Whisper encoders'
    "gelu_erf") added.  ``enc.cfg`` gives n_head, n_embd and eps (an image or an audio config)."""
    c = enc.cfg
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
    q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
    x = x + ops.linear(L["o"], ops.attend(q, k, v, np.float32(1.0 / math.sqrt(D))), L["o_b"])
    h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
    return x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), ffn_op), L["down_b"])


_Encoder = TypeVar("_Encoder", bound="MmprojEncoder")


class MmprojEncoder:
    """What the image encoders of an mmproj file share: :meth:`load` (the file's config, then the class's
    ``__init__(g, cfg, backend)``), :meth:`_linear` (ggml's products on the encoder's backend ``be``) and, for those
    that use them, clip.cpp's patch embedding (:meth:`embed_patches`) and pre-norm ViT block (:meth:`vit_block`) on the
    encoder's device (:func:`embed_patches`, :func:`vit_block` on models/vit_ops.py's ``ops_of``)."""

    be: Backend
    cfg: MmprojConfig
    patch_w: np.ndarray  # (embed_patches': patch_kernel's matrix)
    patch_b: np.ndarray | None  # (its bias, where the file has one)

    @classmethod
    def load(cls: type[_Encoder], path: str | os.PathLike, backend: Backend) -> _Encoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)  # type: ignore[call-arg]

    @staticmethod
    def _vector(g: GGUFFile, name: str) -> np.ndarray | None:
        """Tensor ``name`` as float32 values, None where the file has none."""
        t = g.tensors.get(name)
        return None if t is None else dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)

    def _linear(self, w: Any, x: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        if self.be.name == "gpu":  # (device arrays in and out: models/vit_device.py)
            return vit_device.of(self).linear(w, x, b)
        if w.qtype == F16:  # ggml multiplies an F16 weight by an F16 copy of the activations
            x = _f16(x)
        out = np.empty((x.shape[0], w.n_rows), np.float32)
        self.be.linear(w, np.ascontiguousarray(x, np.float32), out)
        return out + b if b is not None else out

    def _begin(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend, patches: bool = True) -> WeightLoader:
        """What the encoders' constructors share: ``cfg``, ``be`` (the CPU's or the GPU's backend: a forward runs on
        either, models/vit_ops.py) and ``path`` set and, where ``patches``, clip.cpp's patch embedding's weights:
        ``patch_w`` (:func:`patch_kernel`: kernel and patches both in F16, as ggml's conv_2d runs; measured, a stored
        F32 kernel too: 1e-6 off llama.cpp's patch embeddings this way, 8e-4 in float32) and ``patch_b``
        (``v.patch_embd.bias`` where the file has one).  Returns the file's weight loader."""
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        if patches:
            self.patch_w = patch_kernel(g, cfg)
            self.patch_b = ld.host_vector("v_patch_b", required=False)
        return ld

    def embed_patches(self, pixels: np.ndarray) -> Any:
        """:func:`embed_patches` on the encoder's device."""
        return embed_patches(vit_ops.ops_of(self), self, pixels)

    def vit_block(self, L: dict[str, Any], x: Any, ffn_op: str, chunk: int | None = None) -> Any:
        """:func:`vit_block` on the encoder's device (on the host ``chunk`` query rows scored at once)."""
        return vit_block(vit_ops.ops_of(self, chunk), self, L, x, ffn_op)


class SiglipEncoder(MmprojEncoder):
    """Gemma 3's vision encoder and projector from an mmproj file: :meth:`encode` pixels into embedding rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend)
        E = cfg.n_embd
        pos = g.tensor("v.position_embd.weight")
        n_pos = cfg.n_patches_side**2
        if pos.n_elements != n_pos * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n_pos, E)}")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n_pos, E).astype(np.float32)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        if cfg.projector_type in ("lfm2", "kimivl", "janus_pro"):  # (LFM2-VL's, Kimi-VL's, Janus-Pro's projectors: models/lfm2vl_image.py, kimivl_image.py, janus_image.py)
            return
        if cfg.projector_type == "idefics3":  # SmolVLM: a pixel shuffle and one matrix [n_text_embd, E * n_merge^2]
            self.fc = ld.matrix("mm_fc")
            return
        self.soft_emb_norm = ld.host_vector("mm_soft_emb_norm")
        proj = g.tensor("mm.input_projection.weight")  # [E, n_text_embd]: x @ W
        self.proj = dequantize(proj.data, proj.qtype, proj.shape).reshape(E, cfg.n_text_embd).astype(np.float32)
        self.proj_f16 = proj.qtype == F16

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (:func:`preprocess`) -> the image's embedding rows [n_tokens, n_text_embd]."""
        S = self.cfg.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the vision encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(vit_ops.ops_of(self), self, pixels)

    def _project(self, ops: Any, x: Any) -> Any:
        """Gemma 3's projector on ``ops``: the encoder's rows [n_patches, E] pooled n_merge x n_merge, RMS-normed
        (float64 from the pooling into the norm on the host), projected by ``mm.input_projection`` as stored.  SmolVLM's
        (idefics3): the pixel shuffle (:func:`pixel_shuffle`), then ``mm.model.fc`` (clip.cpp's ``build_mm``, no bias)."""
        c = self.cfg
        n, k = c.n_patches_side, c.n_merge
        if c.projector_type == "idefics3":
            return ops.linear(self.fc, ops.xp.ascontiguousarray(vit_ops.merge_permute(x, n, n, k)))
        return ops.matmul_stored(ops.pooled_rms_norm(x, n, n, k, self.soft_emb_norm, c.eps), self.proj, self.proj_f16)


def _forward(ops: Any, enc: SiglipEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`SiglipEncoder.encode` past its check on either device's ``ops`` (models/vit_ops.py; on the GPU the pixels
    go up once and the rows come down once): patches, learned positions, the blocks (:func:`attend_heads` a head at a
    time on the host: Gemma 3's 4096 patches make a 64 MiB score matrix per head), post LayerNorm, the projector
    (``enc._project``: Gemma 3's, SmolVLM's, Janus-Pro's)."""
    c = enc.cfg
    x = embed_patches(ops, enc, pixels) + ops.const(enc.pos_embd)
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return ops.to_host(ops.xp.ascontiguousarray(enc._project(ops, x), np.float32))


def pixel_shuffle(x: np.ndarray, side: int, k: int) -> np.ndarray:
    """clip.cpp's ``build_patch_merge_permute`` (Idefics3's pixel shuffle): the rows [side*side, E] of a square of
    patches (raster order) -> [(side/k)^2, k*k*E], each row a k x k block of patches side by side, in the order
    (row in the block, column in the block, channel), the blocks in raster order."""
    return np.ascontiguousarray(vit_ops.merge_permute(x, side, side, k), np.float32)


def _pillow():
    try:
        from PIL import Image
    except ImportError:  # (a declared dependency; a trimmed install may lack it)
        raise KvrunError("reading images needs Pillow: pip install pillow") from None
    return Image


def load_image(src: str | os.PathLike | bytes) -> Any:
    """An image file (a path, or its bytes) decoded to an RGB ``PIL.Image``, or a one-line KvrunError."""
    Image = _pillow()
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        img.load()
    except FileNotFoundError:
        raise KvrunError(f"{src}: no such image file") from None
    except Exception as e:  # (Pillow's UnidentifiedImageError, a truncated file, ...)
        what = "the image" if isinstance(src, bytes) else str(src)
        raise KvrunError(f"{what}: cannot read it as an image ({type(e).__name__}: {e})") from None
    return img.convert("RGB")  # (a palette, grey or RGBA picture: its RGB, as stb_image's 3-channel load)


def resize_to_square(img: Any, size: int) -> Any:
    """clip.cpp's fixed-size resize for Gemma 3 (``img_tool::resize``, bilinear, PAD_CEIL): the picture scaled by
    the smaller of size/width and size/height (sides rounded up), resampled with Pillow's bilinear filter (clip.cpp's
    own is ported from Pillow's Resample.c) and centred on a black square; one already size x size is left as it is."""
    Image = _pillow()
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = min(np.float32(size) / np.float32(w), np.float32(size) / np.float32(h))  # (float32, as clip.cpp's)
    nw = min(int(math.ceil(np.float32(w) * scale)), size)
    nh = min(int(math.ceil(np.float32(h) * scale)), size)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def preprocess(img: Any, cfg: MmprojConfig) -> np.ndarray:
    """An RGB picture (a ``PIL.Image`` or a uint8 array [H, W, 3]) -> normalised pixels [3, S, S] float32:
    resized as clip.cpp does, scaled to [0, 1], less image_mean, over image_std, per channel."""
    if isinstance(img, np.ndarray):
        img = _pillow().fromarray(np.ascontiguousarray(img, np.uint8), "RGB")
    a = np.asarray(resize_to_square(img, cfg.image_size), np.uint8).astype(np.float32) / np.float32(255.0)
    mean, std = np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), np.float32)
