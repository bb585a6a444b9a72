"""Regenerate tests/fixtures/vision_qwen2vl.npz: llama.cpp's libmtmd on the tiny Qwen2-VL / Qwen2.5-VL pairs of
``tests/tiny_vision_qwen2vl.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_qwen2vl_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and each projector of ``PROJECTORS`` (Qwen2-VL's stored F32
and F16, Qwen2.5-VL's F32), libmtmd lays the picture out (mtmd_tokenize on a lone marker): ``ids_<p>_<name>`` the
chunks' token ids (-1 for an image row), ``embd_<p>_<name>`` the image chunk's rows (mtmd_encode_chunk; the encoder's
flash attention off, so attention is float32 softmax(QK^T)V as kvrun's), ``grid_<p>_<name>`` the rows' grid and
positions taken (nx, ny, n_pos) and ``dpos_<p>_<name>`` each row's decoder position (t, x, y, z) for an image at
position 0 (mtmd_image_tokens_get_decoder_pos).  For each text pair (``q2``: Qwen2-VL's F32 projector, ``q25``:
Qwen2.5-VL's) and each prompt of ``PROMPTS``: ``pids_<t>_<k>`` its chunks' ids, ``logits_<t>_<k>`` the logits after
them all (mtmd_helper_eval_chunks, then llama_get_logits_ith(-1)) and ``npast_<t>_<k>`` the position after them.
``sha256_*``: the files' digests (the test writes the same bytes again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_vision import sample_image  # noqa: E402
from tiny_vision_qwen2vl import write_tiny_qwen2vl_mmproj, write_tiny_qwen2vl_text  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
#: pictures (width, height, seed): whole 28-pixel blocks already (no resize; 6x4 rows, two attention windows
#: across), sides rounded to blocks (150 -> 140, 100 -> 112), too few pixels (scaled up to the minimum of 8 rows'
#: worth), tall (60 -> 56, 200 -> 196)
IMAGES = {"exact": (168, 112, 0), "odd": (150, 100, 1), "small": (40, 30, 2), "tall": (60, 200, 3)}
#: projector files: name -> (qtype name, Qwen2.5-VL)
PROJECTORS = {"q2_f32": ("F32", False), "q2_f16": ("F16", False), "q25_f32": ("F32", True)}
#: text pairs: the text model with this projector
PAIRS = {"q2": "q2_f32", "q25": "q25_f32"}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]

_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
model_path, proj_paths, images, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
names, pairs = json.loads(sys.argv[6]), json.loads(sys.argv[7])
imgs = dict(np.load(images))
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
n_embd = llama_cpp.llama_model_n_embd(model)
res = {}

def bitmap(a):
    a = np.ascontiguousarray(a)
    return m.mtmd_bitmap_init(a.shape[1], a.shape[0], a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))

def chunks_of(ctx, text, bitmaps):
    t = m.mtmd_input_text(text.encode(), len(text.encode()), True, True)
    chunks = m.mtmd_input_chunks_init()
    arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
    assert m.mtmd_tokenize(ctx, chunks, ctypes.byref(t), arr, len(bitmaps)) == 0
    return chunks

def layout(ctx, chunks, encode):
    ids, rows, grids, dpos = [], [], [], []
    for i in range(m.mtmd_input_chunks_size(chunks)):
        c = m.mtmd_input_chunks_get(chunks, i)
        n = m.mtmd_input_chunk_get_n_tokens(c)
        if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            nt = ctypes.c_size_t()
            tp = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(nt))
            ids += [tp[j] for j in range(nt.value)]
        else:
            ids += [-1] * n
            it = m.mtmd_input_chunk_get_tokens_image(c)
            grids.append([m.mtmd_image_tokens_get_nx(it), m.mtmd_image_tokens_get_ny(it), m.mtmd_input_chunk_get_n_pos(c)])
            ps = [m.mtmd_image_tokens_get_decoder_pos(it, 0, j) for j in range(n)]
            dpos.append(np.asarray([[p.t, p.x, p.y, p.z] for p in ps], np.int64))
            if encode:
                assert m.mtmd_encode_chunk(ctx, c) == 0
                p = m.mtmd_get_output_embd(ctx)
                rows.append(np.ctypeslib.as_array(p, shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows, grids, dpos

for q, proj in proj_paths.items():
    p = m.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, 0
    ctx = m.mtmd_init_from_file(proj.encode(), model, p)
    for name in names:
        ids, rows, grids, dpos = layout(ctx, chunks_of(ctx, "<__media__>", [bitmap(imgs[name])]), True)
        res[f"ids_{q}_{name}"], res[f"embd_{q}_{name}"] = ids, np.concatenate(rows)
        res[f"grid_{q}_{name}"], res[f"dpos_{q}_{name}"] = np.asarray(grids[0], np.int64), dpos[0]
    for t, pq in pairs.items():
        if pq != q:
            continue
        for k, prompt in enumerate(prompts):
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 512, 64, 64, 1, 1
            lctx = llama_cpp.llama_init_from_model(model, cp)
            bms = [bitmap(imgs[names[j]]) for j in range(prompt.count("<__media__>"))]
            chunks = chunks_of(ctx, prompt, bms)
            res[f"pids_{t}_{k}"] = layout(ctx, chunks, False)[0]
            new_past = llama_cpp.llama_pos(0)
            assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
            nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
            res[f"logits_{t}_{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
            res[f"npast_{t}_{k}"] = np.asarray(new_past.value, np.int64)
            llama_cpp.llama_free(lctx)
np.savez(out, **res)
"""


def images() -> dict[str, np.ndarray]:
    """The fixture's pictures, uint8 RGB [height, width, 3]."""
    return {k: sample_image(w, h, seed=s) for k, (w, h, s) in IMAGES.items()}


def write_pair(d: Path) -> dict[str, Path]:
    """The text model and the projectors of ``PROJECTORS``, written into ``d``."""
    from gguf import GGMLQuantizationType as Q

    files = {"text": write_tiny_qwen2vl_text(d / "text.gguf")}
    for name, (q, q25) in PROJECTORS.items():
        files[name] = write_tiny_qwen2vl_mmproj(d / f"mmproj-{name}.gguf", Q[q], qwen25=q25)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = write_pair(t)
        np.savez(t / "images.npz", **images())
        out = t / "out.npz"
        projs = {k: str(p) for k, p in files.items() if k != "text"}
        subprocess.run([a.oracle, "-c", _ORACLE, str(files["text"]), json.dumps(projs), str(t / "images.npz"), json.dumps(PROMPTS),
                        str(out), json.dumps(list(IMAGES)), json.dumps(PAIRS)], check=True)  # fmt: skip
        res = dict(np.load(out))
        digests = {f"sha256_{k}": hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}
        np.savez_compressed(FIX / "vision_qwen2vl.npz", **digests, **res)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("grid", "pids", "npast")) else "")


if __name__ == "__main__":
    main()
