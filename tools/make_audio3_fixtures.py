"""Regenerate tests/fixtures/audio_glma.npz and audio_musicflamingo.npz: llama.cpp's libmtmd on the tiny GLM-ASR and
Music Flamingo pairs of ``tests/tiny_audio3.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio3_fixtures.py --oracle /work/llvenv/bin/python [glma] [musicflamingo]

The same oracle script as tools/make_audio_fixtures.py (its ``_ORACLE``), on the same clips: ``ids_<clip>`` the
layout of a lone marker (-1 for an audio row, the marker tokens around them), ``embd_<clip>`` the audio chunks'
rows, and for each prompt of ``PROMPTS`` ``pids_<k>``, ``logits_<k>`` and ``npast_<k>``; ``sha256_*`` the files'
digests.  No spectrogram: the preprocessor is Ultravox's, which audio_ultravox.npz holds to.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from make_audio_fixtures import _ORACLE, clips, decoded
from tiny_audio3 import write_tiny_audio3_mmproj, write_tiny_audio3_text

#: each fixture's projector and the clips it takes (make_audio_fixtures.CLIPS: short 1.3 s, long 31.5 s)
VARIANTS = {"glma": ("short", "long"), "musicflamingo": ("short", "long")}
#: prompts with mtmd's media marker, the clips taken in the fixture's order
PROMPTS = {k: ["Hear: <__media__> what?", "<__media__>a<__media__> two"] for k in VARIANTS}
N_CTX = 4096  # (musicflamingo: 750 rows a 30 s chunk; the second prompt takes three chunks)


def main() -> None:
    a = parse_args(__doc__, VARIANTS)
    for variant in a.names:
        make(a, variant)


def make(a: argparse.Namespace, variant: str) -> None:
    """``<a.out>/audio_<variant>.npz`` (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_audio3_text(t / "text.gguf", variant), "mmproj": write_tiny_audio3_mmproj(t / "mmproj.gguf", variant)}
        wavs, samples = {}, {}
        for k, b in clips(VARIANTS[variant]).items():
            (t / f"{k}.wav").write_bytes(b)
            np.save(t / f"{k}.npy", decoded(b))
            wavs[k], samples[k] = str(t / f"{k}.wav"), str(t / f"{k}.npy")
        args = dict(model=str(files["text"]), mmproj=str(files["mmproj"]), wavs=wavs, samples=samples, prompts=PROMPTS[variant],
                    mel=[], n_ctx=N_CTX, out=str(t / "out.npz"))  # fmt: skip
        subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(args)], check=True)
        res = dict(np.load(t / "out.npz"))
        np.savez_compressed(a.out / f"audio_{variant}.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    for k, v in res.items():
        print(k, v.shape, v.tolist() if k.startswith(("ids", "pids", "npast")) and v.size < 40 else "")


if __name__ == "__main__":
    main()
