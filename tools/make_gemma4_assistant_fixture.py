"""Make tests/fixtures/gemma4_assistant*.npz: llama.cpp's Gemma 4 assistant (MTP draft head) beside a tiny Gemma 4.

Two targets: ``gemma4_assistant.npz`` the E2B layout (its last layers share K/V, so the head reads the layers those
share from), ``gemma4_assistant_moe.npz`` the 26B-A4B one (no sharing; the global layer's V is its K).
llama-cpp-python runs the tiny target (tests/tiny_gemma4.py) over a prompt with its ``h_nextn`` output on, then the
tiny assistant (tests/tiny_gemma4_assistant.py) in a context whose ``ctx_other`` is the target's (so it shares the
target's KV cache and token embedding), as common/speculative.cpp's ``draft-mtp`` does: three steps, each at the
position after the prompt, fed its token and the previous ``h`` (the target's, then the head's own ``h_nextn``).
Saved: the prompt, the target's first greedy token and its ``h``, each step's token, logits and ``h_next``, and both
files' digests.

    python tools/make_gemma4_assistant_fixture.py --oracle /work/llvenv/bin/python
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fixture_oracle import parse_args, sha256

PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33]  # "Hello world!" in the byte vocabulary

ORACLE = r'''
import ctypes, json, sys
import numpy as np
import llama_cpp as L
tgt_path, asst_path, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lib = L.llama_cpp._lib
lib._Z26llama_set_embeddings_nextnP13llama_contextbb.argtypes = [ctypes.c_void_p, ctypes.c_bool, ctypes.c_bool]
f = lib._Z30llama_get_embeddings_nextn_ithP13llama_contexti
f.argtypes = [ctypes.c_void_p, ctypes.c_int32]; f.restype = ctypes.POINTER(ctypes.c_float)
L.llama_backend_init()
mp = L.llama_model_default_params()
mt = L.llama_model_load_from_file(tgt_path.encode(), mp)
ma = L.llama_model_load_from_file(asst_path.encode(), mp)
cp = L.llama_context_default_params(); cp.n_ctx = 64; cp.n_batch = 64; cp.n_ubatch = 64
ct = L.llama_init_from_model(mt, cp)
lib._Z26llama_set_embeddings_nextnP13llama_contextbb(ct, True, False)
cp2 = L.llama_context_default_params(); cp2.n_ctx = 64; cp2.n_batch = 64; cp2.n_ubatch = 64
cp2.ctx_other = ct; cp2.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
ca = L.llama_init_from_model(ma, cp2)
assert ca, "no assistant context"
lib._Z26llama_set_embeddings_nextnP13llama_contextbb(ca, True, True)
n = len(prompt)
b = L.llama_batch_init(n, 0, 1)
for i, t in enumerate(prompt):
    b.token[i] = t; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1
b.n_tokens = n
assert L.llama_decode(ct, b) == 0
nv = L.llama_vocab_n_tokens(L.llama_model_get_vocab(mt))
tl = np.ctypeslib.as_array(L.llama_get_logits_ith(ct, n - 1), (nv,)).copy()
h = np.ctypeslib.as_array(f(ct, n - 1), (64,)).copy()
tok = int(tl.argmax())
out = {"prompt": prompt, "h_target": h.tolist(), "first": tok, "steps": []}
cur_h, cur_t = h, tok
for step in range(3):
    be = L.llama_batch_ext_init(ca)
    idx = L.llama_batch_ext_add_token(be, 0, cur_t)
    pos = (L.llama_pos * 1)(n)
    L.llama_batch_ext_set_pos(be, idx, pos)
    hbuf = (ctypes.c_float * 64)(*cur_h.tolist())
    e = L.llama_embd(); e.data = hbuf; e.n_rows = 1; e.n_embd = 64
    assert L.llama_batch_ext_set_embd_token(be, idx, e)
    L.llama_batch_ext_set_output_logits(be, idx, True)
    rc = L.llama_process(ca, L.LLAMA_PROCESS_TYPE_DECODE, be)
    assert rc == 0, rc
    lg = np.ctypeslib.as_array(L.llama_get_logits_ith(ca, idx), (nv,)).copy()
    h2 = np.ctypeslib.as_array(f(ca, idx), (64,)).copy()
    out["steps"].append({"token": cur_t, "logits": lg.tolist(), "h_next": h2.tolist()})
    cur_t, cur_h = int(lg.argmax()), h2
    L.llama_batch_ext_free(be)
print(json.dumps(out))
'''


def main() -> None:
    a = parse_args(__doc__)
    from tiny_gemma4 import write_tiny_gemma4
    from tiny_gemma4_assistant import write_tiny_gemma4_assistant

    a.out.mkdir(parents=True, exist_ok=True)
    for variant in ("", "moe"):
        with tempfile.TemporaryDirectory() as tmp:
            t, s = Path(tmp) / "target.gguf", Path(tmp) / "assistant.gguf"
            write_tiny_gemma4(t, variant=variant)
            write_tiny_gemma4_assistant(s)
            run = subprocess.run([a.oracle, "-c", ORACLE, str(t), str(s), json.dumps(PROMPT)], capture_output=True, text=True)
            if run.returncode:
                sys.exit(run.stderr[-2000:])
            d = json.loads(run.stdout.strip().splitlines()[-1])
            np.savez_compressed(
                a.out / f"gemma4_assistant{'_' + variant if variant else ''}.npz",
                sha256_target=sha256(t), sha256_assistant=sha256(s), prompt=np.array(PROMPT, np.int32), first=d["first"],
                h_target=np.array(d["h_target"], np.float32), tokens=np.array([x["token"] for x in d["steps"]], np.int32),
                logits=np.array([x["logits"] for x in d["steps"]], np.float32),
                h_next=np.array([x["h_next"] for x in d["steps"]], np.float32),
            )  # fmt: skip

if __name__ == "__main__":
    main()
