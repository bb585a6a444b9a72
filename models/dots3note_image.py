"""dots.note's picture side (rednote's, projector type "dots3note_v"), as llama.cpp 0.3.36's clip.cpp builds it: "same
ViT + merger [as dots.ocr]; pyramid MoE is handled by build_vit" (``clip_graph_dotsocr`` for PROJECTOR_TYPE_DOTS3NOTE_V).

dots.ocr's encoder (models/dotsocr_image.py: the picture at about its own size within the file's pixel limits, the
raster-order NaViT with its 2-D vision rope, the 2x2 merger) with what dots.note's converter adds (conversion/dots3.py
``Dots3NoteMmprojModel``):

* each head's queries and keys RMS-normed before the rope (``attn_q_norm`` / ``attn_k_norm``, a head wide: clip.cpp's
  ``build_vit`` on the fused QKV's views, the file's epsilon);
* the "pyramid": the blocks the file gives routed experts (``clip.vision.expert_count_per_layer``, 0 a dense block;
  clip.cpp goes by the tensors, ``ffn_gate_exps`` present) replace the SwiGLU MLP with clip.cpp's ``build_moe_ffn``:
  a float32 router ``ffn_gate_inp`` and its sigmoid ``p``; the ``clip.vision.expert_used_count`` experts of the
  largest ``p + exp_probs_b`` (the bias chooses, it does not weigh); their weights ``p`` of the chosen over the sum of
  those ``p``; each chosen expert's SwiGLU (``ffn_gate_exps``, ``ffn_up_exps``, ``ffn_down_exps``, no biases), weighed
  and summed;
* the merge as ``clip.vision.spatial_merge_size`` (loaders/mmproj.py).

The experts run on the rows that chose them (gathered, then scattered back), each expert a Weight of its own cut from the
stacked tensor, so the forward is dots.ocr's one function on models/vit_ops.py's ops (either device).  The layout is
dots.ocr's (``<|img|>`` rows ``<|endofimg|>``: runtime/vision_dots3note.py), beside dots.note's text model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .dotsocr_image import DotsOCREncoder, fused_qkv_layer

F32 = np.float32
TENSOR_NAMES.update({  # (clip.cpp's TN_ATTN_Q_NORM / K_NORM and the MoE names, dots.note's vision blocks)
    "d3v_q_norm": "v.blk.{i}.attn_q_norm.weight", "d3v_k_norm": "v.blk.{i}.attn_k_norm.weight",
    "d3v_router": "v.blk.{i}.ffn_gate_inp.weight", "d3v_probs_b": "v.blk.{i}.exp_probs_b.weight",
    "d3v_gate_exps": "v.blk.{i}.ffn_gate_exps.weight", "d3v_up_exps": "v.blk.{i}.ffn_up_exps.weight",
    "d3v_down_exps": "v.blk.{i}.ffn_down_exps.weight",
})  # fmt: skip


class Dots3NoteVisionEncoder(DotsOCREncoder):
    """dots.note's vision encoder: dots.ocr's with per-head Q/K RMSNorms and blocks of routed experts."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        used = g.get("clip.vision.expert_used_count")
        if used is None or int(used) <= 0:  # (clip.cpp requires it of this projector type)
            raise GGUFError(f"{g.path}: clip.vision.expert_used_count is missing; the dots3note_v projector file is incomplete")
        self.n_used = int(used)
        super().__init__(g, cfg, backend)

    def load_block(self, ld: WeightLoader, i: int) -> dict[str, Any]:
        """dots.ocr's block, its Q/K norms and, where the file has ``ffn_gate_exps``, its experts for the MLP."""
        E, D = self.cfg.n_embd, self.cfg.n_embd // self.cfg.n_head
        moe = ld.has("d3v_gate_exps", i)
        L = fused_qkv_layer(ld, i, E, E, "dots", mlp=not moe)
        for r in ("q", "k"):
            L[r + "_norm"] = ld.host_vector(f"d3v_{r}_norm", i)
            if L[r + "_norm"].shape[0] != D:
                raise GGUFError(f"{ld.g.path}: v.blk.{i}.attn_{r}_norm.weight has {L[r + '_norm'].shape[0]} weights, not a head's {D}")
        if moe:
            L["router"], L["probs_b"] = ld.matrix("d3v_router", i), ld.host_vector("d3v_probs_b", i, required=False)
            n_exp, n_ff = L["router"].n_rows, int(ld.g.tensors[TENSOR_NAMES["d3v_gate_exps"].format(i=i)].shape[1])
            for r, rows, cols in (("gate", n_ff, E), ("up", n_ff, E), ("down", E, n_ff)):
                ld.experts(f"d3v_{r}_exps", i, n_exp, rows, cols)  # (its shape checked: one-line errors)
                L[r + "_exps"] = ld.matrix_rows(f"d3v_{r}_exps", i, (rows,) * n_exp)
        return L

    def heads(self, ops: Any, L: dict[str, Any], r: str, t: Any) -> Any:
        """Each head RMS-normed (the file's epsilon) times ``attn_<r>_norm``, before the rope."""
        T, H, D = t.shape
        return ops.rms_norm(t.reshape(T * H, D), L[r + "_norm"], self.cfg.eps).reshape(T, H, D)

    def mlp(self, ops: Any, L: dict[str, Any], h: Any) -> Any:
        """dots.ocr's SwiGLU in a dense block; in a block of experts clip.cpp's ``build_moe_ffn`` (the module says)."""
        if "router" not in L:
            return super().mlp(ops, L, h)
        xp = ops.xp
        p = 1.0 / (1.0 + xp.exp(-ops.linear(L["router"], h)))  # [T, n_exp]: the sigmoid of the float32 router
        sel = p if L["probs_b"] is None else p + ops.const(L["probs_b"])
        k = min(self.n_used, p.shape[1])
        top = xp.argsort(-sel, axis=1, kind="stable")[:, :k]  # (the bias chooses the experts ...)
        w = xp.take_along_axis(p, top, axis=1)  # (... the sigmoid alone weighs them)
        w = (w / w.sum(axis=1, keepdims=True)).astype(F32)
        out = xp.zeros((h.shape[0], self.cfg.n_embd), F32)
        for e in range(len(L["gate_exps"])):
            rows, slot = xp.nonzero(top == e)  # (the rows that chose expert e; each chooses it once at most)
            if rows.shape[0] == 0:
                continue
            x = h[rows]
            act = ops.act(ops.linear(L["gate_exps"][e], x), "silu") * ops.linear(L["up_exps"][e], x)
            out[rows] += ops.linear(L["down_exps"][e], act) * w[rows, slot][:, None]
        return out
