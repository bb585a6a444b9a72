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

from fixture_oracle import parse_args  # (first: it puts tests/ on the path)
from make_audio_fixtures import TOWER_PROMPTS, run_tower
from tiny_audio_qwen3a import write_tiny_qwen3a_mmproj, write_tiny_qwen3a_text

PROMPTS = TOWER_PROMPTS  # (every tower's prompts, the clips taken in turn; its test reads them here)
N_CTX = 1024  # (the second prompt: 26 + 416 rows and their markers)


def main() -> None:
    run_tower(parse_args(__doc__), "qwen3a", write_tiny_qwen3a_text, write_tiny_qwen3a_mmproj, N_CTX, ("short",))


if __name__ == "__main__":
    main()
