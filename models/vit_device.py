"""The picture encoders built on models/siglip.py's ViT on the GPU backend: clip.cpp's patch embedding, pre-norm ViT
blocks and post LayerNorm, then the projectors of Gemma 3, SmolVLM and Janus-Pro (:func:`encode`), LFM2-VL
(:func:`lfm2_rows`) and Hunyuan-VL (:func:`hunyuan_rows`), with the activations on the device.  The other projectors
keep their CPU encoder beside the GPU (runtime/projectors.py CPU_BESIDE_GPU).

A ViT is prefill-sized matrix work every picture (SigLIP-400M at 896 pixels: 4096 patches through 27 blocks of
width 1152; measured on this repository's 2 vCPUs, one block takes 6.9 s on the CPU backend, the patch embedding
0.08 s), so beside a text model on ``--device gpu`` the encoder runs there too, as llama.cpp runs its mmproj on the
GPU.  The pattern is models/bert.py's device forward: the weight products are the GPU backend's matmul kernels on
device arrays (``be.linear``, biases by ``add_bias``), LayerNorm nn.cu's, the attention both ways ops/gpu/encoder.cu's
``attn_full_f32``, GELU t5.cu's float16-table one (ggml's CPU GELU, models/bert.gelu); the pixels' patches (LFM2-VL's
and Hunyuan-VL's patch rows, their positions resized on the host) go up once and the rows come down once, at the end
(runtime/vision.py and the layouts take host rows, which the GPU text model uploads as any picture's).

What the CPU encoder copies of ggml's CPU numbers is kept: an activation multiplied by an F16 weight is rounded to
F16 first (ggml's vec_dot_type), on the device; the patches are rounded to F16 on the host before they go up (ggml's
conv_2d).  The statistics of the norms are float32 sums (the CPU's are float64) and the products sum in another
order, so the rows are the CPU encoder's within float32 noise (tests/test_gpu_vision_encoders.py bounds them at 2e-3
of their largest, the GPU text path's bound against the CPU; measured on the tiny projectors: 2e-5 to 3e-4 with float32
weights, up to 7e-4 with F16, where dropping the F16 rounding makes it up to 1.8e-3).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ops.backend import Weight
from . import siglip as S  # (which imports this module: its names are read when called)

F32 = np.float32
F16 = 1  # ggml's type id of float16 (siglip.F16)


class DeviceViT:
    """An encoder's device side (one per encoder, :func:`of`): its host constants uploaded once, and the ops of its
    forward on device arrays."""

    def __init__(self, enc: Any) -> None:
        self.enc, self.be = enc, enc.be
        self.xp = enc.be.xp
        self._consts: dict[int, tuple[np.ndarray, Any]] = {}
        self._mats: dict[int, tuple[np.ndarray, Weight]] = {}
        proj = getattr(enc, "proj", None)  # (Gemma 3's projection [E, n_text_embd], x @ proj: its transpose a weight)
        self.proj_t = None if proj is None else np.ascontiguousarray(proj.T)

    def const(self, a: np.ndarray) -> Any:
        """The device copy of the host constant ``a`` (a norm's weights, a bias, the position embeddings)."""
        hit = self._consts.get(id(a))
        if hit is None or hit[0] is not a:
            hit = self._consts[id(a)] = (a, self.be.vector(a))
        return hit[1]

    def matrix(self, a: np.ndarray, f16: bool = False) -> Weight:
        """The host matrix ``a`` [n_rows, n_cols] (y = x @ a.T) uploaded once as a weight: in F16 where ``f16`` (its
        values are F16's already: the patch kernel, an F16 projection), else F32."""
        hit = self._mats.get(id(a))
        if hit is None or hit[0] is not a:
            rows = np.ascontiguousarray(a, np.float16 if f16 else F32)
            hit = self._mats[id(a)] = (a, self.be.upload(rows.view(np.uint8), F16 if f16 else 0, a.shape))
        return hit[1]

    def f16(self, x: Any) -> Any:
        """``x`` rounded to float16 and back, on the device (models/siglip.py ``_f16``)."""
        return x.astype(self.xp.float16).astype(self.xp.float32)

    def linear(self, w: Weight, x: Any, b: np.ndarray | None = None) -> Any:
        """x @ W.T (+ b) on the device, x first rounded to F16 for an F16 weight, as models/siglip.py's ``_linear``."""
        if w.qtype == F16:
            x = self.f16(x)
        out = self.be.zeros((x.shape[0], w.n_rows), F32)
        self.be.linear(w, x, out)
        if b is not None:
            self.be.add_bias(out, self.const(b))
        return out

    def layer_norm(self, x: Any, w: np.ndarray, b: np.ndarray | None, eps: float) -> Any:
        out = self.be.zeros(x.shape, F32)
        self.be.layer_norm(x, self.const(w), None if b is None else self.const(b), eps, out)
        return out

    def attend(self, q: Any, k: Any, v: Any, scale: F32) -> Any:
        """softmax(q k^T scale) v, every row both ways: q, k, v [T, H, D] -> [T, H*D]; encoder.cu's kernel where a row's
        scores fit its shared memory, else on the host and back up (a picture of over 12,000 patches)."""
        from ..ops.gpu import encoder as E  # (only here: the CPU's runs never load the GPU's modules)

        T, H, D = q.shape
        if E.fits(T, D):
            out = self.be.zeros((T, H, D), F32)
            E.attend_full(q, k, v, None, float(scale), out)
            return out.reshape(T, H * D)
        host = S.attend_heads(*(self.be.to_host(a) for a in (q, k, v)), scale, 1024)
        return self.be.vector(host.reshape(T, H * D))

    def act(self, x: Any, op: str) -> Any:
        """The MLP's activation (models/siglip.py ``activation``) in place: GELU on the device (t5.cu's float16 table);
        the others, which no ported encoder uses, on the host and back up."""
        if op == "gelu":
            from ..ops.gpu import encoder as E

            E.gelu_f16(x, x)
            return x
        return self.be.vector(S.activation(self.be.to_host(x), op))


def of(enc: Any) -> DeviceViT:
    """``enc``'s device side, made on first use."""
    dev = enc.__dict__.get("_device_vit")
    if dev is None:
        dev = enc._device_vit = DeviceViT(enc)
    return dev


def embed_patches(enc: Any, pixels: np.ndarray) -> Any:
    """models/siglip.py's ``embed_patches`` with the product on the device: the patches flattened and rounded to F16
    on the host, uploaded (the one copy up), times the F16 patch kernel, plus its bias: [(h/p)(w/p), n_embd]."""
    d, p = of(enc), enc.cfg.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = S._f16(np.ascontiguousarray(pixels.reshape(3, ny, p, nx, p).transpose(1, 3, 0, 2, 4).reshape(ny * nx, 3 * p * p), F32))
    out = d.be.zeros((ny * nx, enc.cfg.n_embd), F32)
    d.be.linear(d.matrix(enc.patch_w, f16=True), d.be.vector(x), out)
    if enc.patch_b is not None:
        d.be.add_bias(out, d.const(enc.patch_b))
    return out


def vit_block(enc: Any, L: dict[str, Any], x: Any, ffn_op: str) -> Any:
    """models/siglip.py's ``vit_block`` on the device arrays ``x`` [T, n_embd] (the caller's ``x`` left as it is)."""
    d, c = of(enc), enc.cfg
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    h = d.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
    q, k, v = (d.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
    x = x + d.linear(L["o"], d.attend(q, k, v, F32(1.0 / math.sqrt(D))), L["o_b"])
    h = d.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
    return x + d.linear(L["down"], d.act(d.linear(L["up"], h, L["up_b"]), ffn_op), L["down_b"])


def encode(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/siglip.py's ``SiglipEncoder.encode`` on the device (Gemma 3's, SmolVLM's, Janus-Pro's): the pixels go up
    once, the rows [n_tokens, n_text_embd] come down once."""
    d, c = of(enc), enc.cfg
    x = embed_patches(enc, pixels)
    d.be.add(x, d.const(enc.pos_embd))
    for L in enc.layers:
        x = vit_block(enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return d.be.to_host(project(enc, x))


def project(enc: Any, x: Any) -> Any:
    """models/siglip.py's ``SiglipEncoder.project`` on the device: Gemma 3's n_merge x n_merge average pooling, RMSNorm
    and input projection; SmolVLM's pixel shuffle and ``mm.model.fc``; Janus-Pro's GELU MLP (models/janus_image.py)."""
    d, c, xp = of(enc), enc.cfg, of(enc).xp
    n, k = c.n_patches_side, c.n_merge
    if c.projector_type == "janus_pro":
        return d.linear(enc.mm1, d.act(d.linear(enc.mm0, x, enc.mm0_b), "gelu"), enc.mm1_b)
    if c.projector_type == "idefics3":
        return d.linear(enc.fc, merge_permute(xp, x, n, n, k))
    x = xp.ascontiguousarray(xp.mean(x.reshape(n // k, k, n // k, k, c.n_embd), axis=(1, 3)).reshape(-1, c.n_embd))
    y = d.be.zeros(x.shape, F32)
    d.be.rms_norm(x, d.const(enc.soft_emb_norm), c.eps, y)
    if enc.proj_f16:
        y = d.f16(y)
    w = d.matrix(d.proj_t, f16=enc.proj_f16)
    out = d.be.zeros((y.shape[0], w.n_rows), F32)
    d.be.linear(w, y, out)
    return out



def merge_permute(xp: Any, x: Any, nx: int, ny: int, k: int) -> Any:
    """clip.cpp's ``build_patch_merge_permute`` on device rows (models/siglip.py ``pixel_shuffle``, models/lfm2vl_image.py
    ``unshuffle``): a grid of nx x ny patches [ny*nx, E] -> [(ny/k)(nx/k), k*k*E], each row a k x k block."""
    E = x.shape[-1]
    return xp.ascontiguousarray(xp.transpose(x.reshape(ny // k, k, nx // k, k, E), (0, 2, 1, 3, 4)).reshape(-1, k * k * E))


def lfm2_rows(enc: Any, x: np.ndarray, nx: int, ny: int, proj_eps: float) -> np.ndarray:
    """LFM2-VL's encoder past its patch embedding (models/lfm2vl_image.py ``encode``: its host patch product and resized
    positions stay there, 1% of a block's work at SigLIP-400M's size) on the device: the patch rows ``x`` [T, E] up
    once, the blocks, post LayerNorm, the 2x2 merge, the projector's LayerNorm and GELU MLP; the rows down once."""
    d, c = of(enc), enc.cfg
    x = d.be.vector(x)
    for L in enc.layers:
        x = vit_block(enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    x = merge_permute(d.xp, x, nx, ny, c.n_merge)
    if enc.in_norm is not None:
        x = d.layer_norm(x, enc.in_norm, enc.in_norm_b, proj_eps)
    elif enc.in_norm_b is not None:
        d.be.add_bias(x, d.const(enc.in_norm_b))
    h = d.act(d.linear(enc.mm1, x, enc.mm1_b), "gelu")
    return d.be.to_host(d.linear(enc.mm2, h, enc.mm2_b))


def hunyuan_rows(enc: Any, x: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """Hunyuan-VL's encoder past its patch embedding (models/hunyuanvl_image.py ``encode``; the host patch product and
    resized positions as LFM2-VL's) on the device: the patch rows ``x`` [T, E] up once, the blocks, post LayerNorm,
    the perceiver's RMSNorm, its 2x2 convolution (one product over the im2col rows, channel-major as ggml's), GELU, the
    1x1 convolution, a newline row after each row of the grid, ``mm.model.fc``, the begin and end rows, the RMSNorm;
    the rows down once.  (The CPU's convolutions sum in float64, these in float32.)"""
    d, c, xp = of(enc), enc.cfg, of(enc).xp
    m, E = c.n_merge, c.n_embd
    x = d.be.vector(x)
    for L in enc.layers:
        x = vit_block(enc, L, x, c.ffn_op)
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    d.be.rms_norm(x, d.const(enc.pre_norm), c.eps, x)
    oy, ox = ny // m, nx // m
    cols = xp.ascontiguousarray(xp.transpose(x.reshape(oy, m, ox, m, E), (0, 2, 4, 1, 3)).reshape(oy * ox, E * m * m))
    h = d.act(d.linear(d.matrix(enc.conv0, f16=enc.conv0_f16), cols, enc.conv0_b), "gelu")
    y = d.linear(d.matrix(enc.conv2, f16=enc.conv2_f16), h, enc.conv2_b).reshape(oy, ox, -1)
    newline = xp.broadcast_to(d.const(enc.newline).reshape(1, 1, -1), (oy, 1, y.shape[-1]))
    y = d.linear(enc.fc, xp.concatenate([y, newline], axis=1).reshape(oy * (ox + 1), -1), enc.fc_b)
    y = xp.concatenate([d.const(enc.begin).reshape(1, -1), y, d.const(enc.end).reshape(1, -1)])
    d.be.rms_norm(y, d.const(enc.post_norm), c.eps, y)
    return d.be.to_host(y)
