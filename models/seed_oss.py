"""ByteDance Seed-OSS (Seed-OSS-36B-Base/Instruct): https://huggingface.co/ByteDance-Seed/Seed-OSS-36B-Instruct

As llama.cpp's SEED_OSS graph, the Llama block (RMSNorm -> attention (GQA) -> residual -> RMSNorm ->
SwiGLU FFN -> residual) with what sets it apart all in the file, read by the Llama loader:

* biases on Q, K and V (none on the output projection);
* rope over halves (NeoX layout), heads wider than ``n_embd / n_head`` (128 at 5120 / 80: ``key_length``);
* the pre-FFN RMSNorm is named ``post_attention_norm`` (HF's name for it), not ``ffn_norm``: the same norm,
  where the Llama block has it (before the FFN, not after attention's output);
* a separate output head (tied where the file has none), the attention scale ``attention.scale`` where stated.
"""

from __future__ import annotations

from .llama import LlamaModel


class SeedOssModel(LlamaModel):
    archs = ("seed_oss",)
    ffn_norm_role = "attn_post_norm"  # (blk.{i}.post_attention_norm.weight)
