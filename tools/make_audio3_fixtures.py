"""Regenerate tests/fixtures/audio_glma.npz and audio_musicflamingo.npz: llama.cpp's libmtmd on the tiny GLM-ASR and
Music Flamingo pairs of ``tests/tiny_audio3.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio3_fixtures.py --oracle /work/llvenv/bin/python [glma] [musicflamingo]

The same oracle script as tools/make_audio_fixtures.py (its ``_ORACLE``), on the same clips: ``ids_<clip>`` the
layout of a lone marker (-1 for an audio row, the marker tokens around them), ``embd_<clip>`` the audio chunks'
rows, and for each prompt of ``PROMPTS`` ``pids_<k>``, ``logits_<k>`` and ``npast_<k>``; ``sha256_*`` the files'
digests.  No spectrogram: the preprocessor is Ultravox's, which audio_ultravox.npz holds to.
"""

from __future__ import annotations

from make_audio_fixtures import run_variants  # (first: through fixture_oracle it puts tests/ on the path)
from tiny_audio3 import write_tiny_audio3_mmproj, write_tiny_audio3_text

#: each fixture's projector and the clips it takes (make_audio_fixtures.CLIPS: short 1.3 s, long 31.5 s)
VARIANTS = {"glma": ("short", "long"), "musicflamingo": ("short", "long")}
#: prompts with mtmd's media marker, the clips taken in the fixture's order
PROMPTS = {k: ["Hear: <__media__> what?", "<__media__>a<__media__> two"] for k in VARIANTS}
N_CTX = 4096  # (musicflamingo: 750 rows a 30 s chunk; the second prompt takes three chunks)


def main() -> None:
    run_variants(__doc__, VARIANTS, PROMPTS, N_CTX, write_tiny_audio3_text, write_tiny_audio3_mmproj)


if __name__ == "__main__":
    main()
