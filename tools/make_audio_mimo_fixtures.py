"""Regenerate tests/fixtures/audio_mimo.npz: llama.cpp's libmtmd on the tiny MiMo-V2.5 audio pair of
``tests/tiny_audio_mimo.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_mimo_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips: libmtmd decodes the 16 kHz WAV
to MiMo's 24 kHz (miniaudio's resampler), ``mel_<clip>`` the clip's log-mel spectrogram from libmtmd's debug entry,
``ids_<clip>`` the layout of a lone marker (-1 for an audio row, between ``<|mimo_audio_start|>`` and
``<|mimo_audio_end|>``), ``embd_<clip>`` the clip's rows, and for each prompt ``pids_<k>``, ``logits_<k>`` and
``npast_<k>``; ``sha256_*`` the files' digests.
"""

from __future__ import annotations

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import run_tower
from tiny_audio_mimo import write_tiny_mimo_audio_mmproj, write_tiny_mimo_audio_text

N_CTX = 1024


def main() -> None:
    a = parse_args(__doc__)
    run_tower(a, "mimo", write_tiny_mimo_audio_text, write_tiny_mimo_audio_mmproj, N_CTX)


if __name__ == "__main__":
    main()
