"""Regenerate tests/fixtures/audio_granite.npz: llama.cpp's libmtmd on the tiny Granite Speech pair of
``tests/tiny_audio_granite.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_granite_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips (short 1.3 s: 131 mel frames, 65
stacked, 15 rows; long 31.5 s: 3151 frames, 1575 stacked, one spectrogram and 315 rows, no chunking): ``mel_<clip>``
the clip's stacked spectrogram [1, 2 n_mel, frames / 2] from libmtmd's debug entry (6 decimals), ``ids_<clip>`` the
layout of a lone marker (-1 for an audio row; Granite Speech puts no tokens around a clip), ``embd_<clip>`` the clip's
rows, and for each prompt of ``PROMPTS`` ``pids_<k>``, ``logits_<k>`` (the text model's context without flash
attention) and ``npast_<k>``; ``sha256_*`` the files' digests.  ``audio_granite_plus.npz``: the same for the
projector with Granite Speech Plus's ``feature_layers`` (``PLUS``), the short clip's rows and layout only.
"""

from __future__ import annotations

from functools import partial

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import TOWER_PROMPTS, run_oracle, run_tower
from tiny_audio_granite import write_tiny_granite_speech_mmproj, write_tiny_granite_speech_text

PROMPTS = TOWER_PROMPTS  # (every tower's prompts, the clips taken in turn; its test reads them here)
N_CTX = 512  # (the second prompt: 15 + 315 rows and its text)
PLUS = (0, 2)  # Granite Speech Plus's layers concatenated: the input projection's and the second block's


def main() -> None:
    a = parse_args(__doc__)
    run_tower(a, "granite", write_tiny_granite_speech_text, write_tiny_granite_speech_mmproj, N_CTX)
    plus = partial(write_tiny_granite_speech_mmproj, feature_layers=PLUS)
    run_oracle(a, "granite_plus", write_tiny_granite_speech_text, plus, ("short",), [], [], N_CTX)


if __name__ == "__main__":
    main()
