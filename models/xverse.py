"""XVERSE (Shenzhen Yuanxiang: XVERSE-7B, -13B, -65B and their -Chat models), as llama.cpp's XVERSE graph.

In GGUF it is the Llama block exactly: RMSNorm -> attention (GQA where the file says, rope over consecutive pairs:
the converter permutes Q's and K's rows as Llama's) -> residual -> RMSNorm -> SwiGLU FFN -> residual.  What sets the
Hugging Face model apart is its tokenizer (a byte-level BPE of its own, which the GGUF carries) and a head that is
never tied: llama.cpp requires ``output.weight``, and so does kvrun.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .llama import LlamaModel


class XverseModel(LlamaModel):
    archs = ("xverse",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if TENSOR_NAMES["output"] not in g.tensors:  # (never tied: llama.cpp requires the model's own head)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
