"""Regenerate tests/fixtures/vision_lfm2.npz: llama.cpp's libmtmd on the tiny LFM2-VL pair of
``tests/tiny_vision_lfm2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_lfm2_fixtures.py --oracle /work/llvenv/bin/python

For each picture of ``IMAGES`` (name: width x height) and the projector stored F32 and F16, libmtmd lays the
picture out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for an image row) and
``embd_<q>_<name>`` every image chunk's rows, concatenated in order, one in ``STRIDE`` where it says so
(mtmd_encode_chunk; the encoder's flash attention off, so attention is float32 softmax(QK^T)V as kvrun's).  On the F32 pair, for each prompt of
``PROMPTS``: ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all (mtmd_helper_eval_chunks,
then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
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
from tiny_vision_lfm2 import write_tiny_lfm2_mmproj, write_tiny_lfm2vl  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
#: pictures (width, height, seed): small (scaled up to libmtmd's 64 rows' worth at least), wide (kept, its sides
#: rounded to 16-pixel blocks), big (scaled down to 256 rows' worth), and one past twice that (cut into 512-pixel
#: tiles, a 2x1 grid, and a thumbnail)
IMAGES = {"small": (40, 30, 0), "wide": (300, 100, 1), "big": (300, 260, 2), "tiled": (600, 300, 3)}
#: the tiled picture's rows are kept one in STRIDE (its 2 tiles are 1024 rows each: the whole would be 1.2 MB)
STRIDE = {"tiled": 16}
#: prompts with mtmd's media marker, the pictures taken in IMAGES' order
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two"]

_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
model_path, proj_paths, images, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
imgs = dict(np.load(images))
names = list(json.loads(sys.argv[6]))
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
    ids, rows = [], []
    for i in range(m.mtmd_input_chunks_size(chunks)):
        c = m.mtmd_input_chunks_get(chunks, i)
        n = m.mtmd_input_chunk_get_n_tokens(c)
        if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            nt = ctypes.c_size_t()
            tp = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(nt))
            ids += [tp[j] for j in range(nt.value)]
        else:
            ids += [-1] * n
            if encode:
                assert m.mtmd_encode_chunk(ctx, c) == 0
                p = m.mtmd_get_output_embd(ctx)
                rows.append(np.ctypeslib.as_array(p, shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows

for q, proj in proj_paths.items():
    p = m.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, 0
    ctx = m.mtmd_init_from_file(proj.encode(), model, p)
    for name in names:
        ids, rows = layout(ctx, chunks_of(ctx, "<__media__>", [bitmap(imgs[name])]), True)
        res[f"ids_{q}_{name}"], res[f"embd_{q}_{name}"] = ids, np.concatenate(rows)
    if q != "f32":
        continue
    for k, prompt in enumerate(prompts):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 1024, 64, 64, 1, 1
        lctx = llama_cpp.llama_init_from_model(model, cp)
        bms = [bitmap(imgs[names[j]]) for j in range(prompt.count("<__media__>"))]
        chunks = chunks_of(ctx, prompt, bms)
        res[f"pids_{k}"] = layout(ctx, chunks, False)[0]
        new_past = llama_cpp.llama_pos(0)
        assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
        nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        res[f"logits_{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
        llama_cpp.llama_free(lctx)
np.savez(out, **res)
"""


def images() -> dict[str, np.ndarray]:
    """The fixture's pictures, uint8 RGB [height, width, 3]."""
    return {k: sample_image(w, h, seed=s) for k, (w, h, s) in IMAGES.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    from gguf import GGMLQuantizationType as Q

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = write_tiny_lfm2vl(t / "text.gguf")
        projs = {"f32": write_tiny_lfm2_mmproj(t / "mmproj-f32.gguf", Q.F32),
                 "f16": write_tiny_lfm2_mmproj(t / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
        np.savez(t / "images.npz", **images())
        out = t / "out.npz"
        subprocess.run([a.oracle, "-c", _ORACLE, str(model), json.dumps({q: str(p) for q, p in projs.items()}),
                        str(t / "images.npz"), json.dumps(PROMPTS), str(out), json.dumps(list(IMAGES))], check=True)  # fmt: skip
        res = dict(np.load(out))
        for name, k in STRIDE.items():
            for q in projs:
                res[f"embd_{q}_{name}"] = res[f"embd_{q}_{name}"][::k]
        digests = {f"sha256_{k}": hashlib.sha256(p.read_bytes()).hexdigest() for k, p in [("text", model), *projs.items()]}
        np.savez_compressed(FIX / "vision_lfm2.npz", **digests, **res)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(("ids_f32", "pids")) else "")


if __name__ == "__main__":
    main()
