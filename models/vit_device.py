"""The picture encoders on the GPU backend.  :class:`DeviceViT` is the device side of models/vit_ops.py's ops (the
forward of models/siglip.py's ViT with the projectors of Gemma 3, SmolVLM and Janus-Pro, of LFM2-VL's, Hunyuan-VL's,
Pixtral's, LightOnOCR's, LLaVA's "mlp", InternVL's, MiniCPM-V's, GLM-4V's, Qwen2-VL's, Qwen2.5-VL's, Qwen3-VL's,
Llama 4's, Kimi-VL's, PaddleOCR-VL's, MiniCPM-V 4.6's, Gemma 4's, Step3-VL's, Youtu-VL's, CogVLM's, DeepSeek-OCR's
(SAM and CLIP-L), MobileVLM's (ldp, ldpv2) and Gemma 3n's (MobileNetV5) encoders and of the Whisper audio encoders
(models/whisper_audio.py) is written once, in the encoder's own file, against those ops; models/vit_ops.py's HostViT
runs it on the CPU); the rope tables are built on the host as the CPU encoder builds them, a row a patch, uploaded once
a picture and read by the backend's rope kernel at positions 0..T-1.

A ViT is prefill-sized matrix work every picture (SigLIP-400M at 896 pixels: 4096 patches through 27 blocks of
width 1152; measured on this repository's 2 vCPUs, one block takes 6.9 s on the CPU backend, the patch embedding
0.08 s), so beside a text model on ``--device gpu`` the encoder runs there too, as llama.cpp runs its mmproj on the
GPU.  The pattern is models/bert.py's device forward: the weight products are the GPU backend's matmul kernels on
device arrays (``be.linear``, biases by ``add_bias``), LayerNorm nn.cu's, the attention both ways ops/gpu/encoder.cu's
``attn_full_f32``, GELU t5.cu's float16-table one (ggml's CPU GELU, models/bert.gelu); the pixels' patches (and the
tables made on the host: LFM2-VL's and Hunyuan-VL's resized positions) go up once and the rows come down once, at the end
(runtime/vision.py and the layouts take host rows, which the GPU text model uploads as any picture's).

What the CPU encoder copies of ggml's CPU numbers is kept: an activation multiplied by an F16 weight is rounded to
F16 first (ggml's vec_dot_type), on the device, and so are the patches before their F16 kernel (ggml's conv_2d).  The statistics of the norms are float32 sums (the CPU's are float64) and the products sum in another
order, so the rows are the CPU encoder's within float32 noise (tests/test_gpu_vision_encoders.py bounds them at 2e-3
of their largest, the GPU text path's bound against the CPU; measured on the tiny projectors: 2e-5 to 3e-4 with float32
weights, up to 7e-4 with F16, where dropping the F16 rounding makes it up to 1.8e-3).
"""

