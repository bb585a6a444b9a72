"""Regenerate tests/fixtures/diffusion_cfg_<arch>.npz: llama-diffusion-cli's denoising of the tiny diffusion language
models (tests/tiny_diffusion.py) under classifier-free guidance (``--diffusion-cfg-scale``), for
tests/test_diffusion_cfg.py (developer tool; llama.cpp is the oracle, never a kvrun dependency).

The loop is make_diffusion_fixtures.py's oracle (examples/diffusion/diffusion-cli.cpp reproduced step for step over
llama.cpp's forward passes and sampler chain), each step's logits guided as diffusion-cli guides them: the whole
sequence decoded (conditional), then again with every prompt position the mask token (unconditional), and
``uncond + (cfg_scale + 1) * (cond - uncond)`` in float32.  (llama-cpp-python exposes no diffusion_generate: the
loop is reproduced in Python, each forward and each candidate list llama.cpp's own.)  For each of CFG_SETTINGS the
fixture holds ``<name>_trace`` [steps + 1, max_length] (the sequence before each step and after the last), and
``prompt`` and ``sha256`` (the model file's digest).

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_diffusion_cfg_fixtures.py --oracle /work/llvenv/bin/python [ARCH ...]
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
sys.path.insert(0, str(ROOT / "tools"))
from make_arch_fixtures import IDS  # noqa: E402
from make_diffusion_fixtures import _ORACLE, MAX_LENGTH, PROMPT  # noqa: E402
from tiny_diffusion import ARCHS, write_tiny_diffusion  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
#: arch: {name: (steps, eps, block_length, algorithm, cfg_scale)} -- llama.cpp's algorithm numbers (2 margin, 4 confidence)
CFG_SETTINGS = {
    "dream": {"cfg": (8, 1e-3, 0, 4, 1.5)},
    "llada": {"cfg_blocks": (9, 0.0, 9, 4, 0.5)},
    "llada-moe": {"cfg_margin": (8, 1e-3, 0, 2, 2.0)},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("archs", nargs="*", default=list(ARCHS), help=f"of {', '.join(ARCHS)}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            path = write_tiny_diffusion(Path(tmp) / f"{arch}.gguf", arch)
            out = Path(tmp) / f"{arch}.npz"
            spec = {"settings": CFG_SETTINGS[arch], "prompt": PROMPT, "max_length": MAX_LENGTH}
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), ",".join(map(str, IDS)), json.dumps(spec)], check=True)
            traces = {k: v for k, v in np.load(out).items() if k.endswith("_trace")}
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"diffusion_cfg_{arch}.npz", prompt=np.asarray(PROMPT, np.int32), sha256=digest, **traces)
            print(f"{arch}: traces {sorted(traces)}, model {digest[:12]}")


if __name__ == "__main__":
    main()
