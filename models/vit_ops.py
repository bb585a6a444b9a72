"""The ops a picture encoder's forward is written against, once for both devices: :class:`HostViT` here (numpy arrays,
the CPU encoder's arithmetic) and models/vit_device.py's :class:`~kvrun.models.vit_device.DeviceViT` (the GPU
backend's device arrays), both reached through :func:`ops_of`.

An encoder's forward used to live twice: its CPU body in models/*_image.py and a line-for-line device twin in
models/vit_device.py, which had to be kept in step by hand.  Now the forward is one function of the encoder's own file
taking ``ops`` (``PixtralEncoder.encode`` calls ``_forward(ops_of(self), self, pixels)``), and the two devices differ
only in the ops.  Both expose the same names:

    xp                      numpy or cupy, for the layout steps (reshape, transpose, concatenate, indexing)
    const(a) / vector(a)    a host array as the device's: a weight-like constant (kept across pictures on the device)
                            / a table made for this picture (uploaded each time); the host array itself here
    to_host(x)              the rows brought down once at the end; ``x`` itself here
    embed_patches(pixels)   clip.cpp's patch embedding (models/siglip.py ``MmprojEncoder.embed_patches``)
    linear(w, x, b)         x @ W.T (+ b), x rounded to F16 first for an F16 weight (ggml's vec_dot_type)
    layer_norm, rms_norm    the norms (statistics in float64 here, as the CPU encoders had them)
    attend(q, k, v, scale)  attention both ways, [T, H, D] -> [T, H*D] (models/siglip.py ``attend_heads``)
    act(x, op)              the MLP's activation (models/siglip.py ``activation``: ggml's float16-table GELU, ...)
    rope_pairs(q, k, c, s)  clip.cpp's ``build_rope_2d`` halves (models/siglip.py ``rope_halves``), the [T, D/2] table
    vit_block(L, x, op)     clip.cpp's pre-norm ViT block (models/siglip.py ``MmprojEncoder.vit_block``)
    rope_neox(q, k, c, s)   ggml's neox rope with the [T, D/2] table (Qwen2-VL's vision rope)
    patch_rows(x, kernels)  F16 patch rows times each of the F16 kernels, summed (Qwen2-VL's patch embedding)
    avg_pool(x, nx, ny, k)  k x k average pooling of a grid's rows (float64 here)
    matmul(x, w, f16)       host rows times a host matrix (rounded to F16 where ``f16``)
    product64(x, k, b)      a host kernel's product (a convolution's im2col; float64 sums here, float32 there)
    window_groups(win, T), attend_windows(q, k, v, groups, scale)   attention within windows (Qwen2.5-VL's)
    attend_batched(q, k, v, scale)   attention within groups of consecutive rows [B, S, H, D] (MiniCPM-V 4.6's)

HostViT's ops are the CPU encoders' own functions, called as they called them, so a converted encoder's CPU rows are
bitwise what they were before the forwards were merged (checked then: every tiny projector's rows hashed before and
after, all identical).  The device's keep
what vit_device.py's docstring says of them: within float32 noise of these (tests/test_gpu_vision_encoders*.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import siglip as S
from .bert import layer_norm

F32 = np.float32


class HostViT:
    """The ops of an encoder's forward on the host: numpy arrays, the CPU encoder's arithmetic.  ``chunk``: the query
    rows :func:`~kvrun.models.siglip.attend_heads` scores at once (the encoder's QUERY_CHUNK; None, all)."""

    xp = np

    def __init__(self, enc: Any, chunk: int | None = None) -> None:
        self.enc, self.chunk = enc, chunk

    @staticmethod
    def const(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def vector(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def to_host(x: np.ndarray) -> np.ndarray:
        return x

    def embed_patches(self, pixels: np.ndarray) -> np.ndarray:
        return S.embed_patches(self, self.enc, pixels)

    def linear(self, w: Any, x: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        return S.MmprojEncoder._linear(self.enc, w, x, b)

    @staticmethod
    def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
        return layer_norm(x, w, b, eps)

    @staticmethod
    def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, b: np.ndarray | None = None) -> np.ndarray:
        """RMSNorm over the last axis, times ``w`` (plus ``b``): float64 statistics, float32 out."""
        x64 = x.astype(np.float64)
        y = (x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)).astype(F32) * w
        return y + b if b is not None else y

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: Any) -> np.ndarray:
        T, H, D = q.shape
        return S.attend_heads(q, k, v, scale, self.chunk).reshape(T, H * D)

    @staticmethod
    def act(x: np.ndarray, op: str) -> np.ndarray:
        if op == "gelu_erf":  # (ggml_gelu_erf: MiniCPM-V 4.6's final merger, the Whisper encoders')
            from .whisper_audio import gelu_erf

            return gelu_erf(x)
        return S.activation(x, op)

    @staticmethod
    def attend_batched(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: Any) -> np.ndarray:
        """Attention within each of B groups of S consecutive rows: q, k, v [B, S, H, D] -> [B*S, H*D], all groups at
        once (MiniCPM-V 4.6's 2 x 2 windows)."""
        B, n, H, D = q.shape
        s = np.einsum("wihd,wjhd->whij", q, k) * scale
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        a = np.einsum("whij,wjhd->wihd", s.astype(F32), v)
        return np.ascontiguousarray(a, F32).reshape(B * n, H * D)

    @staticmethod
    def rope_pairs(q: np.ndarray, k: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return S.rope_halves(q, cos, sin), S.rope_halves(k, cos, sin)

    def vit_block(self, L: dict[str, Any], x: np.ndarray, ffn_op: str) -> np.ndarray:
        return S.vit_block(self, self.enc, L, x, ffn_op)

    @staticmethod
    def rope_neox(q: np.ndarray, k: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both turned by ggml's neox rope over the whole head, pairs (i, i + D/2), by the [T, D/2] table (Qwen2-VL's
        vision rope, models/qwen2vl_image.py ``vision_rope``)."""

        def turn(t: np.ndarray) -> np.ndarray:
            h = t.shape[-1] // 2
            a, b = t[..., :h], t[..., h:]
            cc, ss = cos[:, None, :], sin[:, None, :]
            return np.concatenate([a * cc - b * ss, a * ss + b * cc], axis=-1)

        return turn(q), turn(k)

    @staticmethod
    def avg_pool(x: np.ndarray, nx: int, ny: int, k: int) -> np.ndarray:
        """The rows [ny*nx, E] of a grid averaged k x k (blocks in raster order), in float64: [(ny/k)(nx/k), E]."""
        E = x.shape[-1]
        return x.reshape(ny // k, k, nx // k, k, E).mean(axis=(1, 3), dtype=np.float64).reshape(-1, E).astype(F32)

    @staticmethod
    def patch_rows(x: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
        """Patch rows ``x`` [T, 3 p p] (rounded to F16 already) times each F16-valued kernel [n_embd, 3 p p], summed
        (Qwen2-VL's two temporal convolutions, ggml's conv_2d)."""
        out = np.zeros((x.shape[0], kernels[0].shape[0]), F32)
        for k in kernels:
            out += x @ k.T
        return out

    @staticmethod
    def matmul(x: np.ndarray, w: np.ndarray, f16: bool = False) -> np.ndarray:
        """Host rows ``x`` times a host matrix ``w`` [n_out, n_in] (x @ w.T), both rounded to F16 first where ``f16``
        (Llama 4's patch kernel as the file stores it)."""
        return S._f16(x) @ S._f16(w).T if f16 else x @ w.T

    @staticmethod
    def product64(x: np.ndarray, k: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """x @ k.T (+ b) for a host kernel ``k`` [n_out, n_in] (a convolution over im2col rows), summed in float64."""
        out = (x.astype(np.float64) @ k.T.astype(np.float64)).astype(F32)
        return out + b if b is not None else out

    @staticmethod
    def window_groups(win: np.ndarray | None, T: int) -> list[np.ndarray]:
        """The attention windows for :meth:`attend_windows`: each window's rows (``win`` each row's window; None,
        one window of all T rows)."""
        return [np.arange(T)] if win is None else [np.nonzero(win == w)[0] for w in np.unique(win)]

    def attend_windows(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, groups: list[np.ndarray], scale: Any) -> np.ndarray:
        """softmax(q k^T scale) v within each window of ``groups`` (a window's rows attend to its rows alone), ``chunk``
        queries at a time: [T, H, D] -> [T, H*D]."""
        T, H, D = q.shape
        a = np.empty((T, H, D), F32)
        for g in groups:
            step = self.chunk or len(g)
            for q0 in range(0, len(g), step):
                rq = g[q0 : q0 + step]
                for hd in range(H):
                    sc = (q[rq, hd] @ k[g, hd].T) * scale
                    sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
                    sc /= sc.sum(axis=-1, keepdims=True)
                    a[rq, hd] = sc @ v[g, hd]
        return a.reshape(T, H * D)

    # ops for step3vl/youtuvl/cogvlm/deepseekocr/ldp/gemma3nv (p95)

    @staticmethod
    def product_f16(x: np.ndarray, k: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """``x`` rounded to F16 times a host kernel ``k`` [n_out, n_in] of F16 values (x @ k.T), plus ``b``: a
        convolution over im2col rows as ggml_conv_2d runs it (Step3-VL's projector)."""
        y = S._f16(x) @ k.T
        if b is not None:
            y += b
        return y

    @staticmethod
    def conv2d(x: np.ndarray, kern: Any, stride: int, pad: int) -> np.ndarray:
        """``x`` [C, H, W] convolved by ``kern`` (``.w`` [out, C, k, k], ``.f16``: F16 patches), zero padding ``pad``,
        at ``stride``, no bias: [out, Ho, Wo] (models/deepseekocr_image.py ``conv2d``)."""
        from .deepseekocr_image import conv2d

        return conv2d(x, kern, stride, pad)

    @staticmethod
    def channel_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
        """LayerNorm over the channels of each pixel of ``x`` [C, H, W] (SAM's LayerNorm2d)."""
        from .bert import layer_norm as norm

        return np.ascontiguousarray(norm(x.transpose(1, 2, 0), w, b, eps).transpose(2, 0, 1))

    @staticmethod
    def attend_rel(q: np.ndarray, k: np.ndarray, v: np.ndarray, rh: np.ndarray, rw: np.ndarray, f16: bool, scale: Any) -> np.ndarray:
        """SAM's attention within each of B grids of h x w rows: q, k, v [B, H, h*w, d], the scaled scores plus the
        query's products with the relative tables ``rh`` [h, h, d] (by row offset) and ``rw`` [w, w, d] (by column
        offset; the query rounded to F16 first where ``f16``, the tables' type): [B, H, h*w, d]."""
        B, H, T, d = q.shape
        h, w = rh.shape[0], rw.shape[0]
        qr = (S._f16(q) if f16 else q).reshape(B, H, h, w, d)
        bias_h = np.einsum("bnyxc,ykc->bnyxk", qr, rh, optimize=True).reshape(B, H, T, h)
        bias_w = np.einsum("bnyxc,xkc->bnyxk", qr, rw, optimize=True).reshape(B, H, T, w)
        out = np.empty((B, H, T, d), F32)
        step = max(1, (1 << 22) // T)  # (query rows a time: a 64x64 grid's scores are 64 MiB a head)
        for b in range(B):
            for n in range(H):
                for q0 in range(0, T, step):
                    s = q[b, n, q0 : q0 + step] @ k[b, n].T * scale
                    s = (s.reshape(-1, h, w) + bias_h[b, n, q0 : q0 + step, :, None] + bias_w[b, n, q0 : q0 + step, None, :]).reshape(-1, T)
                    s = np.exp(s - s.max(axis=-1, keepdims=True))
                    s /= s.sum(axis=-1, keepdims=True)
                    out[b, n, q0 : q0 + step] = s @ v[b, n]
        return out

    @staticmethod
    def dw_conv3(fmap: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
        """ggml's depthwise 3x3 ``conv_2d_dw`` of [C, H, W] by the F16 kernels ``k`` [C, 3, 3], padding 1
        (models/llava_image.py ``dw_conv3``: MobileVLM's)."""
        from .llava_image import dw_conv3

        return dw_conv3(fmap, k, stride)

    @staticmethod
    def hardsigmoid(x: np.ndarray) -> np.ndarray:
        """min(1, max(0, (x + 3) / 6)) (models/llava_image.py ``hardsigmoid``)."""
        from .llava_image import hardsigmoid

        return hardsigmoid(x)

    @staticmethod
    def mobilenet_conv(x: np.ndarray, kern: Any, stride: int = 1, pad: int | None = None, depthwise: bool = False) -> np.ndarray:
        """``x`` [C, H, W] convolved by ``kern`` (``.w`` [out, in/groups, k, k], ``.f16``), padding ``pad`` a side
        (None: TF's SAME for the stride), full or depthwise (models/gemma3nv_image.py ``conv``: MobileNetV5's)."""
        from .gemma3nv_image import conv

        return conv(x, kern, stride, pad, depthwise)

    @staticmethod
    def rms_norm_2d(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """Each pixel of ``x`` [C, H, W] RMS-normalised over its channels, times ``w`` (models/gemma3nv_image.py's;
        its epsilon, ``eps``, the module's)."""
        from .gemma3nv_image import EPS, rms_norm_2d

        assert eps == EPS
        return rms_norm_2d(x, w)

    @staticmethod
    def rms_norm_scaled(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """RMSNorm over the last axis as x times the float32 reciprocal root, times ``w`` where given
        (models/gemma3nv_image.py ``rms_norm``)."""
        from .gemma3nv_image import EPS, rms_norm

        assert eps == EPS
        return rms_norm(x, w)

    @staticmethod
    def product(x: np.ndarray, w: np.ndarray, f16: bool) -> np.ndarray:
        """x @ w.T for a host matrix ``w`` [n_out, n_in], ``x`` rounded to F16 first where ``f16`` (the values of ``w``
        are F16's then): Gemma 3n's ``mm.input_projection``."""
        return ((S._f16(x) if f16 else x) @ w.T).astype(F32)

    # ops for siglip/whisper (p96)

    @staticmethod
    def f16(x: np.ndarray) -> np.ndarray:
        """``x`` rounded to float16 and back (models/siglip.py ``_f16``)."""
        return S._f16(x)

    @staticmethod
    def pooled_rms_norm(x: np.ndarray, nx: int, ny: int, k: int, w: np.ndarray, eps: float) -> np.ndarray:
        """The rows of a grid averaged k x k (:meth:`avg_pool`'s blocks), then RMSNorm times ``w``: the pooled rows
        float64 into the norm, float32 out (Gemma 3's projector, models/siglip.py)."""
        E = x.shape[-1]
        x = x.reshape(ny // k, k, nx // k, k, E).mean(axis=(1, 3), dtype=np.float64).reshape(-1, E)
        return (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)).astype(F32) * w

    @staticmethod
    def matmul_stored(x: np.ndarray, w: np.ndarray, f16: bool = False) -> np.ndarray:
        """x @ w for a host matrix ``w`` [n_in, n_out] stored input-major (Gemma 3's ``mm.input_projection``), ``x``
        rounded to F16 first where ``f16`` (the values of ``w`` are F16's then)."""
        return np.ascontiguousarray((S._f16(x) if f16 else x) @ w, F32)

    @staticmethod
    def attend_masked(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: Any) -> np.ndarray:
        """softmax(q k^T scale + mask) v (ggml's soft_max_ext), each K/V head shared by a group of query heads:
        q [T, H, D], k, v [S, H_kv, D], mask [T, S] -> [T, H*D] (DeepSeek-OCR 2's Qwen2 encoder)."""
        T, H, D = q.shape
        g = H // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("thd,shd->hts", q, k).astype(F32) * F32(scale) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return np.ascontiguousarray(np.einsum("hts,shd->thd", s, v), F32).reshape(T, H * D)


def merge_permute(x: Any, nx: int, ny: int, k: int) -> Any:
    """clip.cpp's ``build_patch_merge_permute`` on either device's rows (array methods alone): a grid of nx x ny
    patches [ny*nx, E] (raster order) -> [(ny/k)(nx/k), k*k*E], each row a k x k block (row in the block, column in
    the block, channel), as models/lfm2vl_image.py's ``unshuffle``."""
    E = x.shape[-1]
    return x.reshape(ny // k, k, nx // k, k, E).transpose(0, 2, 1, 3, 4).reshape(-1, k * k * E)


def ops_of(enc: Any, chunk: int | None = None, host: type[HostViT] = HostViT) -> Any:
    """The ops ``enc``'s forward runs on: its backend's device side on the GPU (models/vit_device.py, made once an
    encoder), else ``host`` (:class:`HostViT`, or an encoder's subclass where its CPU arithmetic is its own) with
    ``chunk`` query rows scored at once."""
    if enc.be.name == "gpu":
        from . import vit_device

        return vit_device.of(enc)
    return host(enc, chunk)
