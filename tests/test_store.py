"""kvrun's model store: a pull places the model once, however many processes pull it at the same time."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest


@pytest.mark.real_model
def test_processes_pulling_at_once_place_one_whole_file(tmp_path, smollm2_path):
    """Parallel test workers pull the real models at once: one copies (under the store's lock), the others wait and
    find the file; no half-written file is ever at the model's path, and no part file is left behind."""
    env = {**os.environ, "KVRUN_MODELS": str(tmp_path)}
    code = "from kvrun.loaders.store import pull; print(pull('smollm2'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    paths = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(paths) == 1
    placed = next(iter(paths))
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(placed) == digest(smollm2_path)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
