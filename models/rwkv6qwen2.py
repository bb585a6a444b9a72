"""RWKV6-Qwen2 (recursal's QRWKV6-32B-Instruct-Preview, featherless-ai's Qwerky-72B and -QwQ-32B: ``rwkv6qwen2``), as
llama.cpp's graph of that name: a Qwen 2 / 2.5 model whose attention was distilled into RWKV-6's time mix
(models/rwkv6.py), everything else Qwen's::

    x = embedding                                                   (no LN0)
    x = x + time_mix(rms_norm(x, attn_norm), its previous row)
    x = x + ffn_down(silu(ffn_gate h) * ffn_up h),   h = rms_norm(x, ffn_norm)

The time mix keeps RWKV-6's ddlerp token shift, LoRA'd data-dependent decay ``w`` and r/k/v/gate/output projections
(the converter reorders the ddlerp LoRA's outputs to RWKV-6's w, k, v, r, g), and differs in what llama.cpp calls its
"qrwkv" path (taken where a layer has no ``time_mix_first``, as every converted file):

* gated linear attention in place of WKV-6: per head ``S = w S + k' v``, ``y = (r . S) / sqrt(head_size)`` with the
  key ``k' = k (1 - w)`` and the token's own ``k' v`` in what it reads (no bonus ``u``).  kvrun's WKV-6 kernel
  (ops/cpu/wkv6.py: ``y = r . S_old``, then ``S = w S + k v``) computes it fed ``r w`` as the receptance and ``k'`` as
  the key, since ``r . (w S_old) = (r w) . S_old``; the model adds ``(r . k') v`` itself and scales;
* no group norm after it, and a sigmoid gate (RWKV-6's: SiLU);
* optional r/k/v biases (Qwen 2's attention biases) and fewer K/V heads than heads (``head_count_kv``, Qwen's GQA:
  each K/V head read by ``n_head / n_head_kv`` consecutive heads); ``head_count`` is 0 ("required, unused");
* Qwen's trunk, as ARWKV-7's (models/arwkv7.py, whose loading and FFN this borrows): RMSNorms without biases
  (``attention.layer_norm_rms_epsilon``), the output norm's bias optional, no LN0, a SwiGLU FFN in place of the
  channel mix, a separate output head, no residual halving, ``token_shift_count`` 1 (the time mix's only).

The cache is RWKV-6's (``cache/rwkv.py``, WKV-6 inside, the second token-shift row written and never read; on the GPU
``cache/gpu_recurrent.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import UnsupportedModelError
from ..ops.backend import Weight
from ..ops.host import sigmoid
from .arwkv7 import ARWKV7Model
from .common import WeightLoader
from .rwkv6 import RWKV6Layer, RWKV6Model


@dataclass
class RWKV6Qwen2Layer(RWKV6Layer):
    """RWKV-6's layer (no bonus, group norm, norm biases or channel mix) with Qwen's FFN."""

    w_gate: Weight | None = None  # [n_ff, n_embd]
    w_up: Weight | None = None  # [n_ff, n_embd]
    w_down: Weight | None = None  # [n_embd, n_ff]


class RWKV6Qwen2Model(RWKV6Model):
    archs = ("rwkv6qwen2",)
    token_shift_count = 1  # (the time mix's: the FFN reads no previous token; llama.cpp asserts n_embd_r() == n_embd)
    layer_type = RWKV6Qwen2Layer
    ffn_act = "silu"  # (Qwen's SwiGLU)
    lerps_apart = False  # (llama.cpp requires time_mix_lerp_fused here)

    # Qwen's trunk, ARWKV-7's: RMSNorms, the SwiGLU FFN (which closes the step in the cache's second shift row)
    norm = ARWKV7Model.norm
    channel_mix = ARWKV7Model.channel_mix

    def load_ends(self, w: WeightLoader) -> None:
        """ARWKV-7's (no LN0, the output RMSNorm and a separate head), the output norm's bias where the file has one."""
        ARWKV7Model.load_ends(self, w)
        self.output_norm_b = w.vector("output_norm_b", required=False)

    def final_norm(self, x: Any, out: Any) -> None:
        """The output RMSNorm, then its bias where the file has one (llama.cpp's build_norm adds it after the weight)."""
        self.norm(x, self.output_norm, None, out)
        if self.output_norm_b is not None:
            self.be.add_bias(out, self.output_norm_b)

    def load_ffn(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's two RMSNorms and its SwiGLU FFN (ARWKV-7's); no channel mix, no residual halving."""
        return dict(ARWKV7Model.load_ffn(self, w, i), cm_lerp_r=None, cm_receptance=None)

    def load_wkv_extras(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """None: gated linear attention has no bonus and no group norm.  A file with ``time_mix_first`` would take
        llama.cpp's WKV-6 path, whose group norm this architecture has no tensors for: refused."""
        if w.has("time_mix_first", i):
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.time_mix_first.weight (RWKV-6's bonus) in an rwkv6qwen2 file: "
                                        "llama.cpp runs such files only without it (gated linear attention)")  # fmt: skip
        return dict(u=None, ln=None, ln_b=None)

    def gate_act(self, g: np.ndarray) -> np.ndarray:
        """llama.cpp's qrwkv path gates with a sigmoid, not RWKV-6's SiLU."""
        return sigmoid(g)

    def recurrence(self, L: RWKV6Layer, state: Any, pos: np.ndarray, r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Gated linear attention (ggml_gated_linear_attn) through the WKV-6 kernel: the key ``k (1 - w)``, the
        receptance ``r w`` (the kernel reads the state before decaying it), the token's own ``(r . k') v`` added, all
        scaled by ``head_size ** -0.5``."""
        T, n = r.shape
        H, N = n // self.head_size, self.head_size
        k = k * (1.0 - w)
        y = self.wkv(state, pos, r * w, w, k, v)
        y3 = y.reshape(T, H, N)
        y3 += v.reshape(T, H, N) * np.einsum("thn,thn->th", r.reshape(T, H, N), k.reshape(T, H, N))[:, :, None]
        y *= np.float32(N**-0.5)
        return y
