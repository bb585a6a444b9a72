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

    python tools/make_diffusion_cfg_fixtures.py --oracle /work/llvenv/bin/python [--out DIR] [ARCH ...]
"""

from __future__ import annotations

import numpy as np
from make_diffusion_fixtures import PROMPT, make

#: arch: {name: (steps, eps, block_length, algorithm, cfg_scale)} -- llama.cpp's algorithm numbers (2 margin, 4 confidence)
CFG_SETTINGS = {
    "dream": {"cfg": (8, 1e-3, 0, 4, 1.5)},
    "llada": {"cfg_blocks": (9, 0.0, 9, 4, 0.5)},
    "llada-moe": {"cfg_margin": (8, 1e-3, 0, 2, 2.0)},
}


def main() -> None:
    make(__doc__, "diffusion_cfg", CFG_SETTINGS, {"prompt": np.asarray(PROMPT, np.int32)}, lambda k: k.endswith("_trace"))


if __name__ == "__main__":
    main()
