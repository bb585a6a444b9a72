"""The architectures added since 1844edd on `--device gpu`: those whose forward uses only the GPU backend's ops give the
CPU's logits there (the kernel emulator where there is no GPU, as tests/test_gpu_engine.py), over a prefill and decode
steps replayed from captured CUDA graphs; the rest refuse the GPU in one line that says to drop it.

The weights are float32, so the two backends' arithmetic is compared rather than their quantized products: with Q4_0
weights the CPU's int8 activations (llama.cpp's) and the GPU's float32 ones part by 0.8e-2 .. 3.5e-2 on these tiny
models (Baichuan's 32 layers, PLaMo 3's and Chameleon's norms after each block the most), around test_gpu_engine.py's
2e-2, while float32 weights agree within 3.1e-4; the bound here, 2e-3, is that tolerance tightened tenfold."""

from __future__ import annotations

import pytest
from gpu_checks import check_prefill_and_replayed_decode
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.loaders.errors import UnsupportedModelError
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

#: the fixtures (tests/tinymodel.py) of this stop's architectures that run on the GPU, variants included
ON_GPU = ["deci", "qwen", "baichuan", "orion", "xverse", "plamo3", "plamo3-full", "maincoder", "jais2", "codeshell", "plamo",
          "chameleon", "chameleon-swin", "cogvlm", "hunyuan_vl", "hunyuan_vl-plain", "paddleocr"]  # fmt: skip

#: the rest, each refusing --device gpu: experts, latent attention, delta-rule layers (Gemma 4 runs:
#: tests/test_gpu_gemma_n4.py; ALiBi's,
#: baichuan-13b, jais and refact, run: tests/test_gpu_alibi_sinks.py)
#: (Mamba's and Mamba-2's state-space layers, Jamba's and PLaMo 2's among them, run: tests/test_gpu_ssm.py)
#: (the mixtures of experts whose other ops the GPU has run there: tests/test_gpu_moe.py; latent attention, Mistral 4's,
#: PLM's and GLM-5's among them: tests/test_gpu_mla.py)
#: (Step-3.5's, GroveMoE's, DBRX's and Grok's run: tests/test_gpu_moe2.py)
#: (Kimi Linear's delta-rule layers, Qwen3.5's and Qwen3-Next's, run: tests/test_gpu_delta.py)
#: (Nemotron-H MoE's ungated squared-ReLU experts, Nemotron 3 Nano's and Super's, run: tests/test_gpu_refusals2.py)
REFUSED: list[str] = []

#: this stop's models written by their own tiny writers that still refuse (the encoders, T5 and the diffusion LMs run:
#: tests/test_gpu_encoders.py)
OTHER_WRITERS: dict = {}

def test_the_lists_cover_every_fixture_of_this_stops_architectures():
    assert not set(ON_GPU) & set(REFUSED)
    assert set(ON_GPU) | set(REFUSED) <= set(FIXTURE_MODELS)


@pytest.mark.parametrize("name", ON_GPU)
def test_gpu_logits_match_cpu_over_prefill_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    # the first decode step is captured and the others replayed: every op the step launches is a kernel a graph holds
    # (Chameleon's image tokens' logits, -FLT_MAX, suppressed on both backends: gpu_checks.rel_err)
    check_prefill_and_replayed_decode(write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name]), capsys=capsys)


@pytest.mark.parametrize("name", REFUSED + list(OTHER_WRITERS))
def test_the_others_refuse_the_gpu_in_one_line(gpu_env, tmp_path, name):
    p = tmp_path / f"{name}.gguf"
    path = OTHER_WRITERS[name](p) if name in OTHER_WRITERS else write_tiny_model(p, **FIXTURE_MODELS[name])
    with pytest.raises(UnsupportedModelError, match="--device") as e:
        Engine(path, device="gpu", n_ctx=64, n_batch=16)
    assert "\n" not in str(e.value) and "CPU" in str(e.value)
