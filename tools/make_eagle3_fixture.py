"""Make tests/fixtures/eagle3*.npz: llama.cpp's EAGLE-3 draft (``eagle3``) beside a tiny Llama.

llama-cpp-python runs the tiny target (tests/tiny_eagle3.py) over a prompt with the inputs of the draft's
``extract_layers`` turned on (``llama_set_embeddings_layer_inp``), then the tiny draft in a context whose
``ctx_other`` is the target's (the ``shared`` variant reads the target's token embedding and output head there),
as common/speculative.cpp's ``draft-eagle3`` does: the fused features through the draft's encoder
(``llama_process`` ENCODE: ``fc``, read back as ``llama_get_embeddings_nextn``), then its decoder over the prompt with
the pairs (token at P + 1, g at P) at each position P, the last pair's token the target's greedy one, and three
autoregressive steps, each fed the token the step before chose and that step's pre-norm state (``h_nextn``) as g.
Saved: the prompt, the target's greedy token, the features [n, 3 * target width] (layer order as the file states),
g [n, n_embd], the decoder's logits (every target token: -inf where the draft vocabulary has none) and pre-norm
states over the prompt, each step's token, logits and pre-norm state, and both files' digests.

    python tools/make_eagle3_fixture.py --oracle /work/llvenv/bin/python
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fixture_oracle import parse_args, sha256

PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 32, 84, 104, 101]  # "Hello world! The" (bytes)

ORACLE = r'''
import ctypes, json, sys
import numpy as np
import llama_cpp as L
tgt_path, dft_path, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lib = L.llama_cpp._lib
P = ctypes.POINTER
def fn(name, args, res=None):  # (src/llama-ext.h's staging API: exported with C++ names)
    f = getattr(lib, name); f.argtypes = args; f.restype = res; return f
set_nextn = fn("_Z26llama_set_embeddings_nextnP13llama_contextbb", [ctypes.c_void_p, ctypes.c_bool, ctypes.c_bool])
get_nextn = fn("_Z26llama_get_embeddings_nextnP13llama_context", [ctypes.c_void_p], P(ctypes.c_float))
get_nextn_ith = fn("_Z30llama_get_embeddings_nextn_ithP13llama_contexti", [ctypes.c_void_p, ctypes.c_int32], P(ctypes.c_float))
set_inp = fn("_Z30llama_set_embeddings_layer_inpP13llama_contextjb", [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_bool])
get_inp = fn("_Z30llama_get_embeddings_layer_inpP13llama_contextj", [ctypes.c_void_p, ctypes.c_uint32], P(ctypes.c_float))
ids_fn = fn("_Z28llama_model_target_layer_idsPK11llama_model", [ctypes.c_void_p], P(ctypes.c_int32))
ids_n = fn("_Z30llama_model_target_layer_ids_nPK11llama_model", [ctypes.c_void_p], ctypes.c_uint32)
L.llama_backend_init()
mp = L.llama_model_default_params()
mt = L.llama_model_load_from_file(tgt_path.encode(), mp)
md = L.llama_model_load_from_file(dft_path.encode(), mp)
assert mt and md, "a model did not load"
layers = [ids_fn(md)[k] for k in range(ids_n(md))]
n_tgt, n_dec = L.llama_model_n_embd(mt), L.llama_model_n_embd(md)
nv = L.llama_vocab_n_tokens(L.llama_model_get_vocab(mt))
def ctx_params(other=None):
    cp = L.llama_context_default_params(); cp.n_ctx = 64; cp.n_batch = 64; cp.n_ubatch = 64; cp.n_threads = 1
    cp.n_threads_batch = 1; cp.flash_attn_type = 0
    if other is not None:
        cp.ctx_other = other
    return cp
ct = L.llama_init_from_model(mt, ctx_params())
for lid in layers:
    set_inp(ct, lid, True)
n = len(prompt)
b = L.llama_batch_init(n, 0, 1)
for i, t in enumerate(prompt):
    b.token[i] = t; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = int(i == n - 1)
b.n_tokens = n
assert L.llama_decode(ct, b) == 0
first = int(np.ctypeslib.as_array(L.llama_get_logits_ith(ct, -1), (nv,)).argmax())
feats = np.concatenate([np.ctypeslib.as_array(get_inp(ct, lid), (n, n_tgt)).copy() for lid in layers], axis=1)
cd = L.llama_init_from_model(md, ctx_params(ct))
assert cd, "no draft context"
set_nextn(cd, True, True)
keep = []  # (the batch's rows point into these: alive until llama_process returns)
def embd(rows):
    rows = np.ascontiguousarray(rows, np.float32); keep.append(rows)
    e = L.llama_embd(); e.data = rows.ctypes.data_as(P(ctypes.c_float)); e.n_rows = rows.shape[0]; e.n_embd = rows.shape[1]
    return e
# the encoder: one features row per entry, placeholder positions (as common/speculative.cpp)
be = L.llama_batch_ext_init(cd)
for i in range(n):
    idx = L.llama_batch_ext_add_embd(be, 0, embd(feats[i : i + 1]))
    L.llama_batch_ext_set_pos(be, idx, (L.llama_pos * 1)(i))
    L.llama_batch_ext_set_output_logits(be, idx, True)
assert L.llama_process(cd, L.LLAMA_PROCESS_TYPE_ENCODE, be) == 0
g = np.ctypeslib.as_array(get_nextn(cd), (n, n_dec)).copy()
def decode(pairs):  # [(token, g row, pos)] -> logits, pre-norm states of every entry
    L.llama_batch_ext_clear(be)
    for t, row, p in pairs:
        idx = L.llama_batch_ext_add_token(be, 0, t)
        L.llama_batch_ext_set_pos(be, idx, (L.llama_pos * 1)(p))
        assert L.llama_batch_ext_set_embd_token(be, idx, embd(row.reshape(1, -1)))
        L.llama_batch_ext_set_output_logits(be, idx, True)
    assert L.llama_process(cd, L.LLAMA_PROCESS_TYPE_DECODE, be) == 0
    lg = np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(cd, i), (nv,)).copy() for i in range(len(pairs))])
    h = np.stack([np.ctypeslib.as_array(get_nextn_ith(cd, i), (n_dec,)).copy() for i in range(len(pairs))])
    return lg, h
nxt = prompt[1:] + [first]
lg, h = decode([(nxt[p], g[p], p) for p in range(n)])
out = {"prompt": prompt, "first": first, "layers": layers, "features": feats.tolist(), "g": g.tolist(),
       "logits": lg.tolist(), "prenorm": h.tolist(), "tokens": [], "step_logits": [], "step_prenorm": []}
t, row = int(lg[-1].argmax()), h[-1]
for s in range(3):
    slg, sh = decode([(t, row, n + s)])
    out["tokens"].append(t); out["step_logits"].append(slg[0].tolist()); out["step_prenorm"].append(sh[0].tolist())
    t, row = int(slg[0].argmax()), sh[0]
print(json.dumps(out))
'''


def main() -> None:
    a = parse_args(__doc__)
    from tiny_eagle3 import VARIANTS, write_tiny_eagle3, write_tiny_eagle3_target

    a.out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            t, s = Path(tmp) / "target.gguf", Path(tmp) / "eagle3.gguf"
            write_tiny_eagle3_target(t)
            write_tiny_eagle3(s, variant)
            run = subprocess.run([a.oracle, "-c", ORACLE, str(t), str(s), json.dumps(PROMPT)], capture_output=True, text=True)
            if run.returncode:
                sys.exit(run.stderr[-3000:])
            d = json.loads(run.stdout.strip().splitlines()[-1])
            f32 = lambda k: np.array(d[k], np.float32)  # noqa: E731
            name = f"eagle3{'_' + variant if variant else ''}.npz"
            np.savez_compressed(
                a.out / name, sha256_target=sha256(t), sha256_draft=sha256(s), prompt=np.array(PROMPT, np.int32),
                first=d["first"], layers=np.array(d["layers"], np.int32), features=f32("features"), g=f32("g"),
                logits=f32("logits"), prenorm=f32("prenorm"), tokens=np.array(d["tokens"], np.int32),
                step_logits=f32("step_logits"), step_prenorm=f32("step_prenorm"),
            )  # fmt: skip
            print(f"{name}: layers {d['layers']}, first {d['first']}, steps {d['tokens']}")


if __name__ == "__main__":
    main()
