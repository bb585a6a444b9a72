"""A tiny random Nemotron Nano VL picture pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "nemotron_v2_vl") and a ``nemotron_h`` text model whose width is the
projector's output (NVIDIA's Nemotron Nano VL: a RADIO v2.5 ViT before a Nemotron-H, conversion/nemotron.py
``NemotronNanoV2VLModel``).

The projector is laid out as llama.cpp's converter writes RADIO's: ``v.patch_embd`` (RADIO's linear patch embedder
reshaped to a convolution, no bias), ``v.position_embd`` one row a patch (the converter resamples RADIO's table to the
fixed input), ``v.class_embd`` [n_registers, n_embd] (RADIO's CLS token and registers, before the patches),
``v.blk.N.*`` LayerNorm blocks with biases and a GELU MLP, ``v.post_ln``; the projector ``mm.model.mlp.0`` (an
RMSNorm weight), ``mm.model.mlp.1`` and ``mm.model.mlp.3`` (no biases; squared ReLU between).  Toy sizes: 32-pixel
pictures (RADIO's are 512) in 8-pixel patches (4x4 patches, 3 register rows, pixel-shuffled 2x2 into 4 rows of
4 x 32), a 32-wide encoder of 2 layers.  The text model is tinymodel's ``nemotron_h`` (64 wide); libmtmd puts no
markers around the picture, so its vocabulary needs none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_vit_blocks
from tinymodel import _finish, _random_tensors, write_tiny_model

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF, N_REG, N_TEXT = 32, 8, 2, 32, 48, 2, 2, 96, 3, 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # (the converter's defaults: ImageNet's)


def write_tiny_nemotronvl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random Nemotron Nano VL picture projector; its matrices (patch kernel and MLP included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-nemotronvl-mmproj", "nemotron_v2_vl", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry,
                      n_text_embd, MEAN, STD, scale=SCALE)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    w.add_tensor("v.class_embd", (rng.standard_normal((N_REG, V_EMBD)) * 0.5).astype(np.float32))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal(((IMAGE_SIZE // PATCH) ** 2, V_EMBD)) * 0.5).astype(np.float32))
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    k = V_EMBD * SCALE * SCALE  # the pixel shuffle's width
    vec("mm.model.mlp.0.weight", k)
    mat("mm.model.mlp.1.weight", MM_FF, k, 0.2)
    mat("mm.model.mlp.3.weight", n_text_embd, MM_FF, 0.2)
    return _finish(w, path)


def write_tiny_nemotronvl_omni_mmproj(path: Path, qtype: int = Q.F32) -> Path:
    """The projector file of a Nemotron Nano VL with audio, as the converter writes it: both encoders
    (``clip.has_vision_encoder`` and ``clip.has_audio_encoder``), ``clip.vision.projector_type`` "nemotron_v2_vl" and
    ``clip.audio.projector_type`` "parakeet": this module's picture side (its keys and tensors) merged with
    tests/tiny_audio_parakeet.py's audio side (its placeholder ``mm.model.mlp.*`` left out for the real ones).
    (Measured: libmtmd 0.3.36 gives a picture the same rows from it as from the picture-only file, bit for bit.)"""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from tiny_audio_parakeet import write_tiny_parakeet_mmproj

    sides = [GGUFReader(write_tiny_nemotronvl_mmproj(path.with_suffix(".v.gguf"), qtype)),
             GGUFReader(write_tiny_parakeet_mmproj(path.with_suffix(".a.gguf"), qtype))]  # fmt: skip
    w = GGUFWriter(str(path), "clip")
    keys, tensors = set(), set()
    for r in sides:
        for f in r.fields.values():
            name = "clip.vision.projector_type" if f.name == "clip.projector_type" else f.name
            if name.startswith("GGUF.") or name == "general.architecture" or name in keys:
                continue
            keys.add(name)
            sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
            w.add_key_value(name, True if name.startswith("clip.has_") else f.contents(), f.types[0], sub_type=sub)
    for r in sides:
        for t in r.tensors:
            if t.name not in tensors:
                tensors.add(t.name)
                w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def write_tiny_nemotronvl_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``nemotron_h`` text model 64 wide (tinymodel's: Mamba-2, attention and squared-ReLU FFN layers)."""
    return write_tiny_model(path, "nemotron_h", qtype, seed)
