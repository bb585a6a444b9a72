"""Regenerate tests/fixtures/omni_qwen25o.npz: llama.cpp's libmtmd on the tiny Qwen2.5-Omni pair of
``tests/tiny_omni.py`` (one mmproj with both encoders), a picture and a clip in one prompt (developer tool; llama.cpp
is the oracle, never a kvrun dependency).

    python tools/make_omni_fixtures.py --oracle /work/llvenv/bin/python

The picture goes in as decoded RGB (``mtmd_bitmap_init``), the clip as its WAV file's bytes
(``mtmd_helper_bitmap_init_from_buf``, which tells audio by its header), so libmtmd routes each to its encoder.
Keys: ``embd_picture`` / ``embd_clip`` each medium's rows alone (a lone marker, mtmd_encode_chunk; of the clip's,
one in ``CLIP_STRIDE``); for each prompt ``k`` of ``PROMPTS`` (its media in ``MEDIA[k]``'s order) ``pids_<k>`` its
chunks' ids (-1 for a row), ``dpos_<k>`` the picture chunk's rows' decoder positions (t, x, y, z) for a picture at
position 0, ``logits_<k>`` the logits after mtmd_helper_eval_chunks and ``npast_<k>`` the position after it;
``sha256_*`` the files' digests.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from make_audio_fixtures import clips
from tiny_omni import write_tiny_omni_mmproj, write_tiny_omni_text
from tiny_vision import sample_image

#: the picture: 84 x 56 pixels, 3 x 2 merged rows (nx != ny, so a swapped M-RoPE row shows)
PICTURE = (84, 56, 3)
#: prompts with mtmd's media marker, and which medium each marker takes, in order
PROMPTS = ["Look: <__media__> and hear: <__media__> what?", "<__media__>then<__media__> which?"]
MEDIA = [("picture", "clip"), ("clip", "picture")]
N_CTX = 2048  # (the clip: one 30 s chunk, 750 rows)
CLIP_STRIDE = 10  # (embd_clip keeps one in this many of the clip's rows: the fixture stays small)

_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
a = json.loads(sys.argv[1])
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(a["model"].encode(), llama_cpp.llama_model_default_params())
n_embd = llama_cpp.llama_model_n_embd(model)
p = m.mtmd_context_params_default()
p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, 0
ctx = m.mtmd_init_from_file(a["mmproj"].encode(), model, p)
assert ctx and m.mtmd_support_audio(ctx) and m.mtmd_support_vision(ctx)
pic = np.ascontiguousarray(np.load(a["picture"]))
wav = open(a["wav"], "rb").read()
res = {}

def bitmap(kind):
    if kind == "picture":
        return m.mtmd_bitmap_init(pic.shape[1], pic.shape[0], pic.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
    buf = (ctypes.c_uint8 * len(wav)).from_buffer_copy(wav)
    bm = m.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(wav), False)
    assert bm and m.mtmd_bitmap_is_audio(bm)
    return bm

def chunks_of(text, kinds):
    t = m.mtmd_input_text(text.encode(), len(text.encode()), True, True)
    chunks = m.mtmd_input_chunks_init()
    bms = [bitmap(k) for k in kinds]
    arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bms)))(*bms)
    assert m.mtmd_tokenize(ctx, chunks, ctypes.byref(t), arr, len(bms)) == 0
    return chunks

def layout(chunks, encode):
    ids, rows, dpos = [], [], None
    for i in range(m.mtmd_input_chunks_size(chunks)):
        c = m.mtmd_input_chunks_get(chunks, i)
        n = m.mtmd_input_chunk_get_n_tokens(c)
        kind = m.mtmd_input_chunk_get_type(c)
        if kind == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            nt = ctypes.c_size_t()
            tp = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(nt))
            ids += [tp[j] for j in range(nt.value)]
            continue
        ids += [-1] * n
        if kind == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            it = m.mtmd_input_chunk_get_tokens_image(c)
            dpos = np.asarray([[q.t, q.x, q.y, q.z] for q in (m.mtmd_image_tokens_get_decoder_pos(it, 0, j) for j in range(n))], np.int64)
        if encode:
            assert m.mtmd_encode_chunk(ctx, c) == 0
            rows.append(np.ctypeslib.as_array(m.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows, dpos

for kind in ("picture", "clip"):
    res[f"embd_{kind}"] = np.concatenate(layout(chunks_of("<__media__>", [kind]), True)[1])
for k, (prompt, kinds) in enumerate(zip(a["prompts"], a["media"])):
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch, cp.flash_attn_type = a["n_ctx"], 64, 64, 1, 1, 0
    lctx = llama_cpp.llama_init_from_model(model, cp)
    chunks = chunks_of(prompt, kinds)
    res[f"pids_{k}"], _, res[f"dpos_{k}"] = layout(chunks, False)
    new_past = llama_cpp.llama_pos(0)
    assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
    nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    res[f"logits_{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
    res[f"npast_{k}"] = np.asarray(new_past.value, np.int64)
    llama_cpp.llama_free(lctx)
np.savez(a["out"], **res)
"""


def picture() -> np.ndarray:
    """The fixture's picture, uint8 RGB [height, width, 3]."""
    w, h, seed = PICTURE
    return sample_image(w, h, seed=seed)


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_omni_text(t / "text.gguf"), "mmproj": write_tiny_omni_mmproj(t / "mmproj.gguf")}
        np.save(t / "picture.npy", picture())
        (t / "clip.wav").write_bytes(clips(("short",))["short"])
        args = dict(model=str(files["text"]), mmproj=str(files["mmproj"]), picture=str(t / "picture.npy"), wav=str(t / "clip.wav"),
                    prompts=PROMPTS, media=MEDIA, n_ctx=N_CTX, out=str(t / "out.npz"))  # fmt: skip
        subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(args)], check=True)
        res = dict(np.load(t / "out.npz"))
        res["embd_clip"] = res["embd_clip"][::CLIP_STRIDE]
        np.savez_compressed(a.out / "omni_qwen25o.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    for k, v in res.items():
        print(k, v.shape, v.tolist() if k.startswith(("pids", "npast")) and v.size < 60 else "")


if __name__ == "__main__":
    main()
