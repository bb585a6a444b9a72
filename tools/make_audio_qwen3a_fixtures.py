"""Regenerate tests/fixtures/audio_qwen3a.npz: llama.cpp's libmtmd on the tiny Qwen3-Omni audio pair of
``tests/tiny_audio_qwen3a.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_qwen3a_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips (short 1.3 s: one window of two
100-frame chunks; long 31.5 s: four 800-frame windows): ``mel_short`` the short clip's spectrogram window
[1, n_mel, 200] from libmtmd's debug entry (6 decimals; zeros past the clip's 131 frames), ``ids_<clip>`` the layout
of a lone marker (-1 for an audio row, ``<|audio_start|>`` / ``<|audio_end|>`` around them), ``embd_<clip>`` the
clip's rows, and for each prompt of ``PROMPTS`` ``pids_<k>``, ``logits_<k>`` (the text model's context without
flash attention) and ``npast_<k>``; ``sha256_*`` the files' digests.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from make_audio_fixtures import _ORACLE, clips, decoded
from tiny_audio_qwen3a import write_tiny_qwen3a_mmproj, write_tiny_qwen3a_text

CLIPS = ("short", "long")
#: prompts with mtmd's media marker, the clips taken in turn
PROMPTS = ["Hear: <__media__> what?", "<__media__>a<__media__> two"]
N_CTX = 1024  # (the second prompt: 26 + 416 rows and their markers)


def main() -> None:
    a = parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_tiny_qwen3a_text(t / "text.gguf"), "mmproj": write_tiny_qwen3a_mmproj(t / "mmproj.gguf")}
        wavs, samples = {}, {}
        for k, b in clips(CLIPS).items():
            (t / f"{k}.wav").write_bytes(b)
            np.save(t / f"{k}.npy", decoded(b))
            wavs[k], samples[k] = str(t / f"{k}.wav"), str(t / f"{k}.npy")
        args = dict(model=str(files["text"]), mmproj=str(files["mmproj"]), wavs=wavs, samples=samples, prompts=PROMPTS,
                    mel=["short"], n_ctx=N_CTX, out=str(t / "out.npz"))  # fmt: skip
        subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(args)], check=True)
        res = dict(np.load(t / "out.npz"))
        np.savez_compressed(a.out / "audio_qwen3a.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    for k, v in res.items():
        print(k, v.shape, v.tolist() if k.startswith(("ids", "pids", "npast")) and v.size < 40 else "")


if __name__ == "__main__":
    main()