from __future__ import annotations

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
        return S.embed_patches(self, self.enc, pixels)

    def vit_block(self, L: dict[str, Any], x: Any, ffn_op: str) -> Any:
        return S.vit_block(self, self.enc, L, x, ffn_op)

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

    # ops for step3vl/youtuvl/cogvlm/deepseekocr/ldp/gemma3nv (p95)

    def product_f16(self, x: Any, k: np.ndarray, b: np.ndarray | None = None) -> Any:
        """``x`` (rounded to F16 by ``linear``) times the host kernel ``k`` of F16 values, uploaded once as an F16
        weight, plus ``b`` (models/vit_ops.py HostViT's)."""
        return self.linear(self.matrix(k, f16=True), x, b)

    def conv2d(self, x: Any, kern: Any, stride: int, pad: int) -> Any:
        """``x`` [C, H, W] convolved by ``kern`` (models/vit_ops.py HostViT's): the im2col rows (channel, row, column)
        built on the device, times the kernel as a matrix uploaded once (F16 where ``kern.f16``: ``linear`` rounds the
        rows then) -> [out, Ho, Wo]."""
        xp = self.xp
        o, c, k, _ = kern.w.shape
        if pad:
            x = xp.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
        if k == stride:  # (a patch embedding: the windows tile the picture)
            cols = x[:, : ho * k, : wo * k].reshape(c, ho, k, wo, k).transpose(1, 3, 0, 2, 4)
        else:
            taps = [x[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride] for ky in range(k) for kx in range(k)]
            cols = xp.stack(taps, -1).transpose(1, 2, 0, 3)  # [ho, wo, c, k*k]
        y = self.linear(self._kernel_matrix(kern.w, kern.f16), xp.ascontiguousarray(cols.reshape(ho * wo, c * k * k)))
        return xp.ascontiguousarray(y.T).reshape(o, ho, wo)

    def channel_norm(self, x: Any, w: np.ndarray, b: np.ndarray, eps: float) -> Any:
        """LayerNorm over the channels of each pixel of ``x`` [C, H, W] (the backend's, on the rows of the grid)."""
        C, h, wd = x.shape
        y = self.layer_norm(self.xp.ascontiguousarray(x.reshape(C, h * wd).T), w, b, eps)
        return self.xp.ascontiguousarray(y.T).reshape(C, h, wd)

    def attend_rel(self, q: Any, k: Any, v: Any, rh: Any, rw: Any, f16: bool, scale: Any) -> Any:
        """SAM's attention with its relative positions (models/vit_ops.py HostViT's) on the device, a head at a time
        for all B grids: each row of the grid y's products with its table rh[y] (and column x's with rw[x]) one
        batched matmul, the scores [B, T, T] a head."""
        xp = self.xp
        B, H, T, d = q.shape
        h, w = rh.shape[0], rw.shape[0]
        qr = (self.f16(q) if f16 else q).reshape(B, H, h, w, d)
        bias_h = xp.matmul(qr.transpose(2, 0, 1, 3, 4), rh.transpose(0, 2, 1)[:, None, None]).transpose(1, 2, 0, 3, 4)  # [B, H, h, w, h]
        bias_w = xp.matmul(qr.transpose(3, 0, 1, 2, 4), rw.transpose(0, 2, 1)[:, None, None]).transpose(1, 2, 3, 0, 4)  # [B, H, h, w, w]
        out = xp.empty((B, H, T, d), F32)
        for n in range(H):
            s = xp.matmul(q[:, n], k[:, n].transpose(0, 2, 1)) * scale  # [B, T, T]
            s = (s.reshape(B, T, h, w) + bias_h[:, n].reshape(B, T, h)[..., None] + bias_w[:, n].reshape(B, T, w)[:, :, None, :]).reshape(B, T, T)
            s = xp.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, n] = xp.matmul(s, v[:, n])
        return out

    def dw_conv3(self, fmap: Any, k: np.ndarray, stride: int) -> Any:
        """The depthwise 3x3 convolution (models/vit_ops.py HostViT's) on the device: the map rounded to F16 and
        zero-padded, the nine taps' products with the kernel (uploaded once) summed in float32 in the host's order."""
        xp = self.xp
        C, H, W = fmap.shape
        x = xp.pad(self.f16(fmap), ((0, 0), (1, 1), (1, 1)))
        kd = self.const(k)
        oh, ow = (H - 1) // stride + 1, (W - 1) // stride + 1
        out = xp.zeros((C, oh, ow), F32)
        for ky in range(3):
            for kx in range(3):
                out += kd[:, ky, kx, None, None] * x[:, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
        return out

    def hardsigmoid(self, x: Any) -> Any:
        """min(1, max(0, (x + 3) / 6)) on the device."""
        xp = self.xp
        return xp.minimum(F32(1.0), xp.maximum(F32(0.0), (x + F32(3.0)) / F32(6.0)))

    def mobilenet_conv(self, x: Any, kern: Any, stride: int = 1, pad: int | None = None, depthwise: bool = False) -> Any:
        """MobileNetV5's convolution (models/vit_ops.py HostViT's) on the device: the map rounded to F16 for an F16
        kernel and padded; a full convolution one product of the im2col rows and the kernel (uploaded once), a
        depthwise one the taps' products summed in float32."""
        from .gemma3nv_image import same_split

        xp = self.xp
        o, k = kern.w.shape[0], kern.w.shape[-1]
        if kern.f16:
            x = self.f16(x)
        C, h, w = x.shape
        if k == 1 and stride == 1 and not depthwise:  # (a pointwise conv: one product)
            y = self.linear(self._kernel_matrix(kern.w, kern.f16), xp.ascontiguousarray(x.reshape(C, h * w).T))
            return xp.ascontiguousarray(y.T).reshape(o, h, w)
        (t, b), (lft, r) = (same_split(h, k, stride), same_split(w, k, stride)) if pad is None else ((pad, pad), (pad, pad))
        x = xp.pad(x, ((0, 0), (t, b), (lft, r)))
        ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
        taps = [x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] for i in range(k) for j in range(k)]
        if depthwise:
            kd = self.const(kern.w)
            out = xp.zeros((C, ho, wo), F32)
            for n, tap in enumerate(taps):
                out += kd[:, 0, n // k, n % k, None, None] * tap
            return out
        cols = xp.stack(taps, -1).transpose(1, 2, 0, 3).reshape(ho * wo, C * k * k)  # (channel, row, column)
        y = self.linear(self._kernel_matrix(kern.w, kern.f16), xp.ascontiguousarray(cols))
        return xp.ascontiguousarray(y.T).reshape(o, ho, wo)

    def _kernel_matrix(self, w: np.ndarray, f16: bool) -> Weight:
        """The host kernel ``w`` [out, ...] as a matrix [out, rest] uploaded once (F16 where ``f16``)."""
        hit = self.__dict__.setdefault("_kernels", {}).get(id(w))
        if hit is None or hit[0] is not w:
            hit = self._kernels[id(w)] = (w, self.matrix(w.reshape(w.shape[0], -1), f16=f16))
        return hit[1]

    def rms_norm_2d(self, x: Any, w: np.ndarray | None, eps: float) -> Any:
        """Each pixel of ``x`` [C, H, W] RMS-normalised over its channels (float32 sums), times ``w``."""
        y = x * (1.0 / self.xp.sqrt(self.xp.mean(x * x, axis=0, keepdims=True) + F32(eps)))
        return y * self.const(w)[:, None, None] if w is not None else y

    def rms_norm_scaled(self, x: Any, w: np.ndarray | None, eps: float) -> Any:
        """RMSNorm over the last axis as x times the reciprocal root (float32 sums), times ``w`` where given."""
        y = x * (1.0 / self.xp.sqrt(self.xp.mean(x * x, axis=-1, keepdims=True) + F32(eps)))
        return y * self.const(w) if w is not None else y

    def product(self, x: Any, w: np.ndarray, f16: bool) -> Any:
        """x @ w.T with the host matrix ``w`` uploaded once (F16 where ``f16``: ``linear`` rounds ``x`` then)."""
        return self.linear(self.matrix(w, f16=f16), self.xp.ascontiguousarray(x))

    # ops for siglip/whisper (p96)

    def pooled_rms_norm(self, x: Any, nx: int, ny: int, k: int, w: np.ndarray, eps: float) -> Any:
        """:meth:`avg_pool` then :meth:`rms_norm` (float32 sums; the host's are float64 throughout)."""
        return self.rms_norm(self.avg_pool(x, nx, ny, k), w, eps)

    def matmul_stored(self, x: Any, w: np.ndarray, f16: bool = False) -> Any:
        """x @ w for a host matrix ``w`` [n_in, n_out] stored input-major: its transpose made once and uploaded once
        as a weight (F16 where ``f16``: :meth:`linear` rounds ``x`` then)."""
        cache = self.__dict__.setdefault("_transposed", {})
        hit = cache.get(id(w))
        if hit is None or hit[0] is not w:
            hit = cache[id(w)] = (w, np.ascontiguousarray(w.T))
        return self.linear(self.matrix(hit[1], f16=f16), x)

    def attend_masked(self, q: Any, k: Any, v: Any, mask: Any, scale: F32) -> Any:
        """softmax(q k^T scale + mask) v, grouped K/V heads (models/vit_ops.py HostViT's): encoder.cu's kernel with
        the device ``mask`` [T, S] as its bias shared by the heads, else on the host and back up."""
        from ..ops.gpu import encoder as E

        T, H, D = q.shape
        q, k, v = (self.xp.ascontiguousarray(t) for t in (q, k, v))
        if E.fits(k.shape[0], D):
            out = self.be.zeros((T, H, D), F32)
            E.attend_full(q, k, v, self.xp.ascontiguousarray(mask), float(scale), out)
            return out.reshape(T, H * D)
        from .vit_ops import HostViT

        host = HostViT.attend_masked(*(self.be.to_host(a) for a in (q, k, v, mask)), scale)
        return self.be.vector(host)


def of(enc: Any) -> DeviceViT:
    """``enc``'s device side, made on first use."""
    dev = enc.__dict__.get("_device_vit")
    if dev is None:
        dev = enc._device_vit = DeviceViT(enc)
    return dev


# --- the Whisper audio encoders' exact GELU (models/whisper_audio.py, DeviceViT.act) -------------------------------------


def gelu_erf(x: Any) -> Any:
    """ggml_gelu_erf (models/whisper_audio.py ``gelu_erf``) in place on the device array ``x`` (ops/gpu/whisper.cu)."""
    from ..ops.gpu import kernels as K

    n = x.size
    K.launch("gelu_erf_f32", (min(K.cdiv(n, 256), 8192),), (256,), x, x, n)
    return x


# ---------------------------------------------------------------- Qwen2.5-VL's windows (models/qwen2vl_image.py, DeviceViT.attend_windows)


def _attend_windows(enc: Any, q: Any, k: Any, v: Any, groups: list[Any], scale: F32) -> Any:
    """softmax(q k^T scale) v within each window: q, k, v [T, H, D] -> [T, H*D].  The windows of a size go in one
    launch as heads, so in runs of at most ``MAX_GRID_Y // H`` windows (a very large picture has more)."""
    from ..ops.gpu import encoder as E
    from ..ops.gpu import kernels as K

    d, xp = of(enc), of(enc).xp
    T, H, D = q.shape
    out = d.be.zeros((T, H, D), F32)
    for windows in groups:
        for lo in range(0, windows.shape[0], K.MAX_GRID_Y // H):
            idx = windows[lo : lo + K.MAX_GRID_Y // H]
            n, s = idx.shape
            qg, kg, vg = (xp.ascontiguousarray(xp.transpose(t[idx], (1, 0, 2, 3)).reshape(s, n * H, D)) for t in (q, k, v))
            o = d.be.zeros((s, n * H, D), F32)
            E.attend_full(qg, kg, vg, None, float(scale), o)
            out[idx] = xp.transpose(o.reshape(s, n, H, D), (1, 0, 2, 3))
    return out.reshape(T, H * D)
