"""Regenerate tests/fixtures/audio_lfm2a.npz: llama.cpp's libmtmd on the tiny LFM2-Audio pair of
``tests/tiny_audio_lfm2a.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_lfm2a_fixtures.py --oracle /work/llvenv/bin/python

The oracle script of tools/make_audio_fixtures.py (its ``_ORACLE``) on its clips (short 1.3 s: 131 frames, 17 rows;
long 31.5 s: 3151 frames, one spectrogram and 394 rows, no chunking): ``mel_<clip>`` the clip's spectrogram
[1, n_mel, frames] from libmtmd's debug entry (6 decimals), ``ids_<clip>`` the layout of a lone marker (-1 for an audio
row; LFM2-Audio puts no tokens around a clip), ``embd_<clip>`` the clip's rows, and for each prompt of ``PROMPTS``
``pids_<k>``, ``logits_<k>`` (the text model's context without flash attention) and ``npast_<k>``; ``sha256_*`` the
files' digests.
"""

from __future__ import annotations

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import TOWER_PROMPTS, run_tower
from tiny_audio_lfm2a import write_tiny_lfm2a_mmproj, write_tiny_lfm2a_text

PROMPTS = TOWER_PROMPTS  # (every tower's prompts, the clips taken in turn; its test reads them here)
N_CTX = 1024  # (the second prompt: 17 + 394 rows and its text)


def main() -> None:
    run_tower(parse_args(__doc__), "lfm2a", write_tiny_lfm2a_text, write_tiny_lfm2a_mmproj, N_CTX)


if __name__ == "__main__":
    main()
