"""Regenerate tests/fixtures/imatrix_quants.json: what ggml's own quantizers (``ggml_quantize_chunk`` in
llama.cpp's libggml-base, called through ctypes) make of seeded random rows, with and without an importance
matrix, for every type ``kvrun quantize --imatrix`` writes (developer tool; llama.cpp is the oracle, never a kvrun
dependency).

    python tools/make_imatrix_fixture.py --oracle /work/llvenv/bin/python

The rows and importance weights come from :func:`cases` (numpy's seeded PCG64), so the test makes the same floats
again; the fixture keeps their sha256 (to tell a changed generator from a changed quantizer) and, per case, the
sha256 of the bytes ggml wrote and the first block's bytes in hex (to show where a mismatch starts).

It also holds whole models: ``llama_model_quantize`` (llama-quantize's library) with an importance matrix
(:func:`model_imatrix`, handed over as ``llama_model_quantize_params.imatrix``) on tests/tiny_quantize.py's models,
for :data:`MODEL_CASES`: every tensor's type and bytes, so the recipe's imatrix rules and the IQ4 mixes are held too.

And the collection: llama-imatrix's sums of squared activations and counts (tools/imatrix/imatrix.cpp's
``collect_imatrix``: every MUL_MAT whose weight is ``blk.*``, over products of 16 tokens or more), gathered by a
``cb_eval`` callback on llama.cpp's own forward pass of tests/tinymodel.py's Llama over :data:`COLLECT_TEXT` in
chunks of :data:`COLLECT_CTX` tokens (BOS first), for ``kvrun imatrix`` to be held to within float rounding.
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
FIX = ROOT / "tests" / "fixtures" / "imatrix_quants.json"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT.parent))

#: (model of tiny_quantize, TYPE, with an importance matrix)
MODEL_CASES = [("untied", t, True) for t in ("Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M", "Q6_K", "Q4_0", "Q5_1", "IQ4_NL",
                                             "IQ4_XS")]  # fmt: skip
MODEL_CASES += [("untied", "IQ4_XS", False), ("tied", "IQ4_XS", False), ("tied", "IQ4_NL", True), ("tied", "Q4_K_M", True),
                ("tied", "Q5_0", True)]  # fmt: skip


#: the calibration text and chunking of the collection fixture
COLLECT_TEXT = (
    "The quick brown fox jumps over the lazy dog. " * 8 + "Pack my box with five dozen liquor jugs! 0123456789 " * 6)
COLLECT_CTX = 64
COLLECT_CHUNKS = 3

_COLLECT = r"""
import ctypes, json, sys
import numpy as np
import llama_cpp as L
path, text, n_ctx, n_chunks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
GGML_OP_MUL_MAT = None
class T(ctypes.Structure):
    pass
T._fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
              ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
              ("src", ctypes.POINTER(T) * 10), ("view_src", ctypes.POINTER(T)), ("view_offs", ctypes.c_size_t),
              ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p)]
import glob, os
base = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(L.__file__), "lib", "libggml-base.so"))[0])
base.ggml_op_name.restype = ctypes.c_char_p
MUL_MAT = next(i for i in range(200) if base.ggml_op_name(i) == b"MUL_MAT")
sums, counts = {}, {}
def cb(tp, ask, ud):
    t = ctypes.cast(tp, ctypes.POINTER(T)).contents
    if t.op != MUL_MAT:
        return not ask
    if ask:
        return True
    w, x = t.src[0].contents, t.src[1].contents
    name = w.name.decode()
    if not name.startswith("blk.") or x.type != 0 or x.ne[1] < 16:
        return True
    n0, n1 = x.ne[0], x.ne[1] * x.ne[2] * x.ne[3]
    assert x.nb[1] == 4 * n0 and w.ne[2] * w.ne[3] == 1
    a = np.ctypeslib.as_array(ctypes.cast(x.data, ctypes.POINTER(ctypes.c_float)), (n1, n0)).astype(np.float64)
    sums[name] = sums.get(name, 0) + (a * a).sum(0)
    counts[name] = counts.get(name, 0) + n1
    return True
