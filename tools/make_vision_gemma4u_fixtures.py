"""Regenerate tests/fixtures/vision_gemma4u.npz: llama.cpp's libmtmd on the tiny Gemma 4 12B "unified" pair of
``tests/tiny_vision_gemma4u.py`` (one mmproj, gemma4uv pictures and gemma4ua audio; developer tool: llama.cpp is the
oracle, never a kvrun dependency).

    python tools/make_vision_gemma4u_fixtures.py --oracle /work/llvenv/bin/python

For each medium of ``MEDIA`` (a picture, uint8 RGB, or a clip, 16 kHz float32 samples) and the projector stored F32
and F16, libmtmd lays it out (mtmd_tokenize on a lone marker): ``ids_<q>_<name>`` the chunks' token ids (-1 for a
row) and ``embd_<q>_<name>`` the media chunk's rows (mtmd_encode_chunk; one in ``STRIDE`` where it says so).  On the F32 pair, for each prompt of
``PROMPTS`` (its media named): ``pids_<k>`` its chunks' ids and ``logits_<k>`` the logits after them all
(mtmd_helper_eval_chunks with n_batch 64, then llama_get_logits_ith(-1)).  ``sha256_*``: the files' digests.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from gguf import GGMLQuantizationType as Q
from tiny_vision import sample_image
from tiny_vision_gemma4u import write_tiny_gemma4u_mmproj, write_tiny_gemma4u_text

#: pictures (width, height, seed): small (scaled up to 70 rows' worth: 9x9), wide (scaled up, 15x5), exact (whole
#: 12-pixel blocks: kept, 10x8) and big (its height rounded up a block: kept, padded, 25x22)
IMAGES = {"small": (64, 64, 0), "wide": (150, 50, 1), "exact": (120, 96, 2), "big": (300, 260, 3)}
#: the big picture's rows are kept one in STRIDE (550 rows x 64)
STRIDE = {"big": 5}
#: clips (samples, seed): short (3 rows, the last frame padded) and long (2.06 s: 52 rows)
CLIPS = {"short": (1500, 5), "long": (33000, 6)}
#: prompts with mtmd's media marker and the media they take, in order
PROMPTS = [("Look: <__media__> what?", ["wide"]), ("<__media__>a<__media__> two", ["exact", "short"]),
           ("hear <__media__> and <__media__>!", ["long", "small"])]  # fmt: skip


def media() -> dict[str, np.ndarray]:
    """The fixture's pictures and clips by name."""
    out = {k: sample_image(w, h, seed=s) for k, (w, h, s) in IMAGES.items()}
    for k, (n, s) in CLIPS.items():
        t = np.arange(n) / 16000.0
        out[k] = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.random.default_rng(s).standard_normal(n)).astype(np.float32)
    return out


_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
a = json.loads(sys.argv[1])
med = dict(np.load(a["media"]))
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(a["model"].encode(), llama_cpp.llama_model_default_params())
n_embd = llama_cpp.llama_model_n_embd(model)
res = {}

def bitmap(x):
    x = np.ascontiguousarray(x)
    if x.ndim == 1:
        return m.mtmd_bitmap_init_from_audio(x.size, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    return m.mtmd_bitmap_init(x.shape[1], x.shape[0], x.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))

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
            continue
        ids += [-1] * n
        if encode:
            assert m.mtmd_encode_chunk(ctx, c) == 0
            rows.append(np.ctypeslib.as_array(m.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows

for q, proj in a["projectors"].items():
    p = m.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup = False, 1, False, False
    ctx = m.mtmd_init_from_file(proj.encode(), model, p)
    for name in med:
        ids, rows = layout(ctx, chunks_of(ctx, "<__media__>", [bitmap(med[name])]), True)
        res[f"ids_{q}_{name}"], res[f"embd_{q}_{name}"] = ids, np.concatenate(rows)
    if q != "f32":
        continue
    for k, (prompt, names) in enumerate(a["prompts"]):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 512, 64, 64, 1, 1
        lctx = llama_cpp.llama_init_from_model(model, cp)
        chunks = chunks_of(ctx, prompt, [bitmap(med[n]) for n in names])
        res[f"pids_{k}"] = layout(ctx, chunks, False)[0]
        new_past = llama_cpp.llama_pos(0)
        assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
        nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        res[f"logits_{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
        llama_cpp.llama_free(lctx)
np.savez(a["out"], **res)
"""


def write_pair(d: Path) -> dict[str, Path]:
    """The tiny text model and the projector stored F32 and F16 in ``d``, as the test writes them."""
    return {"text": write_tiny_gemma4u_text(d / "text.gguf"), "f32": write_tiny_gemma4u_mmproj(d / "mmproj-f32.gguf", Q.F32),
            "f16": write_tiny_gemma4u_mmproj(d / "mmproj-f16.gguf", Q.F16)}  # fmt: skip


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = write_pair(t)
        np.savez(t / "media.npz", **media())
        arg = dict(model=str(files["text"]), projectors={q: str(files[q]) for q in ("f32", "f16")}, media=str(t / "media.npz"),
                   prompts=PROMPTS, out=str(t / "out.npz"))  # fmt: skip
        subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(arg)], check=True)
        res = {k: v[:: STRIDE.get(k.split("_")[-1], 1)] if k.startswith("embd") else v for k, v in np.load(t / "out.npz").items()}
        np.savez_compressed(a.out / "vision_gemma4u.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    for k, v in res.items():
        print(k, v.shape, v.tolist() if k.startswith("pids") else "")


if __name__ == "__main__":
    main()
