"""Token-switched LoRA adapters on the device (ops/gpu/lora.cu, Granite Switch's): each kernel against the host numpy of
models/graniteswitch.py's CPU forward on random inputs, on the ``rt`` fixture (conftest.py: real CUDA where a GPU is,
else the kernel emulator).  The model itself against the CPU, prefill and replayed decode steps, is
tests/test_graniteswitch.py's.

Tolerances: the lookups, the router's rows and the slots exact; an adapter's product within 1e-5 relative, or 1e-5 of
the largest output (sums of a few hundred products, some cancelling, in another order than numpy's)."""

from __future__ import annotations

import numpy as np
import pytest

from kvrun.models.graniteswitch import lora_add, round_half_away
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu.lora import TokenSwitch

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

N_VOCAB, N_ADAPTERS, GAIN = 50, 3, 15.0
SLOT_OF = {7: 1, 0: 2, 49: 3, 60: 1}  # (60: past the vocabulary, never fed: left out of the tables)
SUBSTITUTE_OF = {7: 40, 0: 41, 49: 42, 60: 43}
#: control tokens, others, the vocabulary's ends and ids past them (looked up as nothing)
TOKENS = np.array([3, 7, 0, 12, 49, 48, 7, -1, 50, 60], np.int32)


def _switch() -> TokenSwitch:
    return TokenSwitch(SLOT_OF, SUBSTITUTE_OF, N_VOCAB, N_ADAPTERS, GAIN)


def test_the_routers_rows_are_the_cpus(rt):
    """q 1, k +gain for a control token and -gain for another, v its slot, on channel 0; the other channels zeros
    (models/graniteswitch.py ``route``), over buffers holding garbage."""
    T, hd = len(TOKENS), 16
    slot = np.array([SLOT_OF.get(int(t), 0) if 0 <= t < N_VOCAB else 0 for t in TOKENS], np.float32)
    want = np.zeros((3, T, 1, hd), np.float32)
    want[0, :, 0, 0] = 1.0
    want[1, :, 0, 0] = np.where(slot > 0, GAIN, -GAIN)
    want[2, :, 0, 0] = slot
    q, k, v = (rt.xp.full((T, 1, hd), np.nan, np.float32) for _ in range(3))
    _switch().router_qkv(rt.xp.asarray(TOKENS), q, k, v)
    for name, got, w in zip("qkv", (q, k, v), want):
        np.testing.assert_array_equal(rt.asnumpy(got), w, err_msg=name)


def test_the_slots_are_the_routers_output_clamped_and_rounded_half_away(rt):
    """``round_half_away(clip(att[:, 0, 0], 0, n_adapters))`` as int32: halves up (2.5 to 3: numpy's own would give 2),
    just below a half down, out of range clamped; the other channels unread; nothing past T written."""
    values = np.array([0.5, 1.5, 2.5, 2.4999, 1.99999, 0.49, -0.7, 3.6, 40.0, 0.0, 3.0], np.float32)
    T, hd = len(values), 16
    att = np.random.default_rng(1).standard_normal((T, 1, hd)).astype(np.float32) * 9
    att[:, 0, 0] = values
    want = round_half_away(np.clip(values, 0.0, float(N_ADAPTERS))).astype(np.int32)
    assert want.tolist() == [1, 2, 3, 2, 2, 0, 0, 3, 3, 0, 3]
    slots = rt.xp.full(T + 1, -7, np.int32)
    _switch().route(rt.xp.asarray(att), slots[:T])
    got = rt.asnumpy(slots)
    assert got[:T].tolist() == want.tolist() and got[T] == -7


def test_control_tokens_are_embedded_as_their_substitutes(rt):
    """Each control token as its substitute, any other token as itself (ids past the vocabulary too: left to the
    embedding's check)."""
    want = [SUBSTITUTE_OF[int(t)] if int(t) in SUBSTITUTE_OF and 0 <= t < N_VOCAB else int(t) for t in TOKENS]
    assert want == [3, 40, 41, 12, 42, 48, 40, -1, 50, 60]
    shown = rt.xp.full(len(TOKENS), -9, np.int32)
    _switch().substitute(rt.xp.asarray(TOKENS), shown)
    assert rt.asnumpy(shown).tolist() == want


@pytest.mark.parametrize("T, rank, n_in, n_out", [(1, 4, 64, 96), (6, 20, 100, 300), (5, 64, 33, 7)],
                         ids=["decode", "prefill-wide", "rank-past-the-warps"])  # fmt: skip
def test_an_adapters_product_is_the_cpus(rt, T, rank, n_in, n_out):
    """``out[t] += B[s] (A[s] x[t])``, each token its slot's (models/graniteswitch.py ``lora_add``, numpy's products of
    the tokens of a slot): a row past the block (300 > 256), more rows of A than the block's warps (20, 64 > 8), an
    input not a whole number of warps; a row past T untouched."""
    rng = np.random.default_rng(rank)
    n_slots = N_ADAPTERS + 1
    a = rng.standard_normal((n_slots, rank, n_in)).astype(np.float32)
    b = rng.standard_normal((n_slots, n_out, rank)).astype(np.float32)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    slots = rng.integers(0, n_slots, T).astype(np.int32)
    out = rng.standard_normal((T + 1, n_out)).astype(np.float32)
    out[T] = np.nan
    want = out[:T].copy()
    lora_add((a, b), x, slots, want)
    got = rt.xp.asarray(out)
    TokenSwitch.lora_add((TokenSwitch.upload(a), TokenSwitch.upload(b)), rt.xp.asarray(x), rt.xp.asarray(slots), got[:T])
    got = rt.asnumpy(got)
    np.testing.assert_allclose(got[:T], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.isnan(got[T]).all()


def test_each_token_takes_its_own_slots_adapter(rt):
    """Adapters of one nonzero entry each (slot s: ``A[s][0, 0] = 1``, ``B[s][0, 0] = s + 1``): each token adds s + 1
    times its first input to its first output, whatever its neighbours' slots."""
    n_slots, rank, n_in, n_out = N_ADAPTERS + 1, 2, 8, 3
    a, b = np.zeros((n_slots, rank, n_in), np.float32), np.zeros((n_slots, n_out, rank), np.float32)
    for s in range(n_slots):
        a[s, 0, 0], b[s, 0, 0] = 1.0, s + 1.0
    slots = np.array([2, 0, 3, 3, 1], np.int32)
    x = np.ones((len(slots), n_in), np.float32)
    out = rt.xp.zeros((len(slots), n_out), np.float32)
    TokenSwitch.lora_add((TokenSwitch.upload(a), TokenSwitch.upload(b)), rt.xp.asarray(x), rt.xp.asarray(slots), out)
    assert rt.asnumpy(out)[:, 0].tolist() == [3.0, 1.0, 4.0, 4.0, 2.0] and not rt.asnumpy(out)[:, 1:].any()


def test_mismatched_shapes_are_refused(rt):
    a, b = np.zeros((4, 2, 8), np.float32), np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="an adapter's product"):
        TokenSwitch.lora_add((a, b), rt.xp.zeros((2, 9), np.float32), rt.xp.zeros(2, np.int32), rt.xp.zeros((2, 3), np.float32))
