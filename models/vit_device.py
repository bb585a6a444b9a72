"""The picture encoders on the GPU backend.  :class:`DeviceViT` is the device side of models/vit_ops.py's ops (the
forward of Pixtral's, LightOnOCR's, LLaVA's "mlp", InternVL's, MiniCPM-V's, GLM-4V's, Qwen2-VL's, Qwen2.5-VL's,
Qwen3-VL's, Llama 4's, Kimi-VL's, PaddleOCR-VL's, MiniCPM-V 4.6's and Gemma 4's encoders is written once, in the
encoder's own file, against those ops; models/vit_ops.py's HostViT runs it on the CPU); the rope tables are built on
the host as the CPU encoder builds them, a row a patch, uploaded once a picture and read by the backend's rope kernel
at positions 0..T-1.  Still here, as device forwards of their own: models/siglip.py's ViT with the projectors of
Gemma 3, SmolVLM and Janus-Pro (:func:`encode`), LFM2-VL's (:func:`lfm2_rows`), Hunyuan-VL's (:func:`hunyuan_rows`)
and the Whisper audio encoder (:func:`whisper_encode`).  The other projectors keep their CPU encoder beside the GPU
(runtime/projectors.py CPU_BESIDE_GPU).

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

    def rms_norm(self, x: Any, w: np.ndarray | None, eps: float, b: np.ndarray | None = None) -> Any:
        """RMSNorm times ``w`` (none: ones) plus ``b``: float32 statistics (models/vit_ops.py HostViT's are float64)."""
        if w is None:
            w = self.enc.__dict__.setdefault("_ones", {}).setdefault(x.shape[-1], np.ones(x.shape[-1], F32))
        out = self.be.zeros(x.shape, F32)
        self.be.rms_norm(self.xp.ascontiguousarray(x), self.const(w), eps, out)
        if b is not None:
            self.be.add_bias(out, self.const(b))
        return out

    def vector(self, a: np.ndarray) -> Any:
        """A table made for this picture (rope angles, resized positions) uploaded, uncached."""
        return self.be.vector(np.ascontiguousarray(a, F32))

    def to_host(self, x: Any) -> np.ndarray:
        return self.be.to_host(x)

    def embed_patches(self, pixels: np.ndarray) -> Any:
        return embed_patches(self.enc, pixels)

    def vit_block(self, L: dict[str, Any], x: Any, ffn_op: str) -> Any:
        return vit_block(self.enc, L, x, ffn_op)

    def attend_batched(self, q: Any, k: Any, v: Any, scale: F32) -> Any:
        """Attention within each of B groups of S consecutive rows, the groups as heads of one launch: q, k, v
        [B, S, H, D] -> [B*S, H*D]."""
        xp = self.xp
        B, n, H, D = q.shape
        q, k, v = (xp.ascontiguousarray(xp.transpose(t, (1, 0, 2, 3))).reshape(n, B * H, D) for t in (q, k, v))
        a = self.attend(q, k, v, scale).reshape(n, B, H * D)
        return xp.ascontiguousarray(xp.transpose(a, (1, 0, 2))).reshape(B * n, H * D)

    def rope_neox(self, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        """ggml's neox rope, pairs (i, i + D/2), with the [T, D/2] table (``vector``'s): the backend's rope kernel."""
        q, k = self.xp.ascontiguousarray(q), self.xp.ascontiguousarray(k)
        self.be.rope_qk(q, k, self.xp.arange(q.shape[0], dtype=self.xp.int32), cos, sin, True)
        return q, k

    def avg_pool(self, x: Any, nx: int, ny: int, k: int) -> Any:
        """The rows of a grid averaged k x k (float32 sums): [(ny/k)(nx/k), E]."""
        E = x.shape[-1]
        return self.xp.ascontiguousarray(self.xp.mean(x.reshape(ny // k, k, nx // k, k, E), axis=(1, 3)).reshape(-1, E))

    def patch_rows(self, x: np.ndarray, kernels: list[np.ndarray]) -> Any:
        """Host patch rows (F16 values) up once, times each F16 kernel, summed in place on the device."""
        xd, out = self.be.vector(x), self.be.zeros((x.shape[0], kernels[0].shape[0]), F32)
        for k in kernels:
            self.be.linear(self.matrix(k, f16=True), xd, out, accumulate=True)
        return out

    def matmul(self, x: np.ndarray, w: np.ndarray, f16: bool = False) -> Any:
        """Host rows ``x`` up once, times the host matrix ``w`` uploaded once (F16 where ``f16``: ``linear`` rounds
        ``x`` then)."""
        return self.linear(self.matrix(w, f16=f16), self.be.vector(x))

    def product64(self, x: Any, k: np.ndarray, b: np.ndarray | None = None) -> Any:
        """The host kernel ``k`` as an F32 weight (uploaded once) times ``x`` (+ b): float32 sums, not the host's 64."""
        return self.linear(self.matrix(k), x, b)

    def window_groups(self, win: np.ndarray | None, T: int) -> list[Any] | None:
        """The windows as device index matrices, one a window size (models/vit_ops.py HostViT's, grouped by size); None for one window."""
        if win is None:
            return None
        by_size: dict[int, list[np.ndarray]] = {}
        for w in np.unique(win):
            g = np.nonzero(win == w)[0]
            by_size.setdefault(len(g), []).append(g)
        return [self.xp.asarray(np.stack(gs).astype(np.int64)) for gs in by_size.values()]

    def attend_windows(self, q: Any, k: Any, v: Any, groups: list[Any] | None, scale: F32) -> Any:
        """Attention within each window: a launch a window size (:func:`_attend_windows`), or :meth:`attend`."""
        if groups is None:
            return self.attend(q, k, v, scale)
        return _attend_windows(self.enc, q, k, v, groups, scale)

    def rope_pairs(self, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        """clip.cpp's ``build_rope_2d`` halves (models/siglip.py ``rope_halves``): ggml's normal rope over the whole
        head with the [T, D/2] table (``vector``'s) as it is, the backend's rope kernel (neox off) at rows 0..T-1."""
        q, k = self.xp.ascontiguousarray(q), self.xp.ascontiguousarray(k)
        self.be.rope_qk(q, k, self.xp.arange(q.shape[0], dtype=self.xp.int32), cos, sin, False)
        return q, k

    def attend(self, q: Any, k: Any, v: Any, scale: F32) -> Any:
        """softmax(q k^T scale) v, every row both ways: q, k, v [T, H, D] -> [T, H*D]; encoder.cu's kernel where a row's
        scores fit its shared memory, else on the host and back up (a picture of over 12,000 patches)."""
        from ..ops.gpu import encoder as E  # (only here: the CPU's runs never load the GPU's modules)

        T, H, D = q.shape
        q, k, v = (self.xp.ascontiguousarray(t) for t in (q, k, v))  # (a fused QKV product's views)
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
        if op == "gelu_erf":  # (ops/gpu/whisper.cu's)
            return gelu_erf(x)
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
    from .vit_ops import merge_permute as merge

    return xp.ascontiguousarray(merge(x, nx, ny, k))


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


# ---------------------------------------------------------------- Qwen2.5-VL's windows (models/qwen2vl_image.py, DeviceViT.attend_windows)


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
