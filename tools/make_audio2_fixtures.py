"""Regenerate tests/fixtures/audio_qwen2a.npz, audio_voxtral.npz and audio_qwen25o.npz: llama.cpp's libmtmd on the
tiny Qwen2-Audio, Voxtral and Qwen2.5-Omni (audio) pairs of ``tests/tiny_audio2.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio2_fixtures.py --oracle /work/llvenv/bin/python [qwen2a] [voxtral] [qwen25o]

The same oracle script as tools/make_audio_fixtures.py (its ``_ORACLE``), on the same clips: ``ids_<clip>`` the
layout of a lone marker (-1 for an audio row, the marker tokens around them), ``embd_<clip>`` the audio chunks'
rows, and for each prompt of ``PROMPTS`` ``pids_<k>``, ``logits_<k>`` and ``npast_<k>``; ``sha256_*`` the files'
digests.  No spectrogram: the preprocessor is Ultravox's, which audio_ultravox.npz holds to.
"""

from __future__ import annotations

from make_audio_fixtures import run_variants  # (first: through fixture_oracle it puts tests/ on the path)
from tiny_audio2 import write_tiny_audio2_mmproj, write_tiny_audio2_text

#: each fixture's projector and the clips it takes (make_audio_fixtures.CLIPS: short 1.3 s, long 31.5 s)
VARIANTS = {"qwen2a": ("short", "long"), "voxtral": ("short", "long"), "qwen25o": ("short",)}  # (qwen25o: qwen2a's rows)
#: prompts with mtmd's media marker, the clips taken in the fixture's order
PROMPTS = {k: ["Hear: <__media__> what?", "<__media__>a<__media__> two"] for k in VARIANTS}
N_CTX = 4096  # (qwen2a: 750 rows a 30 s chunk; the second prompt takes three chunks)


def main() -> None:
    run_variants(__doc__, VARIANTS, PROMPTS, N_CTX, write_tiny_audio2_text, write_tiny_audio2_mmproj)


if __name__ == "__main__":
    main()
