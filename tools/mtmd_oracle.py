"""llama.cpp's libmtmd as the oracle of the vision fixture tools (make_vision*_fixtures.py; developer tooling, never a
kvrun dependency), run in a subprocess of the Python ``--oracle`` names, on a text model and its projector files.

``run`` returns, under these generic keys (``write_fixture`` renames them to a fixture's):

* for each projector ``q`` and each picture ``name`` (mtmd_tokenize on a lone media marker):
  ``ids/<q>/<name>`` the chunks' token ids (-1 for an image row), ``embd/<q>/<name>`` every image chunk's rows,
  concatenated in order (mtmd_encode_chunk) and, with ``mrope``, ``grid/<q>/<name>`` the first image chunk's grid
  and positions taken (nx, ny, n_pos) and ``dpos/<q>/<name>`` each of its rows' decoder position (t, x, y, z) for
  an image at position 0 (mtmd_image_tokens_get_decoder_pos);
* for each text pair ``t`` (its projector ``q``) and each prompt ``k`` (its media markers take the pictures in
  turn): ``pids/<t>/<k>`` its chunks' ids, ``logits/<t>/<k>`` the logits after them all (mtmd_helper_eval_chunks,
  then llama_get_logits_ith(-1)) and ``npast/<t>/<k>`` the position after them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256

_ORACLE = r"""
import ctypes, json, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
a = json.loads(sys.argv[1])
imgs = dict(np.load(a["images"]))
names = list(imgs)
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(a["model"].encode(), llama_cpp.llama_model_default_params())
n_embd = llama_cpp.llama_model_n_embd(model)
try:  # (an image row's width: Qwen3-VL's carry its DeepStack levels, n_embd * (1 + n_deepstack); else n_embd)
    f = llama_cpp.llama_cpp._lib.llama_model_n_embd_inp
    f.argtypes, f.restype = [ctypes.c_void_p], ctypes.c_int32
    n_embd = f(model)
