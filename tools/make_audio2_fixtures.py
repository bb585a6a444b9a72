"""Regenerate tests/fixtures/audio_qwen2a.npz, audio_voxtral.npz and audio_qwen25o.npz: llama.cpp's libmtmd on the
tiny Qwen2-Audio, Voxtral and Qwen2.5-Omni (audio) pairs of ``tests/tiny_audio2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio2_fixtures.py --oracle /work/llvenv/bin/python [qwen2a] [voxtral] [qwen25o]

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
from tiny_audio2 import write_tiny_audio2_mmproj, write_tiny_audio2_text

#: each fixture's projector and the clips it takes (make_audio_fixtures.CLIPS: short 1.3 s, long 31.5 s)
VARIANTS = {"qwen2a": ("short", "long"), "voxtral": ("short", "long"), "qwen25o": ("short",)}  # (qwen25o: qwen2a's rows)
#: prompts with mtmd's media marker, the clips taken in the fixture's order
PROMPTS = {k: ["Hear: <__media__> what?", "<__media__>a<__media__> two"] for k in VARIANTS}
N_CTX = 4096  # (qwen2a: 750 rows a 30 s chunk; the second prompt takes three chunks)


def main() -> None:
    a = parse_args(__doc__, VARIANTS)
    for variant in a.names:
        make(a, variant)


def make(a: argparse.Namespace, variant: str) -> None:
    """``<a.out>/audio_<variant>.npz`` (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_audio2_text(t / "text.gguf", variant), "mmproj": write_tiny_audio2_mmproj(t / "mmproj.gguf", variant)}
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
