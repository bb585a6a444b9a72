"""Recurrent layers copy a prefix (``copy_state``; the GPU's in place): LFM2's convolutions, Mamba-2 / Mamba / RWKV-7 /
Gated DeltaNet states, Falcon-H1's state beside its K/V.  A fork (``Session.fork``) or a server slot takes another
cache's state gone back to the prefix, as far as that cache itself could go back (its ring of inputs and state copies),
and the copy goes on exactly as the source gone back does; further back it refuses, and the prompt is evaluated."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.runtime.engine import Engine

TEXT = list(np.arange(1, 100) % 90 + 1)
MORE = [7, 8, 9]


def _engine(tmp_path, name: str, device: str = "cpu") -> Engine:
    return Engine(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), n_ctx=128, n_batch=8, threads=1, device=device)


@pytest.mark.parametrize("device", ["cpu", "gpu"])  # (gpu: the kernel emulator where there is none; in place there)
@pytest.mark.parametrize("name", ["lfm2", "mamba2", "falcon-h1", "qwen35", "rwkv7"])
def test_a_copied_state_goes_on_as_the_source_gone_back(gpu_env, tmp_path, name, device):
    eng = _engine(tmp_path, name, device)
    src = eng.new_cache()
    eng.eval(src, TEXT)
    for n in (len(TEXT), len(TEXT) - 3):  # (a fork's whole text; a refused draft's few tokens back)
        dst = eng.new_cache()
        eng.eval(dst, [5] * 20)  # (a cache that held another text)
        assert dst.copy_prefix(src, n) and dst.offset == n
        gone_back = eng.new_cache()
        eng.eval(gone_back, TEXT)
        gone_back.truncate(n)
        np.testing.assert_array_equal(eng.eval(dst, MORE, logits_all=True), eng.eval(gone_back, MORE, logits_all=True))
    twin = eng.new_cache()
    eng.eval(twin, TEXT)
    np.testing.assert_array_equal(eng.eval(src, MORE, logits_all=True), eng.eval(twin, MORE, logits_all=True))


@pytest.mark.parametrize("name", ["lfm2", "mamba2"])
def test_a_prefix_further_back_than_the_state_reaches_is_evaluated(tmp_path, name):
    eng = _engine(tmp_path, name)
    src = eng.new_cache()
    eng.eval(src, TEXT)
    dst = eng.new_cache()
    assert not dst.copy_prefix(src, 10) and dst.offset == 0
