"""The picture encoders built on models/siglip.py's ViT on the GPU backend: clip.cpp's patch embedding, pre-norm ViT
blocks and post LayerNorm, then the projectors of Gemma 3, SmolVLM and Janus-Pro (:func:`encode`), LFM2-VL
(:func:`lfm2_rows`) and Hunyuan-VL (:func:`hunyuan_rows`), with the activations on the device; then the encoders with
a 2-D rope or a resampler of their own (tests/test_gpu_vision_encoders2.py): Qwen2-VL's, Qwen2.5-VL's (its windows
a launch of the attention a window size) and Qwen3-VL's (:func:`qwen2vl_rows`, :func:`qwen3vl_rows`), GLM-4V's
(:func:`glm4v_rows`), Pixtral's and LightOnOCR's (:func:`pixtral_rows`), InternVL's (:func:`internvl_rows`), LLaVA's
"mlp" (:func:`llava_rows`), MiniCPM-V's (:func:`minicpmv_rows`) and Gemma 4's (:func:`gemma4v_rows`).  The rope tables
are built on the host as the CPU encoder builds them, a row a patch, uploaded once a picture and read by the backend's
rope kernel at positions 0..T-1 (Gemma 4's, whose halves turn by column and row, by device arithmetic on them).  The
other projectors keep their CPU encoder beside the GPU (runtime/projectors.py CPU_BESIDE_GPU).

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
        self.proj_t = np.ascontiguousarray(proj.T) if isinstance(proj, np.ndarray) else None  # (Gemma 4's: a Weight)

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
        if E.fits(k.shape[0], D):  # (the keys' count: MiniCPM-V's resampler attends its queries to the patches)
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
        xp = self.xp
        if op == "silu":  # (Qwen2.5-VL's: x / (1 + e^-x), float32 as the CPU's)
            return x / (1.0 + xp.exp(-x))
        if op == "gelu_quick":  # (Qwen2-VL's: ggml's float16 table, input and result rounded as models/siglip.gelu_quick)
            xh = self.f16(x)
            return self.f16(xh / (1.0 + xp.exp(xp.float32(-1.702) * xh)))
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


# --- the Whisper audio encoder (models/whisper_audio.py): Ultravox's, Qwen2-Audio's, Voxtral's, Qwen2.5-Omni's ----------


def gelu_erf(x: Any) -> Any:
    """ggml_gelu_erf (models/whisper_audio.py ``gelu_erf``) in place on the device array ``x`` (ops/gpu/whisper.cu)."""
    from ..ops.gpu import kernels as K

    n = x.size
    K.launch("gelu_erf_f32", (min(K.cdiv(n, 256), 8192),), (256,), x, x, n)
    return x


def unfold3(xp: Any, x: Any, stride: int) -> Any:
    """ggml_conv_1d_ph's im2col on device rows: ``x`` [T, C] (time-major) zero-padded by one row each side ->
    [T_out, C * 3], each row a window's (channel, tap) columns in the order of the kernel [c_out, C, 3]."""
    T, C = x.shape
    t_out = (T + 2 - 3) // stride + 1
    p = xp.zeros((T + 2, C), F32)
    p[1:-1] = x
    cols = xp.stack([p[k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=-1)  # [t_out, C, 3]
    return xp.ascontiguousarray(cols.reshape(t_out, C * 3))


def whisper_rows(enc: Any, mel: np.ndarray) -> Any:
    """models/whisper_audio.py's ``encoder_rows`` on the device: the mel chunk [n_mel, 3000] up once, both
    convolutions as products of their F16 kernels over the unfolded frames (the input rounded to F16 as ggml's
    im2col), GELU(erf), the positions, the pre-norm blocks, clip.cpp's average pooling (qwen2a, voxtral), the post
    LayerNorm: device rows [1500 or 750, n_embd]."""
    from .whisper_audio import POOLED

    d, c = of(enc), enc.cfg
    x = d.be.vector(np.ascontiguousarray(mel.T, F32))
    for (w, b), stride in zip(enc.conv, (1, 2)):
        x = gelu_erf(d.linear(d.matrix(w, f16=True), unfold3(d.xp, x, stride), b))
    d.be.add(x, d.const(enc.pos_embd))
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    for L in enc.layers:  # (siglip's pre-norm block, vit_block, with Whisper's exact GELU)
        h = d.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (d.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        x = x + d.linear(L["o"], d.attend(q, k, v, F32(1.0 / math.sqrt(D))), L["o_b"])
        h = d.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + d.linear(L["down"], gelu_erf(d.linear(L["up"], h, L["up_b"])), L["down_b"])
    if c.projector_type in POOLED:  # (AvgPool1d(2, 2) over the frames)
        x = d.xp.ascontiguousarray(d.xp.mean(x.reshape(T // 2, 2, c.n_embd), axis=1))
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


def whisper_project(enc: Any, x: Any) -> Any:
    """models/whisper_audio.py's ``project`` on the device rows ``x`` [T, n_embd]: Qwen2-Audio's ``mm.a.fc``; the
    rows stacked ``stack_factor`` at a time (zeros pad the last), then Voxtral's GELU(erf) MLP or Ultravox's RMSNorm,
    SwiGLU (the gate in the second half), RMSNorm, ``mm.a.mlp.2``."""
    d, c, xp = of(enc), enc.cfg, of(enc).xp
    if c.projector_type == "qwen2a":
        return d.linear(enc.fc, x, enc.fc_b)
    s, E, T = c.stack_factor, c.n_embd, x.shape[0]
    n = -(-T // s)
    if n * s != T:
        x = xp.concatenate([x, xp.zeros((n * s - T, E), F32)])
    x = xp.ascontiguousarray(x.reshape(n, s * E))
    if c.projector_type == "voxtral":
        return d.linear(enc.mlp2, gelu_erf(d.linear(enc.mlp1, x, enc.mlp1_b)), enc.mlp2_b)
    h = d.be.zeros(x.shape, F32)
    d.be.rms_norm(x, d.const(enc.norm_pre), 1e-6, h)
    h = d.linear(enc.mlp1, h)
    half = h.shape[1] // 2
    g = xp.ascontiguousarray(h[:, half:])
    d.be.silu_mul(g, xp.ascontiguousarray(h[:, :half]), g)  # (ggml_swiglu_swapped)
    y = d.be.zeros(g.shape, F32)
    d.be.rms_norm(g, d.const(enc.norm_mid), 1e-6, y)
    return d.linear(enc.mlp2, y)


def whisper_encode(enc: Any, mels: np.ndarray) -> np.ndarray:
    """A clip's mel chunks [n_chunks, n_mel, 3000] through the encoder and projector on the device, each chunk up
    once, the clip's rows [n_chunks * rows_per_chunk, n_text_embd] down once."""
    d = of(enc)
    rows = [whisper_project(enc, whisper_rows(enc, m)) for m in mels]
    return d.be.to_host(rows[0] if len(rows) == 1 else d.xp.concatenate(rows))


# ---------------------------------------------------------------- Qwen2-VL, Qwen2.5-VL, Qwen3-VL (2-D rope, windows)


def _qwen_patches(enc: Any, pixels: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """models/qwen2vl_image.py's ``patch_embeddings`` with the products on the device: the patches in block order,
    rounded to F16 on the host and uploaded (the one copy up), times each of the two F16 temporal kernels, summed in
    place.  The rows [T, n_embd] and each patch's (row, column)."""
    from .qwen2vl_image import block_order

    d, p = of(enc), enc.cfg.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    ys, xs = block_order(npx, npy)
    x = S._f16(np.ascontiguousarray(pixels.reshape(3, npy, p, npx, p).transpose(1, 3, 0, 2, 4)[ys, xs].reshape(len(ys), 3 * p * p), F32))
    xd, out = d.be.vector(x), d.be.zeros((len(ys), enc.cfg.n_embd), F32)
    for k in enc.kernels:
        d.be.linear(d.matrix(k, f16=True), xd, out, accumulate=True)
    return out, ys, xs


def _qwen_rope(enc: Any, ys: np.ndarray, xs: np.ndarray) -> Any:
    """``(q, k)`` -> both turned in place by Qwen2-VL's vision rope (models/qwen2vl_image.py ``vision_rope``: neox
    pairs over the head): the host-built cos/sin tables, one row a patch, uploaded once a picture and read by the
    backend's rope kernel at positions 0..T-1."""
    from .qwen2vl_image import vision_rope

    d = of(enc)
    cos, sin = vision_rope(ys, xs, enc.cfg.n_embd // enc.cfg.n_head)
    cos, sin = d.be.vector(cos), d.be.vector(sin)
    pos = d.xp.arange(len(ys), dtype=d.xp.int32)

    def turn(q: Any, k: Any) -> tuple[Any, Any]:
        q, k = d.xp.ascontiguousarray(q), d.xp.ascontiguousarray(k)
        d.be.rope_qk(q, k, pos, cos, sin, True)
        return q, k

    return turn


def _window_groups(enc: Any, npx: int, npy: int) -> list[Any]:
    """Qwen2.5-VL's attention windows (models/qwen2vl_image.py ``windows``) as device index matrices [n_windows, size],
    one per window size (the whole windows, those cut by the right edge, the bottom, the corner), each window's
    patches in block order: a windowed layer attends with one launch a size, each window's patches as heads of their
    own (the keys a window's alone, as clip.cpp's mask leaves them)."""
    from .qwen2vl_image import windows

    win = windows(npx, npy, enc.cfg.patch_size)
    by_size: dict[int, list[np.ndarray]] = {}
    for w in np.unique(win):
        g = np.nonzero(win == w)[0]
        by_size.setdefault(len(g), []).append(g)
    return [of(enc).xp.asarray(np.stack(gs).astype(np.int64)) for gs in by_size.values()]


def _attend_windows(enc: Any, q: Any, k: Any, v: Any, groups: list[Any], scale: F32) -> Any:
    """softmax(q k^T scale) v within each window: q, k, v [T, H, D] -> [T, H*D]."""
    from ..ops.gpu import encoder as E

    d, xp = of(enc), of(enc).xp
    T, H, D = q.shape
    out = d.be.zeros((T, H, D), F32)
    for idx in groups:
        n, s = idx.shape
        qg, kg, vg = (xp.ascontiguousarray(xp.transpose(t[idx], (1, 0, 2, 3)).reshape(s, n * H, D)) for t in (q, k, v))
        o = d.be.zeros((s, n * H, D), F32)
        E.attend_full(qg, kg, vg, None, float(scale), o)
        out[idx] = xp.transpose(o.reshape(s, n, H, D), (1, 0, 2, 3))
    return out.reshape(T, H * D)


def _qwen_norm(enc: Any, x: Any, w: np.ndarray, b: np.ndarray | None) -> Any:
    """Qwen2.5-VL's RMSNorm (and its bias, where there is one) or the others' LayerNorm."""
    d = of(enc)
    if not enc.rms:
        return d.layer_norm(x, w, b, enc.cfg.eps)
    out = d.be.zeros(x.shape, F32)
    d.be.rms_norm(x, d.const(w), enc.cfg.eps, out)
    if b is not None:
        d.be.add_bias(out, d.const(b))
    return out


def _qwen_merge(enc: Any, x: Any, norm: np.ndarray | None, norm_b: np.ndarray | None, w1: Weight, b1: Any, w2: Weight, b2: Any,
                norm_before: bool) -> Any:  # fmt: skip
    """models/qwen3vl_image.py's ``merged`` (Qwen2-VL's merger too): each 2x2 block's 4 patches side by side, normed
    over the patch (``norm_before``) or over the 4 x n_embd row, then w1, GELU, w2."""
    d, E = of(enc), enc.cfg.n_embd
    if norm_before and norm is not None:
        x = _qwen_norm(enc, x, norm, norm_b)
    x = x.reshape(x.shape[0] // 4, 4 * E)
    if not norm_before:
        x = d.layer_norm(x, norm, norm_b, enc.cfg.eps)
    return d.linear(w2, d.act(d.linear(w1, x, b1), "gelu"), b2)


def qwen2vl_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/qwen2vl_image.py's ``Qwen2VLEncoder.encode`` past its checks on the device (Qwen2-VL's and Qwen2.5-VL's):
    the patches up once, the blocks with their 2-D rope (Qwen2.5-VL's windowed layers a launch a window size), the
    merger; the rows [ny * nx, n_text_embd] down once."""
    d, c = of(enc), enc.cfg
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = _qwen_patches(enc, pixels)
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    turn = _qwen_rope(enc, ys, xs)
    groups = _window_groups(enc, npx, npy) if c.n_wa_pattern > 0 else None
    scale = F32(1.0 / math.sqrt(D))
    for il, L in enumerate(enc.layers):
        h = _qwen_norm(enc, x, L["ln1"], L["ln1_b"])
        q, k = turn(*(d.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k")))
        v = d.linear(L["v"], h, L["v_b"]).reshape(T, H, D)
        if groups is None or (il + 1) % c.n_wa_pattern == 0:
            a = d.attend(q, k, v, scale)
        else:
            a = _attend_windows(enc, q, k, v, groups, scale)
        x = x + d.linear(L["o"], a, L["o_b"])
        h = _qwen_norm(enc, x, L["ln2"], L["ln2_b"])
        up = d.linear(L["up"], h, L["up_b"])
        if L["gate"] is not None:  # Qwen2.5-VL: SiLU(gate) * up
            act = d.act(d.linear(L["gate"], h, L["gate_b"]), c.ffn_op) * up
        else:
            act = d.act(up, c.ffn_op)
        x = x + d.linear(L["down"], act, L["down_b"])
    return d.be.to_host(_qwen_merge(enc, x, enc.post_ln, enc.post_ln_b, enc.mm0, enc.mm0_b, enc.mm2, enc.mm2_b, True))


def qwen3vl_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/qwen3vl_image.py's ``Qwen3VLEncoder.encode`` past its checks on the device: the patches and the resized
    position embeddings (made on the host, in block order) up once, the blocks with the fused QKV product and the
    2-D rope, the DeepStack mergers after their layers, the main merger; the rows [ny * nx, n_text_embd * (1 +
    n_deepstack)] down once."""
    from .qwen3vl_image import resize_positions

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = _qwen_patches(enc, pixels)
    d.be.add_bias(x, d.const(enc.patch_b))
    d.be.add(x, d.be.vector(resize_positions(enc.pos, enc.pos_side, npx, npy)[ys * npx + xs]))
    T, H, E = x.shape[0], c.n_head, c.n_embd
    D = E // H
    turn = _qwen_rope(enc, ys, xs)
    scale = F32(1.0 / math.sqrt(D))
    levels, taps = [], dict(enc.deepstack)
    for il, L in enumerate(enc.layers):
        h = d.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        qkv = d.linear(L["attn_qkv"], h, L["attn_qkv_b"])
        q, k = turn(qkv[:, :E].reshape(T, H, D), qkv[:, E : 2 * E].reshape(T, H, D))
        a = d.attend(q, k, xp.ascontiguousarray(qkv[:, 2 * E :]).reshape(T, H, D), scale)
        x = x + d.linear(L["attn_out"], a, L["attn_out_b"])
        h = d.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + d.linear(L["ffn_down"], d.act(d.linear(L["ffn_up"], h, L["ffn_up_b"]), c.ffn_op), L["ffn_down_b"])
        if il in taps:
            t = taps[il]
            levels.append(_qwen_merge(enc, x, t["norm"], t["norm_b"], t["fc1"], t["fc1_b"], t["fc2"], t["fc2_b"], False))
    main = _qwen_merge(enc, x, enc.post_ln, enc.post_ln_b, enc.mm0, enc.mm0_b, enc.mm2, enc.mm2_b, True)
    return d.be.to_host(xp.ascontiguousarray(xp.concatenate([main, *levels], axis=1)))


# ---------------------------------------------------------------- Pixtral, Mistral Small 3.1+, LightOnOCR (2-D rope)


def pixtral_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/pixtral_image.py's ``PixtralEncoder.encode`` past its checks on the device (LightOnOCR's too): the
    patches up once (:func:`embed_patches`), the RMSNorm blocks with the 2-D rope and the SwiGLU MLP, Mistral Small's
    patch merger, the GELU adapter and the [IMG_BREAK] row after each row of blocks but the last; the rows down once.
    The rope is clip.cpp's ``build_rope_2d``: each half of a head turned over adjacent pairs by its own quarter of the
    table (models/siglip.rope_halves), which is ggml's normal rope over the whole head with that [T, D/2] table as it
    is, so the backend's rope kernel (neox off) reads the host-built table at positions 0..T-1."""
    from .pixtral_image import rope_2d

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, m = c.patch_size, max(c.n_merge, 1)
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    T, H = npy * npx, c.n_head
    D = c.n_embd // H

    def rms(x: Any, w: np.ndarray) -> Any:
        out = d.be.zeros(x.shape, F32)
        d.be.rms_norm(x, d.const(w), c.eps, out)
        return out

    x = embed_patches(enc, pixels)
    if enc.pre_ln is not None:
        x = rms(x, enc.pre_ln)
    idx = np.arange(T)
    cos, sin = (d.be.vector(t) for t in rope_2d(idx // npx, idx % npx, D))
    pos = xp.arange(T, dtype=xp.int32)
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = rms(x, L["ln1"])
        q, k, v = (d.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        d.be.rope_qk(q, k, pos, cos, sin, False)
        x = x + d.linear(L["o"], d.attend(q, k, v, scale), L["o_b"])
        h = rms(x, L["ln2"])
        up = d.linear(L["up"], h, L["up_b"])
        act = d.act(d.linear(L["gate"], h), "silu") * up if L["gate"] is not None else d.act(up, "silu")
        x = x + d.linear(L["down"], act, L["down_b"])
    if enc.post_ln is not None:
        x = rms(x, enc.post_ln)
    if enc.merger is not None:  # (each m x m block's patches, channel-major: torch's unfold)
        x = rms(x, enc.inp_norm)
        x = xp.ascontiguousarray(xp.transpose(x.reshape(npy // m, m, npx // m, m, c.n_embd), (0, 2, 4, 1, 3)).reshape(T // (m * m), -1))
        x = d.linear(enc.merger, x)
    rows = d.linear(enc.mm2, d.act(d.linear(enc.mm1, x, enc.mm1_b), "gelu"), enc.mm2_b)
    if enc.img_break is not None:
        nx, ny = npx // m, npy // m
        brk = xp.broadcast_to(d.const(enc.img_break).reshape(1, 1, -1), (ny, 1, rows.shape[1]))
        rows = xp.concatenate([rows.reshape(ny, nx, -1), brk], axis=1).reshape(ny * (nx + 1), -1)[:-1]
    return d.be.to_host(xp.ascontiguousarray(rows))


# ---------------------------------------------------------------- InternVL (a CLS row, layer scales, QK norms)


def internvl_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/internvl_image.py's ``InternVLEncoder.encode`` past its checks on the device, a tile a call: the patches
    up once, the CLS row last and the position embeddings, the InternViT blocks (LayerNorm, or the 6B ViT's RMSNorm and
    QK norms over the whole width; the layer scales), the post norm, the CLS row dropped, the 2x2 merge, the
    projector's LayerNorm and GELU MLP; the rows down once."""
    from .internvl_image import PROJ_EPS

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    n = c.n_patches_side

    def norm(x: Any, w: np.ndarray, b: np.ndarray | None) -> Any:
        if not enc.rms:
            return d.layer_norm(x, w, b, c.eps)
        out = d.be.zeros(x.shape, F32)
        d.be.rms_norm(x, d.const(w), c.eps, out)
        if b is not None:
            d.be.add_bias(out, d.const(b))
        return out

    def scaled(y: Any, s: np.ndarray | None) -> Any:
        return y if s is None else y * d.const(s)

    x = xp.concatenate([embed_patches(enc, pixels), d.const(enc.cls).reshape(1, -1)])  # (clip.cpp's CLS row last)
    d.be.add(x, d.const(enc.pos_embd))
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = norm(x, L["ln1"], L["ln1_b"])
        q, k = d.linear(L["q"], h, L["q_b"]), d.linear(L["k"], h, L["k_b"])
        if L["q_norm"] is not None:
            q, k = norm(q, L["q_norm"], None), norm(k, L["k_norm"], None)
        v = d.linear(L["v"], h, L["v_b"])
        a = d.attend(q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, D), scale)
        x = x + scaled(d.linear(L["o"], a, L["o_b"]), L["ls1"])
        h = norm(x, L["ln2"], L["ln2_b"])
        x = x + scaled(d.linear(L["down"], d.act(d.linear(L["up"], h, L["up_b"]), "gelu"), L["down_b"]), L["ls2"])
    if enc.post_ln is not None:
        x = norm(x, enc.post_ln, enc.post_ln_b)
    x = d.layer_norm(merge_permute(xp, x[: n * n], n, n, c.n_merge), enc.mlp0, enc.mlp0_b, PROJ_EPS)
    h = d.act(d.linear(enc.mlp1, x, enc.mlp1_b), "gelu")
    return d.be.to_host(d.linear(enc.mlp3, h, enc.mlp3_b))


# ---------------------------------------------------------------- LLaVA's CLIP ViT and MLP projector ("mlp")


def llava_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/llava_image.py's ``LlavaEncoder.encode`` for the "mlp" projector on the device, a square a call: the
    patches up once, the class token after them (libmtmd 0.3.36's order) and the positions, ``v.pre_ln``, the blocks up
    to the feature layer (Granite's listed layers' inputs kept and concatenated), ``v.post_ln``, rows 1.. kept, then
    ``mm.0``, GELU, ``mm.2``; the rows down once.  (MobileVLM's "ldp" and "ldpv2" convolutions stay on the CPU.)"""
    d, c, xp = of(enc), enc.cfg, of(enc).xp
    x = embed_patches(enc, pixels)
    cls = enc.cls is not None
    if cls:
        x = xp.concatenate([x, d.const(enc.cls).reshape(1, -1)])
    d.be.add(x, d.const(enc.pos_embd))
    if enc.pre_ln is not None:
        x = d.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    stack = []
    for il, L in enumerate(enc.layers):
        if il in enc.feature_layers:
            stack.append(x)
        x = vit_block(enc, L, x, enc.ffn_op)
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    if len(enc.layers) in enc.feature_layers:
        stack.append(x)
    if stack:
        x = xp.concatenate(stack, axis=-1)
    x = d.act(d.linear(enc.mm0, xp.ascontiguousarray(x[1:] if cls else x), enc.mm0_b), "gelu")
    return d.be.to_host(x if enc.mm2 is None else d.linear(enc.mm2, x, enc.mm2_b))


# ---------------------------------------------------------------- MiniCPM-V (bucketed positions, a perceiver resampler)


def minicpmv_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/minicpmv_image.py's ``MiniCPMVEncoder.encode`` past its checks on the device, a part (the overview or a
    slice) a call: the patches up once and the bucketed position rows (gathered on the host), SigLIP's blocks, the post
    LayerNorm, then the perceiver resampler: its LayerNormed queries attend, in heads of 128, to the patches' ``kv``
    projection LayerNormed (the values) plus the 2-D sin-cos positions (the keys; made on the host, uploaded), then
    ``attn.out``, ``ln_post``, ``proj``; the rows [n_query, n_text_embd] down once."""
    from .minicpmv_image import HEAD_DIM, bucket_positions, sincos_2d

    d, c = of(enc), enc.cfg
    p = c.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = embed_patches(enc, pixels)
    d.be.add(x, d.be.vector(enc.pos_embd[bucket_positions(ny, nx)]))
    for L in enc.layers:
        x = vit_block(enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    rs, eps, W = enc.rs, c.eps, c.n_text_embd
    q = d.layer_norm(d.const(enc.query), rs["ln_q"], rs["ln_q_b"], eps)
    v = d.layer_norm(d.linear(rs["kv"], x), rs["ln_kv"], rs["ln_kv_b"], eps)
    k = v + d.be.vector(sincos_2d(ny, nx, W))
    H, T, nq = W // HEAD_DIM, x.shape[0], q.shape[0]
    Q = d.linear(rs["q"], q, rs["q_b"]).reshape(nq, H, HEAD_DIM)
    K = d.linear(rs["k"], k, rs["k_b"]).reshape(T, H, HEAD_DIM)
    V = d.linear(rs["v"], v, rs["v_b"]).reshape(T, H, HEAD_DIM)
    a = d.attend(Q, K, V, F32(1.0 / math.sqrt(HEAD_DIM)))
    o = d.layer_norm(d.linear(rs["o"], a, rs["o_b"]), rs["ln_post"], rs["ln_post_b"], eps)
    return d.be.to_host(d.linear(rs["proj"], o))


# ---------------------------------------------------------------- Gemma 4 (per-head norms, halves roped by column and row, clamps)


def gemma4v_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/gemma4v_image.py's ``Gemma4VEncoder.encode`` past its checks on the device: the patches (2x - 1, F16)
    up once with the x and y tables' rows (gathered on the host), the blocks (RMSNorms; per-head RMSNorms of Q and K,
    the unweighted one of V; each half of a head neox-roped, the first by the patch's column, the second by its row,
    from host-built tables uploaded once; unscaled attention; the post norms, SwiGLU-style GELU, the output scale), the
    k x k average pooling times sqrt(E), the standardisation, the weightless RMSNorm and the projection, every product
    clamped where the file says; the rows down once."""
    from .gemma4v_image import ROPE_BASE

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, m, E, H = c.patch_size, c.n_merge, c.n_embd, c.n_head
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T, D = nx * ny, E // H
    ones = enc.__dict__.setdefault("_ones", np.ones(E, F32))

    def rms(x: Any, w: np.ndarray | None) -> Any:
        out = d.be.zeros(x.shape, F32)
        d.be.rms_norm(x, d.const(ones[: x.shape[-1]] if w is None else w), c.eps, out)
        return out

    def mm(w: Weight, x: Any) -> Any:  # (clip_graph_gemma4v's build_mm: the clamps around the product)
        b = enc.clamps.get(id(w))
        if b is not None:
            x = xp.clip(x, F32(b[0]), F32(b[1]))
        y = d.linear(w, xp.ascontiguousarray(x))
        return y if b is None else xp.clip(y, F32(b[2]), F32(b[3]))

    def heads_norm(t: Any, w: np.ndarray) -> Any:  # (per head where the weight is a head wide, else over the row)
        if w.size == D:
            t = xp.ascontiguousarray(t)
            d.be.rms_norm_heads(t, d.const(w), c.eps)
            return t
        return rms(t.reshape(T, E), w).reshape(T, H, D)

    patches = (pixels * F32(2.0) - F32(1.0)).astype(F32).reshape(3, ny, p, nx, p).transpose(1, 3, 0, 2, 4).reshape(T, 3 * p * p)
    x = d.be.zeros((T, E), F32)
    d.be.linear(d.matrix(enc.patch_w, f16=True), d.be.vector(S._f16(np.ascontiguousarray(patches))), x)
    idx = np.arange(T)
    px, py = idx % nx, idx // nx
    d.be.add(x, d.be.vector(enc.pos[0][px]))
    d.be.add(x, d.be.vector(enc.pos[1][py]))
    half, quarter = D // 2, D // 4
    inv = np.power(F32(ROPE_BASE), -np.arange(quarter, dtype=F32) * F32(2.0 / half), dtype=F32)
    ang = np.stack([(px.astype(F32)[:, None] * inv[None, :]).astype(F32), (py.astype(F32)[:, None] * inv[None, :]).astype(F32)], axis=1)
    cos, sin = (d.be.vector(f(ang)).reshape(T, 1, 2, quarter) for f in (np.cos, np.sin))  # [T, 1, half of the head, pair]

    def rope(t: Any) -> Any:  # [T, H, D]: each half's pairs (i, i + D/4)
        t = t.reshape(T, H, 2, 2, quarter)
        a, b = t[:, :, :, 0], t[:, :, :, 1]
        return xp.stack([a * cos - b * sin, a * sin + b * cos], axis=3).reshape(T, H, D)

    for L in enc.layers:
        h = rms(x, L["ln1"])
        q, k, v = (mm(L[r], h).reshape(T, H, D) for r in ("q", "k", "v"))
        if L["q_norm"] is not None:
            q = heads_norm(q, L["q_norm"])
        if L["k_norm"] is not None:
            k = heads_norm(k, L["k_norm"])
        q, k = xp.ascontiguousarray(rope(q)), xp.ascontiguousarray(rope(k))
        v = rms(v.reshape(T * H, D), None).reshape(T, H, D)
        o = mm(L["o"], d.attend(q, k, v, F32(1.0)))
        if L["attn_post"] is not None:
            o = rms(o, L["attn_post"])
        x = x + o
        h = rms(x, L["ln2"])
        up = mm(L["up"], h)
        f = d.act(mm(L["gate"], h), c.ffn_op) * up if L["gate"] is not None else d.act(up, c.ffn_op)
        f = mm(L["down"], f)
        if L["ffn_post"] is not None:
            f = rms(f, L["ffn_post"])
        x = x + f
        if L["out_scale"] is not None:
            x = x * d.const(L["out_scale"])
    if enc.post_ln is not None:
        x = rms(x, enc.post_ln)
    x = xp.ascontiguousarray(xp.mean(x.reshape(ny // m, m, nx // m, m, E), axis=(1, 3)).reshape(-1, E)) * F32(math.sqrt(E))
    if enc.std_bias is not None and enc.std_scale is not None:
        x = (x - d.const(enc.std_bias)) * d.const(enc.std_scale)
    return d.be.to_host(mm(enc.proj, rms(x, None)))


# ---------------------------------------------------------------- GLM-4.1V / 4.5V / 4.6V (Qwen2-VL's ViT with RMSNorms, a conv merger)


def glm4v_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/glm4v_image.py's ``Glm4VEncoder.encode`` past its checks on the device: Qwen2-VL's patches up once, the
    patch bias, ``v.norm_embd``, the resized positions (made on the host, in block order), the RMSNorm blocks with the
    2-D rope and SiLU(gate) * up, the post RMSNorm, the 2x2 downsampling conv (one product over each block's patches
    channel-major, its kernel an F32 weight: the CPU's sums in float64), ``mm.model.fc``, LayerNorm, GELU and the
    SwiGLU merger; the rows down once."""
    from .glm4v_image import MERGER_EPS, resize_positions

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = _qwen_patches(enc, pixels)
    if enc.patch_b is not None:
        d.be.add_bias(x, d.const(enc.patch_b))
    x = _qwen_norm(enc, x, enc.embd_norm, enc.embd_norm_b)
    d.be.add(x, d.be.vector(resize_positions(enc.pos, enc.pos_side, npx, npy)[ys * npx + xs]))
    T, H, E = x.shape[0], c.n_head, c.n_embd
    D = E // H
    turn = _qwen_rope(enc, ys, xs)
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = _qwen_norm(enc, x, L["ln1"], L["ln1_b"])
        if "attn_qkv" in L:
            qkv = d.linear(L["attn_qkv"], h, L["attn_qkv_b"])
        else:
            qkv = xp.concatenate([d.linear(L[r], h, L[r + "_b"]) for r in ("attn_q", "attn_k", "attn_v")], axis=1)
        q, k = turn(qkv[:, :E].reshape(T, H, D), qkv[:, E : 2 * E].reshape(T, H, D))
        a = d.attend(q, k, xp.ascontiguousarray(qkv[:, 2 * E :]).reshape(T, H, D), scale)
        x = x + d.linear(L["attn_out"], a, L["attn_out_b"])
        h = _qwen_norm(enc, x, L["ln2"], L["ln2_b"])
        act = d.act(d.linear(L["ffn_gate"], h, L["ffn_gate_b"]), "silu") * d.linear(L["ffn_up"], h, L["ffn_up_b"])
        x = x + d.linear(L["ffn_down"], act, L["ffn_down_b"])
    x = _qwen_norm(enc, x, enc.post_ln, enc.post_ln_b)
    blocks = xp.ascontiguousarray(xp.transpose(x.reshape(T // 4, 2, 2, E), (0, 3, 1, 2)).reshape(T // 4, 4 * E))
    y = d.linear(enc.fc, d.linear(d.matrix(enc.down_conv.reshape(len(enc.down_conv), -1)), blocks, enc.down_conv_b))
    y = d.act(d.layer_norm(y, enc.merger_norm, enc.merger_norm_b, MERGER_EPS), "gelu")
    act = d.act(d.linear(enc.gate, y), "silu") * d.linear(enc.up, y)
    return d.be.to_host(d.linear(enc.down, act))


# ---------------------------------------------------------------- Llama 4 (a CLS row roped at 0, halves by column and row, pixel shuffle)


def ln_rope_blocks(enc: Any, x: Any, table: tuple[np.ndarray, np.ndarray], neox: bool = False) -> Any:
    """models/llama4_image.py's ``ln_rope_blocks`` on the device rows ``x`` [T, n_embd] (Llama 4's, Kimi-VL's and,
    ``neox``, PaddleOCR-VL's ViT): LayerNorm blocks whose Q and K are turned by clip.cpp's ``build_rope_2d``
    (``table``, the host's cos/sin [T, D/2] of llama4_image.rope_2d, uploaded once a picture and read by the rope
    kernel with neox off at positions 0..T-1, as :func:`pixtral_rows`; PaddleOCR-VL's, qwen2vl_image.vision_rope's
    neox pairs, with it on, as :func:`_qwen_rope`), each branch times its LayerScale where the layer has one; the post
    LayerNorm."""
    d, c, xp = of(enc), enc.cfg, of(enc).xp
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    cos, sin = (d.be.vector(t) for t in table)
    pos = xp.arange(T, dtype=xp.int32)
    scale = F32(1.0 / math.sqrt(D))

    def scaled(y: Any, s: np.ndarray | None) -> Any:
        return y if s is None else y * d.const(s)

    for L in enc.layers:
        h = d.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (d.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        d.be.rope_qk(q, k, pos, cos, sin, neox)
        x = x + scaled(d.linear(L["o"], d.attend(q, k, v, scale), L["o_b"]), L.get("ls1"))
        h = d.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + scaled(d.linear(L["down"], d.act(d.linear(L["up"], h, L["up_b"]), c.ffn_op), L["down_b"]), L.get("ls2"))
    if getattr(enc, "post_ln", None) is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


def llama4_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/llama4_image.py's ``Llama4VisionEncoder.encode`` past its checks on the device, a tile (or the overview)
    a call: the patches up once (rounded to F16 only for an F16 kernel, no bias), the CLS row last and the positions,
    ``v.pre_ln``, the LayerNorm blocks with clip.cpp's ``build_rope_2d`` (the patch's column + 1 and row + 1, the CLS
    row at 0: the host-built [T, D/2] table read by the rope kernel with neox off, as :func:`pixtral_rows`), the post
    LayerNorm, the CLS row dropped, the pixel shuffle, the GELU adapter and ``mm.model.fc``; the rows down once."""
    from .llama4_image import rope_2d

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, n, s, E = c.patch_size, c.n_patches_side, c.n_merge, c.n_embd
    patches = np.ascontiguousarray(pixels.reshape(3, n, p, n, p).transpose(1, 3, 0, 2, 4).reshape(n * n, 3 * p * p), F32)
    x = d.linear(d.matrix(enc.patch_w, f16=enc.patch_f16), d.be.vector(patches))  # (F16 rounding inside, for F16)
    x = xp.concatenate([x, d.const(enc.cls).reshape(1, -1)])  # (clip.cpp's CLS row last)
    d.be.add(x, d.const(enc.pos_embd))
    if enc.pre_ln is not None:
        x = d.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    idx = np.arange(n * n)
    x = ln_rope_blocks(enc, x, rope_2d(np.append(idx // n + 1, 0), np.append(idx % n + 1, 0), E // c.n_head))
    y = xp.transpose(x[: n * n].reshape(n, n // s, E * s), (1, 0, 2))  # (models/llama4_image.py pixel_shuffle)
    x = xp.ascontiguousarray(y.reshape((n // s) * (n // s), E * s * s))
    x = d.act(d.linear(enc.mlp2, d.act(d.linear(enc.mlp1, x), "gelu")), "gelu")
    return d.be.to_host(d.linear(enc.proj, x))


# ---------------------------------------------------------------- Kimi-VL (MoonViT: resized positions, the 2-D rope from 0, a 2x2 merge)


def kimivl_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/kimivl_image.py's ``KimiVLEncoder.encode`` past its checks on the device: the patches (F16) up once, the
    patch bias, the position grid resized to the picture (on the host, uploaded), the blocks of :func:`ln_rope_blocks`
    (the rope by column and row from 0), the post LayerNorm, the 2x2 merge, each patch's part LayerNormed on its own
    (``mm.input_norm``), ``mm.1``, GELU, ``mm.2``; the rows down once."""
    from .kimivl_image import PROJ_EPS
    from .lfm2vl_image import resize_positions
    from .llama4_image import rope_2d

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, m, E = c.patch_size, c.n_merge, c.n_embd
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = embed_patches(enc, pixels)
    d.be.add(x, d.be.vector(np.ascontiguousarray(resize_positions(enc.pos_embd, c.n_patches_side, nx, ny), F32)))
    idx = np.arange(nx * ny)
    x = merge_permute(xp, ln_rope_blocks(enc, x, rope_2d(idx // nx, idx % nx, E // c.n_head)), nx, ny, m)
    x = d.layer_norm(x.reshape(-1, E), enc.in_norm, enc.in_norm_b, PROJ_EPS).reshape(x.shape[0], -1)
    h = d.act(d.linear(enc.mm1, x, enc.mm1_b), "gelu")
    return d.be.to_host(d.linear(enc.mm2, h, enc.mm2_b))


# ---------------------------------------------------------------- PaddleOCR-VL (NaViT: resized positions, a neox 2-D rope, "stack and padding")


def paddleocr_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/paddleocr_image.py's ``PaddleOCREncoder.encode`` past its checks on the device: the patches (F16) up once,
    the patch bias, the position grid resized to the picture (on the host, uploaded), the blocks of
    :func:`ln_rope_blocks` (Qwen2-VL's vision rope by row and column: neox pairs), the post LayerNorm,
    ``mm.input_norm`` on each patch, each 2x2 block's patches side by side (the CPU's ``unshuffle``), ``mm.1``, GELU,
    ``mm.2``; the rows down once."""
    from .lfm2vl_image import resize_positions
    from .paddleocr_image import PROJ_EPS
    from .qwen2vl_image import vision_rope

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, m = c.patch_size, c.n_merge
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = embed_patches(enc, pixels)
    d.be.add(x, d.be.vector(np.ascontiguousarray(resize_positions(enc.pos_embd, enc.pos_side, nx, ny), F32)))
    idx = np.arange(nx * ny)
    x = ln_rope_blocks(enc, x, vision_rope(idx // nx, idx % nx, c.n_embd // c.n_head), neox=True)
    x = merge_permute(xp, d.layer_norm(x, enc.in_norm, enc.in_norm_b, PROJ_EPS), nx, ny, m)
    h = d.act(d.linear(enc.mm1, x, enc.mm1_b), "gelu")
    return d.be.to_host(d.linear(enc.mm2, h, enc.mm2_b))


# ---------------------------------------------------------------- MiniCPM-V 4.6 (bucketed positions, a windowed ViT merger, a 2x2 final merger)


def minicpmv46_rows(enc: Any, pixels: np.ndarray) -> np.ndarray:
    """models/minicpmv46_image.py's ``MiniCPMV46Encoder.encode`` past its checks on the device, a part a call: the
    patches up once and the bucketed position rows (gathered on the host), ``v.pre_ln``, SigLIP's blocks up to the
    insert layer, the ViT merger (attention within each 2 x 2 window: the windows as heads of one launch of the
    both-ways attention, the window order and its inverse uploaded once a picture; each window's four patches
    LayerNormed through the GELU MLP plus their mean), the remaining blocks, the post LayerNorm, the final merger
    (LayerNorm, ``mm.up``, GELU(erf), ``mm.down``); the rows down once."""
    from .minicpmv_image import bucket_positions
    from .minicpmv46_image import window_order

    d, c, xp = of(enc), enc.cfg, of(enc).xp
    p, eps, E, H = c.patch_size, c.eps, c.n_embd, c.n_head
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = embed_patches(enc, pixels)
    d.be.add(x, d.be.vector(enc.pos_embd[bucket_positions(ny, nx)]))
    if enc.pre_ln is not None:
        x = d.layer_norm(x, enc.pre_ln, enc.pre_ln_b, eps)
    V = enc.vit_merger
    for L in enc.layers if V is None else enc.layers[: enc.insert + 1]:
        x = vit_block(enc, L, x, "gelu")
    if V is not None:
        T, D = x.shape[0], E // H
        order = np.asarray(window_order(ny, nx), np.int64)
        h = d.layer_norm(x, V["ln1"], V["ln1_b"], eps)[xp.asarray(order)]  # (window-major rows)
        q, k, v = (xp.ascontiguousarray(xp.transpose(d.linear(V[r], h, V[r + "_b"]).reshape(T // 4, 4, H, D), (1, 0, 2, 3)))
                   .reshape(4, (T // 4) * H, D) for r in ("q", "k", "v"))  # fmt: skip
        a = xp.transpose(d.attend(q, k, v, F32(1.0 / math.sqrt(D))).reshape(4, T // 4, H * D), (1, 0, 2)).reshape(T, H * D)
        a = d.linear(V["o"], xp.ascontiguousarray(a), V["o_b"])
        x = x + a[xp.asarray(np.argsort(order))]  # (back to raster order)
        parts = merge_permute(xp, x, nx, ny, 2)  # [windows, 4 E]: top left, top right, bottom left, bottom right
        mean = parts.reshape(-1, 4, E).sum(axis=1) * F32(0.25)
        y = d.layer_norm(parts, V["ds_ln"], V["ds_ln_b"], eps)
        x = d.linear(V["down"], d.act(d.linear(V["up"], y, V["up_b"]), "gelu"), V["down_b"]) + mean
        ny, nx = ny // 2, nx // 2
        for L in enc.layers[enc.insert + 1 :]:
            x = vit_block(enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = d.layer_norm(x, enc.post_ln, enc.post_ln_b, eps)
    M = enc.merger
    y = d.layer_norm(merge_permute(xp, x, nx, ny, 2), M["ln"], M["ln_b"], eps)
    return d.be.to_host(d.linear(M["down"], gelu_erf(d.linear(M["up"], y, M["up_b"])), M["down_b"]))
