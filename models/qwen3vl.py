"""Qwen3-VL language models, text only, as llama.cpp's QWEN3VL and QWEN3VLMOE graphs: ``qwen3vl`` (Qwen3-VL
2B/4B/8B/32B: Qwen3's block, ``qwen3.py``) and ``qwen3vlmoe`` (Qwen3-VL 30B-A3B/235B-A22B: Qwen3-MoE's, ``qwen3moe.py``).

What sets them apart from Qwen3 is the rope: llama.cpp's *interleaved* multimodal rope (IMROPE,
``rope.dimension_sections``), which Qwen3.5 shares (``qwen35.imrope_tables``).  Pair ``i``'s sector is
``i % sum(sections)``; sectors ``3j``, ``3j+1``, ``3j+2`` turn with the time, height and width positions while below
3 x their section, the others with the extra position.  A text token's positions are ``(p, p, p, 0)``, so text is
neox rope at p except the pairs no section claims, which do not turn: with the published files' sections
[24, 20, 20, 0] over heads of 128, pairs 61 and 62 (past 3 x 20 in the height and width slots) stay unturned in
llama.cpp, where Hugging Face's model turns them with the time position.  kvrun follows llama.cpp.

DeepStack (``n_deepstack_layers``): the vision encoder hands the first layers extra image features, added to their
outputs.  Text has none, and llama.cpp adds nothing then; the file's ``embedding_length`` is the text width
(llama.cpp widens its own count to ``n_embd * (1 + n_deepstack_layers)`` only for the image rows it takes in),
so kvrun reads the key and does nothing with it.  Q and K's per-head norms are required, as llama.cpp's loader
requires them.

kvrun runs these models on text alone: an image cannot be given yet (no vision encoder for Qwen3-VL's mmproj).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .qwen2vl import rope_sections
from .qwen3 import Qwen3Model
from .qwen35 import imrope_tables
from .qwen3moe import Qwen3MoeModel


class _Qwen3VLText(LlamaModel):
    """What both Qwen3-VL text models add to their Qwen3 base: the interleaved multimodal rope, the QK norms required."""

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        sections = rope_sections(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.n_deepstack_layers = int(g.arch_get("n_deepstack_layers", 0) or 0)  # (image features only: unused for text)
        self.rope_cos, self.rope_sin = imrope_tables(self.rope_cos, self.rope_sin, sections)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        if L.q_norm is None:  # (llama.cpp requires both, one head wide: the error names the missing tensor)
            w.vector("q_norm", i)
        if L.qk_norm_full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; {self.cfg.arch}'s are one head "
                            f"({self.cfg.head_dim}) wide")  # fmt: skip
        return L


class Qwen3VLModel(_Qwen3VLText, Qwen3Model):
    archs = ("qwen3vl",)


class Qwen3VLMoeModel(_Qwen3VLText, Qwen3MoeModel):
    archs = ("qwen3vlmoe",)
