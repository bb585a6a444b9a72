"""A tiny random MiniCPM-V pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "resampler", ``clip.minicpmv_version`` 5: MiniCPM-V 4.5's layout) and a Qwen3 text model whose
width is the projector's output and whose vocabulary knows ``<image>``, ``</image>``, ``<slice>`` and ``</slice>``.

The projector is laid out as llama.cpp's converter writes MiniCPM-V's (``v.patch_embd``, ``v.position_embd`` of
70 x 70 learned positions that clip.cpp buckets a slice's patches into, ``v.blk.N.*``, ``v.post_ln``, and the
perceiver resampler ``resampler.*``: learned queries, ``kv`` into the text width, LayerNorms ``ln_q``/``ln_kv``/
``ln_post``, one cross-attention ``attn.{q,k,v,out}`` and ``proj``), at toy sizes: 56-pixel slices (MiniCPM-V's are
448) in 14-pixel patches, a 32-wide encoder of 2 layers, 8 queries (``clip.minicpmv_query_num``; MiniCPM-V's 64)
into a text width of 128 (clip.cpp's resampler has heads of 128, one head here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_qwen3_text, write_vit
from tinymodel import _finish

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, N_QUERY, VERSION = 56, 14, 32, 48, 2, 2, 8, 5
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (MiniCPM-V's are 0.5 each: distinct ones catch a channel mix-up)
POS_SIDE = 70  # clip.cpp's bucket grid of learned positions (SigLIP-so400m's 980 / 14)
#: the text model: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
TEXT_GEOMETRY = (128, 4, 2, 32, 96, 2)
IMAGE_TOKENS = ["<image>", "</image>", "<slice>", "</slice>"]


def write_tiny_minicpmv_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, version: int = VERSION,
                               n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:  # fmt: skip
    """A random MiniCPM-V projector of ``version`` (clip.minicpmv_version); its matrices stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    flags: dict[str, bool | int] = {"clip.use_gelu": True}
    w = mmproj_writer(path, "tiny-minicpmv-mmproj", "resampler", flags, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD)
    w.add_int32("clip.minicpmv_version", version)
    w.add_uint32("clip.minicpmv_query_num", N_QUERY)
    # (the learned positions: write_vit's table has (S/p)^2 rows; MiniCPM-V's has the 70 x 70 clip.cpp indexes)
    mat, vec, tensor = write_vit(w, rng, qtype, geometry, PATCH, PATCH * POS_SIDE)
    E = n_text_embd
    w.add_tensor("resampler.pos_embed_k", (rng.standard_normal((N_QUERY, E)) * 0.1).astype(np.float32))  # (unread: clip.cpp makes its own)
    w.add_tensor("resampler.query", (rng.standard_normal((N_QUERY, E)) * 0.5).astype(np.float32))
    mat("resampler.kv.weight", E, V_EMBD, 0.3)
    for t in ("q", "k", "v", "out"):
        mat(f"resampler.attn.{t}.weight", E, E, 0.1)
        vec(f"resampler.attn.{t}.bias", E, 0.0)
    for t in ("q", "kv", "post"):
        vec(f"resampler.ln_{t}.weight", E)
        vec(f"resampler.ln_{t}.bias", E, 0.0)
    mat("resampler.proj.weight", E, E, 0.1)
    return _finish(w, path)


def write_tiny_minicpmv_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random Qwen3 text model (Q/K norms) 128 wide whose vocabulary knows MiniCPM-V's image and slice markers."""
    return write_qwen3_text(path, "tiny-minicpmv-text", TEXT_GEOMETRY, IMAGE_TOKENS, qtype, seed, chat_template)