except AttributeError:
    pass
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
            continue
        ids += [-1] * n
        if a["mrope"]:
            it = m.mtmd_input_chunk_get_tokens_image(c)
            grids.append([m.mtmd_image_tokens_get_nx(it), m.mtmd_image_tokens_get_ny(it), m.mtmd_input_chunk_get_n_pos(c)])
            ps = [m.mtmd_image_tokens_get_decoder_pos(it, 0, j) for j in range(n)]
            dpos.append(np.asarray([[p.t, p.x, p.y, p.z] for p in ps], np.int64))
        if encode:
            assert m.mtmd_encode_chunk(ctx, c) == 0
            p = m.mtmd_get_output_embd(ctx)
            rows.append(np.ctypeslib.as_array(p, shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows, grids, dpos

for q, (proj, fa) in a["projectors"].items():
    p = m.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, fa
    ctx = m.mtmd_init_from_file(proj.encode(), model, p)
    for name in names:
        ids, rows, grids, dpos = layout(ctx, chunks_of(ctx, "<__media__>", [bitmap(imgs[name])]), True)
        res[f"ids/{q}/{name}"], res[f"embd/{q}/{name}"] = ids, np.concatenate(rows)
        if a["mrope"]:
            res[f"grid/{q}/{name}"], res[f"dpos/{q}/{name}"] = np.asarray(grids[0], np.int64), dpos[0]
    for t in [t for t, pq in a["pairs"].items() if pq == q]:
        for k, prompt in enumerate(a["prompts"]):
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = a["n_ctx"], 64, 64, 1, 1
            lctx = llama_cpp.llama_init_from_model(model, cp)
            bms = [bitmap(imgs[names[j % len(names)]]) for j in range(prompt.count("<__media__>"))]
            chunks = chunks_of(ctx, prompt, bms)
            res[f"pids/{t}/{k}"] = layout(ctx, chunks, False)[0]
            new_past = llama_cpp.llama_pos(0)
            assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
            nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
            res[f"logits/{t}/{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
            res[f"npast/{t}/{k}"] = np.asarray(new_past.value, np.int64)
            llama_cpp.llama_free(lctx)
np.savez(a["out"], **res)
"""


def run(python: str, model: Path, projectors: dict[str, tuple[Path, int]], images: dict[str, np.ndarray], prompts: list[str],
        pairs: dict[str, str], n_ctx: int = 512, mrope: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """libmtmd on the text model ``model`` with each projector of ``projectors`` (name: its file and the encoder's
    flash_attn_type, 0 off, -1 libmtmd's default), for the pictures ``images`` (name: uint8 RGB [height, width, 3])
    and, for each text pair of ``pairs`` (name: its projector's), the ``prompts`` in a context of ``n_ctx``; what it
    gives is as the module says, in the order made (projectors, then their pictures, then their pairs' prompts)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "images.npz", **images)
        a = dict(model=str(model), projectors={q: [str(p), fa] for q, (p, fa) in projectors.items()}, images=str(Path(tmp) / "images.npz"),
                 prompts=prompts, pairs=pairs, n_ctx=n_ctx, mrope=mrope, out=str(Path(tmp) / "out.npz"))  # fmt: skip
        subprocess.run([python, "-c", _ORACLE, json.dumps(a)], check=True)
        return dict(np.load(a["out"]))


def pictures(spec: dict[str, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """A fixture's pictures, uint8 RGB [height, width, 3], from ``spec`` (name: width, height, seed)."""
    from tiny_vision import sample_image

    return {k: sample_image(w, h, seed=s) for k, (w, h, s) in spec.items()}


def write_fixture(a: argparse.Namespace, fixture: str, files: dict[str, Path], projectors: dict[str, tuple[Path, int]],
                  images: dict[str, np.ndarray], prompts: list[str], pairs: dict[str, str], keys: dict[str, str],
                  n_ctx: int = 512, mrope: bool = False, stride: dict[str, int] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """``<a.out>/vision_<fixture>.npz``: ``run``'s arrays renamed by ``keys`` (a kind, "embd": the format of its
    name, given its two parts, "embd_{}_{}"; kinds not named left out) and ``sha256_<k>``, each of ``files``' digest;
    a picture named in ``stride`` keeps one in that many of its ``embd`` rows."""
    res = {}
    for key, v in run(a.oracle, files["text"], projectors, images, prompts, pairs, n_ctx, mrope).items():
        kind, x, y = key.split("/")
        if kind in keys:
            res[keys[kind].format(x, y)] = v[:: (stride or {}).get(y, 1)] if kind == "embd" else v
    np.savez_compressed(a.out / f"vision_{fixture}.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    return res


#: ``write_fixture``'s keys of a fixture that keeps every kind, each under "<kind>_<projector or pair>_<picture or
#: prompt>" (``grid`` and ``dpos`` made only with ``mrope``)
KEYS = {k: k + "_{}_{}" for k in ("ids", "embd", "grid", "dpos", "pids", "logits", "npast")}
#: the keys of a fixture of one text pair: the pictures' layouts and rows, and "pids_<k>" / "logits_<k>" per prompt
PAIR_KEYS = {"ids": "ids_{}_{}", "embd": "embd_{}_{}", "pids": "pids_{1}", "logits": "logits_{1}"}


def write_files(d: Path, write_text: Callable[[Path], Path], write_mmproj: Callable[..., Path],
                projectors: dict[str, str | tuple], option: str | None = None) -> dict[str, Path]:  # fmt: skip
    """The tiny text model (``text``: ``write_text``'s ``d/text.gguf``) and each projector of ``projectors`` (name:
    its qtype's name, or that and the value of ``write_mmproj``'s keyword ``option``), ``d/mmproj-<name>.gguf``."""
    from gguf import GGMLQuantizationType as Q

    files = {"text": write_text(d / "text.gguf")}
    for name, spec in projectors.items():
        q, *v = (spec,) if isinstance(spec, str) else spec
        files[name] = write_mmproj(d / f"mmproj-{name}.gguf", Q[q], **({option: v[0]} if v else {}))
    return files


def main(doc: str, fixture: str, write_pair: Callable[[Path], dict[str, Path]], projectors: Iterable[str], images: dict[str, tuple[int, int, int]],
         prompts: list[str], pairs: dict[str, str], keys: dict[str, str] = KEYS, shown: tuple[str, ...] = ("grid", "pids", "npast"),
         n_ctx: int = 512, mrope: bool = False) -> None:  # fmt: skip
    """A fixture tool's command line (``doc`` its help): ``write_fixture`` on ``write_pair``'s files (the encoders'
    flash attention off) and the pictures of ``images`` (``pictures``' spec); prints each array's shape, and the
    values of those whose names start with one of ``shown``."""
    a = parse_args(doc)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pair(Path(tmp))
        projs = {q: (files[q], 0) for q in projectors}
        res = write_fixture(a, fixture, files, projs, pictures(images), prompts, pairs, keys, n_ctx, mrope)
        for k, v in res.items():
            print(k, v.shape, v.tolist() if k.startswith(shown) else "")
