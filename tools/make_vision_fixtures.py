"""Regenerate tests/fixtures/vision_gemma3.npz: llama.cpp's libmtmd on the tiny Gemma 3 vision pair of
``tests/tiny_vision.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_vision_fixtures.py --oracle /work/llvenv/bin/python

The fixture holds, for the projector stored F32 and F16:
``embd_<q>_square`` (mtmd_encode_chunk's rows for a picture already at the encoder's 224x224, so resizing is
the identity) and ``embd_<q>_wide`` (a 300x180 picture, which clip.cpp resizes and pads), ``embd_f32_nofa_*`` the
same with the encoder's flash attention off (libmtmd's default is on); and on the F32 pair
``ids_<k>``/``logits_<k>`` for each prompt of ``PROMPTS``: the chunks' token ids (text tokens, -1 for an image
row) as mtmd_tokenize lays them out, and the logits after them all (mtmd_helper_eval_chunks, then
llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests (the test writes the same bytes again).
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
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
#: prompts with mtmd's media marker: an image mid-text, two images, and one with a prefix past the window of 8
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two", "the the the in in a <__media__>the"]

_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
model_path, proj_paths, images, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
imgs = dict(np.load(images))
llama_cpp.llama_backend_init()
mp = llama_cpp.llama_model_default_params()
model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp)
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

def mctx(proj, fa=-1):
    p = m.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, fa
    return m.mtmd_init_from_file(proj.encode(), model, p)

for q, proj in [*proj_paths.items(), ("f32_nofa", proj_paths["f32"])]:
    ctx = mctx(proj, 0 if q.endswith("nofa") else -1)
    for name in ("square", "wide"):
        chunks = chunks_of(ctx, "<__media__>", [bitmap(imgs[name])])
        for i in range(m.mtmd_input_chunks_size(chunks)):
            c = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n = m.mtmd_input_chunk_get_n_tokens(c)
                assert m.mtmd_encode_chunk(ctx, c) == 0
                p = m.mtmd_get_output_embd(ctx)
                res[f"embd_{q}_{name}"] = np.ctypeslib.as_array(p, shape=(n * llama_cpp.llama_model_n_embd(model),)).reshape(n, -1).copy()
    if q != "f32":
        continue
    for k, prompt in enumerate(prompts):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 256, 64, 64, 1, 1
        lctx = llama_cpp.llama_init_from_model(model, cp)
        bms = [bitmap(imgs["square" if j % 2 == 0 else "wide"]) for j in range(prompt.count("<__media__>"))]
        chunks = chunks_of(ctx, prompt, bms)
        ids = []
        for i in range(m.mtmd_input_chunks_size(chunks)):
            c = m.mtmd_input_chunks_get(chunks, i)
            n = m.mtmd_input_chunk_get_n_tokens(c)
            if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                nt = ctypes.c_size_t()
                tp = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(nt))
                ids += [tp[j] for j in range(nt.value)]
            else:
                ids += [-1] * n
        new_past = llama_cpp.llama_pos(0)
        assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
        nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        lp = llama_cpp.llama_get_logits_ith(lctx, -1)
        res[f"ids_{k}"] = np.asarray(ids, np.int32)
        res[f"logits_{k}"] = np.ctypeslib.as_array(lp, shape=(nv,)).copy()
        llama_cpp.llama_free(lctx)
np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    from gguf import GGMLQuantizationType as Q

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = write_tiny_gemma3_vl(t / "text.gguf")
        projs = {"f32": write_tiny_mmproj(t / "mmproj-f32.gguf", Q.F32), "f16": write_tiny_mmproj(t / "mmproj-f16.gguf", Q.F16)}
        np.savez(t / "images.npz", square=sample_image(), wide=sample_image(300, 180, seed=1))
        out = t / "out.npz"
        subprocess.run([a.oracle, "-c", _ORACLE, str(model), json.dumps({q: str(p) for q, p in projs.items()}),
                        str(t / "images.npz"), json.dumps(PROMPTS), str(out)], check=True)  # fmt: skip
        res = dict(np.load(out))
        digests = {f"sha256_{k}": hashlib.sha256(p.read_bytes()).hexdigest() for k, p in [("text", model), *projs.items()]}
        np.savez_compressed(FIX / "vision_gemma3.npz", **digests, **res)
        for k in range(len(PROMPTS)):
            print(k, res[f"ids_{k}"].tolist())
        print({k: v.shape for k, v in res.items()})


if __name__ == "__main__":
    main()
