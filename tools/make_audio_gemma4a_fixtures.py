"""Regenerate tests/fixtures/audio_gemma4a.npz: llama.cpp's libmtmd on the tiny Gemma 4 audio pair of
``tests/tiny_audio_gemma4a.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_gemma4a_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips (short 1.3 s: one 30 s piece of
129 frames, 33 rows; long 31.5 s: two pieces, 2999 and 149 frames, 750 + 38 rows): ``mel_<clip>`` each piece's
spectrogram [n_pieces, n_mel, frames] from libmtmd's debug entry (6 decimals; a shorter piece zero past its end),
``ids_<clip>`` the layout of a lone marker (-1 for an audio row, between ``<|audio>`` and ``<audio|>``),
``embd_<clip>`` the clip's rows (every piece's, in order), and for each prompt of ``PROMPTS`` ``pids_<k>``,
``logits_<k>`` (the text model's context without flash attention) and ``npast_<k>``; ``sha256_*`` the files'
digests.
"""

from __future__ import annotations

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import TOWER_PROMPTS, run_tower
from tiny_audio_gemma4a import write_tiny_gemma4a_mmproj, write_tiny_gemma4a_text

PROMPTS = TOWER_PROMPTS  # (every tower's prompts, the clips taken in turn; its test reads them here)
N_CTX = 1024  # (the second prompt: 33 + 788 rows, four markers and its text)


def main() -> None:
    run_tower(parse_args(__doc__), "gemma4a", write_tiny_gemma4a_text, write_tiny_gemma4a_mmproj, N_CTX)


if __name__ == "__main__":
    main()
