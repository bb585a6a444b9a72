"""Regenerate tests/fixtures/quantize_cases.json: what llama.cpp's quantizer (``llama_model_quantize``, the library
behind ``llama-quantize``, no importance matrix) makes of the tiny models of ``tests/tiny_quantize.py``: for every
case of ``tiny_quantize.CASES``, each tensor's type and the sha256 of its bytes (developer tool; llama.cpp is the
oracle, never a kvrun dependency).

    python tools/make_quantize_fixtures.py --oracle /work/llvenv/bin/python

The fixture also holds each input model's sha256 (the test writes the same bytes again) and llama.cpp's version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT.parent))
from tiny_quantize import CASES, case_key, write_quantize_model  # noqa: E402

from kvrun.loaders.gguf_file import GGUFFile  # noqa: E402
from kvrun.runtime.quantize import FILE_TYPES, tensor_type  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "quantize_cases.json"

_ORACLE = """
import ctypes, json, sys
import llama_cpp
jobs = json.loads(sys.argv[1])
llama_cpp.llama_backend_init()
for inp, out, ftype, opts in jobs:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    p.allow_requantize = bool(opts.get("allow_requantize"))
    p.pure = bool(opts.get("pure"))
    if "output_tensor_type" in opts:
        p.output_tensor_type = opts["output_tensor_type"]
    if "token_embedding_type" in opts:
        p.token_embedding_type = opts["token_embedding_type"]
    rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p))
    if rc:
        sys.exit(f"llama_model_quantize failed on {out}")
print(llama_cpp.__version__)
"""


def digest(g: GGUFFile) -> dict[str, str]:
    """tensor name -> "TYPE:sha256 of its bytes (16 hex digits)", in the file's order."""
    return {n: f"{t.type_name}:{hashlib.sha256(t.data.tobytes()).hexdigest()[:16]}" for n, t in g.tensors.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    res: dict = {"models": {}, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for model, type_name, opts in CASES:
            inp = Path(tmp) / f"{model}.gguf"
            if model not in res["models"]:
                write_quantize_model(inp, model)
                res["models"][model] = hashlib.sha256(inp.read_bytes()).hexdigest()
            key = case_key(model, type_name, opts)
            out = Path(tmp) / (key.replace(" ", "_") + ".gguf")
            copts = {k: (int(tensor_type(v, k)) if k.endswith("_type") else v) for k, v in opts.items()}
            jobs.append((str(inp), str(out), int(FILE_TYPES[type_name].ftype), copts))
        r = subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(jobs)], check=True, capture_output=True, text=True)
        res["llama_cpp_python"] = r.stdout.strip()
        for (model, type_name, opts), (_, out, _, _) in zip(CASES, jobs):
            g = GGUFFile(out)
            res["cases"][case_key(model, type_name, opts)] = {"file_type": g.get("general.file_type"), "tensors": digest(g)}
            g.close()
    FIX.write_text(json.dumps(res, indent=0) + "\n")
    print(f"{len(res['cases'])} cases, llama-cpp-python {res['llama_cpp_python']}: {FIX} ({FIX.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