L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(path.encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
cb_c = L.ggml_backend_sched_eval_callback(cb)
cp.cb_eval = cb_c
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model)
buf = (L.llama_token * 4096)()
raw = text.encode()
n = L.llama_tokenize(vocab, raw, len(raw), buf, 4096, True, False)
toks = list(buf[:n])
bos = L.llama_vocab_bos(vocab)
add_bos = L.llama_vocab_get_add_bos(vocab)
n_chunks = min(n_chunks, n // n_ctx)
for c in range(n_chunks):
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    batch = L.llama_batch_init(n_ctx, 0, 1)
    for j in range(n_ctx):
        tok = toks[c * n_ctx + j]
        if j == 0 and add_bos:
            tok = bos
        batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tok, j, 1, True
        batch.seq_id[j][0] = 0
    batch.n_tokens = n_ctx
    assert L.llama_decode(ctx, batch) == 0
    L.llama_batch_free(batch)
print(json.dumps({"n_tokens": n, "chunks": n_chunks, "counts": counts, "sums": {k: v.tolist() for k, v in sums.items()}}))
"""


def model_case_key(model: str, type_name: str, with_imatrix: bool) -> str:
    return f"{model} {type_name}{' --imatrix' if with_imatrix else ''}"


def model_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Importance weights for every ``blk.*`` matrix of the model at ``path`` (one per column, seeded by the
    name): what llama-quantize reads from an imatrix file, as means."""
    from kvrun.loaders.gguf_file import GGUFFile

    g = GGUFFile(path)
    try:
        out = {}
        for name, t in g.tensors.items():
            if name.startswith("blk.") and len(t.shape) >= 2:
                seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
                out[name] = (np.random.default_rng(seed).chisquare(3, t.shape[-1]) * 0.05).astype(np.float32)
        return out
    finally:
        g.close()

#: ggml type name -> (type id, weights per block)
TYPES = {"Q4_0": (2, 32), "Q4_1": (3, 32), "Q5_0": (6, 32), "Q5_1": (7, 32), "Q8_0": (8, 32), "Q2_K": (10, 256),
         "Q3_K": (11, 256), "Q4_K": (12, 256), "Q5_K": (13, 256), "Q6_K": (14, 256), "IQ4_NL": (20, 32),
         "IQ4_XS": (23, 256)}  # fmt: skip


def cases() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """name -> (rows float32 [n, 512], importance float32 [512] or None): Gaussian rows, heavy-tailed rows with
    outliers, a row of zeros and a row of one sign; importance from a chi-square, and one with zeros in it."""
    rng = np.random.default_rng(20241206)
    n_per_row = 512
    gauss = rng.standard_normal((4, n_per_row)).astype(np.float32) * np.float32(0.02)
    heavy = (rng.standard_t(3, (4, n_per_row)) * 0.05).astype(np.float32)
    heavy[1, 7] = 3.0
    heavy[2, 300] = -2.5
    mixed = rng.standard_normal((4, n_per_row)).astype(np.float32)
    mixed[0] = 0.0
    mixed[1] = np.abs(mixed[1])
    mixed[2, :256] = 0.0
    qw = (rng.chisquare(2, n_per_row) * 0.1).astype(np.float32)
    qw_zeros = qw.copy()
    qw_zeros[::7] = 0.0
    out = {}
    for rname, rows in (("gauss", gauss), ("heavy", heavy), ("mixed", mixed)):
        out[f"{rname}/none"] = (rows, None)
        out[f"{rname}/imatrix"] = (rows, qw)
        out[f"{rname}/imatrix_zeros"] = (rows, qw_zeros)
    return out


_ORACLE = r"""
import ctypes, glob, json, os, sys
import numpy as np
import llama_cpp
lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))[0])
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_void_p]
lib.ggml_row_size.restype = ctypes.c_size_t
lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
jobs = json.loads(sys.argv[1])
res = {}
for key, tid, src, qw, n, npr in jobs:
    x = np.fromfile(src, np.float32)
    w = np.fromfile(qw, np.float32) if qw else None
    dst = np.zeros(n * lib.ggml_row_size(tid, npr), np.uint8)
    lib.ggml_quantize_chunk(tid, x.ctypes.data, dst.ctypes.data, 0, n, npr, w.ctypes.data if w is not None else None)
    res[key] = dst.tobytes().hex()
llama_cpp.llama_backend_init()
for inp, out, ftype, imat in json.loads(sys.argv[2]):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    keep = []
    if imat:
        d = np.load(imat)
        arr = (llama_cpp.llama_model_imatrix_data * (len(d.files) + 1))()
        for i, name in enumerate(d.files):
            v = np.ascontiguousarray(d[name], np.float32)
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(d.files)].name = None
        p.imatrix = arr
        keep.append(arr)
    if llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p)):
        sys.exit(f"llama_model_quantize failed on {out}")
print(json.dumps({"version": llama_cpp.__version__, "out": res}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        jobs, inputs = [], {}
        for cname, (rows, qw) in cases().items():
            src = Path(d) / f"{cname.replace('/', '_')}.x"
            rows.tofile(src)
            wpath = ""
            if qw is not None:
                wpath = str(src.with_suffix(".w"))
                qw.tofile(wpath)
            inputs[cname] = hashlib.sha256(rows.tobytes() + (qw.tobytes() if qw is not None else b"")).hexdigest()[:16]
            for tname, (tid, _) in TYPES.items():
                jobs.append([f"{tname}:{cname}", tid, str(src), wpath, rows.shape[0], rows.shape[1]])
        from tiny_quantize import write_quantize_model

        from kvrun.loaders.gguf_file import GGUFFile
        from kvrun.runtime.quantize import FILE_TYPES

        mjobs, models = [], {}
        for model, tname, with_im in MODEL_CASES:
            inp = Path(d) / f"{model}.gguf"
            if model not in models:
                write_quantize_model(inp, model)
                models[model] = hashlib.sha256(inp.read_bytes()).hexdigest()
                np.savez(Path(d) / f"{model}.npz", **model_imatrix(inp))
            out = Path(d) / (model_case_key(model, tname, with_im).replace(" ", "_") + ".gguf")
            mjobs.append([str(inp), str(out), int(FILE_TYPES[tname].ftype), str(Path(d) / f"{model}.npz") if with_im else ""])
        r = subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(jobs), json.dumps(mjobs)], check=True, capture_output=True,
                           text=True)  # fmt: skip
        got = json.loads(r.stdout.strip().splitlines()[-1])
        mres = {}
        for (model, tname, with_im), (_, out, _, _) in zip(MODEL_CASES, mjobs):
            g = GGUFFile(out)
            mres[model_case_key(model, tname, with_im)] = {
                "file_type": g.get("general.file_type"),
                "tensors": {n: f"{t.type_name}:{hashlib.sha256(t.data.tobytes()).hexdigest()[:16]}" for n, t in g.tensors.items()},
            }
            g.close()
    out = {}
    for key, hexs in got["out"].items():
        raw = bytes.fromhex(hexs)
        out[key] = {"sha256": hashlib.sha256(raw).hexdigest(), "head": hexs[:160]}
    from tinymodel import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        tiny = write_tiny_model(Path(d) / "tiny.gguf", "llama")
        r = subprocess.run([a.oracle, "-c", _COLLECT, str(tiny), COLLECT_TEXT, str(COLLECT_CTX), str(COLLECT_CHUNKS)],
                           check=True, capture_output=True, text=True)  # fmt: skip
        collect = json.loads(r.stdout.strip().splitlines()[-1])
        collect["sums"] = {k: [float(np.float32(v)) for v in vals] for k, vals in sorted(collect["sums"].items())}
        collect["model"] = hashlib.sha256(tiny.read_bytes()).hexdigest()
    FIX.write_text(json.dumps({"llama_cpp": got["version"], "inputs": inputs, "cases": out, "models": models,
                               "model_cases": mres, "collect": collect}, indent=1) + "\n")  # fmt: skip
    print(f"{FIX}: {len(out)} cases, llama.cpp {got['version']}")


if __name__ == "__main__":
    main()
