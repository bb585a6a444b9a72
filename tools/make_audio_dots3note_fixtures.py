"""Regenerate tests/fixtures/audio_dots3note.npz: llama.cpp's libmtmd on the tiny dots.note audio pair of
``tests/tiny_audio_dots3note.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_dots3note_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips (short 1.3 s: 130 mel frames kept,
17 rows; long 31.5 s: 3150 frames, one 60 s chunk, 394 rows): ``mel_<clip>`` the clip's spectrogram [1, n_mel, frames]
from libmtmd's debug entry (6 decimals), ``ids_<clip>`` the layout of a lone marker (-1 for an audio row, the bytes of
``<|audio_comp_start|>`` / ``<|audio_comp_end|>`` around them: the tiny text model's byte vocabulary has no such tokens), ``embd_<clip>``
the clip's rows, and for each prompt of ``TOWER_PROMPTS`` ``pids_<k>``, ``logits_<k>`` (the text model's context
without flash attention) and ``npast_<k>``; ``sha256_*`` the files' digests.
"""

from __future__ import annotations

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import run_tower
from tiny_audio_dots3note import write_tiny_dots3note_mmproj, write_tiny_dots3note_text

N_CTX = 512  # (the second prompt: 17 + 394 rows, their markers and its text)


def main() -> None:
    a = parse_args(__doc__)
    run_tower(a, "dots3note", write_tiny_dots3note_text, write_tiny_dots3note_mmproj, N_CTX)


if __name__ == "__main__":
    main()
