"""StarCoder2 (BigCode: StarCoder2-3B, -7B, -15B): GPT-2's block (models/gpt2.py) with rope for its
positions, as llama.cpp's STARCODER2 graph:

* no learned positions: rope over halves (NeoX layout) on the whole of each head (llama.cpp asserts
  ``rope.dimension_count`` is the head's width);
* Q, K and V apart (``attn_q``/``attn_k``/``attn_v``, each with its bias), grouped-query attention;
* LayerNorms with biases, the attention output with its bias, the ungated GELU FFN (HF's ``c_fc`` and
  ``c_proj`` as ``ffn_up`` and ``ffn_down``) with biases;
* the output head tied to the token embeddings unless the file has ``output.weight`` (the 3B ties it).

HF's StarCoder2 attends in a sliding window (4096 tokens); llama.cpp never reads one for it and
attends over the whole context, and so does kvrun (``loaders/config.py`` drops a window the file
states).  The two differ only past the window.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .gpt2 import GPT2Model


class StarCoder2Model(GPT2Model):
    archs = ("starcoder2",)
    learned_positions = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if cfg.rope_dim != cfg.head_dim:  # (llama.cpp's GGML_ASSERT(n_embd_head == n_rot))
            raise GGUFError(f"{g.path}: starcoder2.rope.dimension_count is {cfg.rope_dim}, expected the head's {cfg.head_dim}; "
                            "the file is not a supported model")  # fmt: skip
        super().__init__(g, cfg, backend, n_ctx, n_batch)
