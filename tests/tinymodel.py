"""Write tiny random GGUF models with gguf.GGUFWriter, for fast architecture tests.

The vocabulary is GPT-2 byte-level: the 256 byte tokens plus a few merges and
``<|endoftext|>``, so the real tokenizer code path runs on it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType
from gguf.quants import quantize

Q = GGMLQuantizationType


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable character for every byte, in byte order (the tokenizer's own map)."""
    from kvrun.loaders.tokenizer import _bytes_to_unicode as table

    t = table()
    return [t[b] for b in range(256)]


def byte_vocab() -> tuple[list[str], list[str], list[int]]:
    toks = _bytes_to_unicode()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    for m in merges:
        toks.append(m.replace(" ", ""))
    toks.append("<|endoftext|>")
    types = [1] * (len(toks) - 1) + [3]
    return toks, merges, types


ARCH_GEOMETRY = {
    # arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
    "llama": (64, 4, 2, 16, 96, 2),
    "qwen2": (64, 4, 2, 16, 96, 2),
    "qwen3": (64, 4, 2, 32, 96, 2),  # heads wider than n_embd / n_head, as Qwen3's 128 at n_embd 1024
    "gemma3": (64, 2, 1, 32, 96, 6),
    "gemma2": (64, 2, 1, 32, 96, 4),
    "gemma": (64, 4, 1, 32, 96, 2),  # multi-query, as the 2B; heads wider than n_embd / n_head, as the 7B
    "phi3": (64, 4, 2, 16, 96, 2),
    "smollm3": (64, 4, 2, 16, 96, 4),  # layer 3 without rope
    "granite": (64, 4, 2, 16, 96, 2),
    "qwen3moe": (64, 4, 2, 32, 96, 2),
    "qwen2moe": (64, 4, 2, 16, 96, 2),
    "deepseek": (64, 4, 2, 16, 96, 3),  # layer 0 dense, 1 and 2 experts (DeepSeek-MoE's leading dense layer)
    "granitemoe": (64, 4, 2, 16, 96, 2),
    "olmo2": (64, 4, 2, 16, 96, 4),  # grouped-query attention, as OLMo 2 32B's; with a window (OLMo 3) layer 3 is global
    "olmoe": (64, 4, 4, 16, 96, 2),  # (llama.cpp sizes OLMoE's K norm n_embd: as many KV heads as heads)
    "exaone": (64, 4, 2, 16, 96, 2),
    "lfm2": (64, 4, 2, 16, 96, 5),  # layers 1 and 3 attend, the others are convolutions (LFM2_CONV)
    "lfm2moe": (64, 4, 2, 16, 96, 5),  # the same, the FFNs after the first a mixture of 4 experts (2 a token)
    "phi2": (64, 4, 4, 16, 96, 2),  # multi-head, as Phi-2
    "stablelm": (64, 4, 2, 16, 96, 2),  # grouped-query, as StableLM 2 12B
    "ernie4_5": (64, 4, 2, 16, 96, 2),
    "exaone4": (64, 4, 2, 16, 96, 4),  # (n_layer 64 for the 32B's window layers: write_tiny_model's n_layer)
    "cohere2": (64, 4, 2, 16, 96, 4),  # layers 0-2 in the window, 3 global without rope
    "arcee": (64, 4, 2, 16, 96, 2),
    "mistral3": (64, 4, 2, 16, 96, 2),
    "ernie4_5-moe": (64, 4, 2, 16, 96, 3),  # layer 0 dense (leading_dense_block_count), 1 and 2 experts and a shared one
    "hunyuan-dense": (64, 4, 2, 16, 96, 2),
    "minicpm": (64, 4, 2, 16, 96, 4),  # 4 layers: residual_scale 1.4 / sqrt(4) = 0.7, far enough from 1 to matter
    "mamba2": (64, 0, 0, 0, 0, 2),  # no attention, no FFN: head_count and feed_forward_length 0, as the converter writes
    "granitehybrid": (64, 4, 2, 16, 96, 4),  # GRANITEHYBRID_SSM: layer 1 attends; the experts as wide as n_ff
    # 25 layers: llama.cpp fixes the K/V sharing to start at layer 20, so layers 20-23 (window) read layer 18's K/V
    # and 24 (global) layer 19's; the first 10 layers' FFNs sparse
    "gemma3n": (64, 2, 1, 32, 96, 25),
}
LFM2_CONV = (True, False, True, False, True)
#: Granite 4.0-H's tiny layout: Mamba-2 layers before, between and after its attention layer (head_count_kv 0)
GRANITEHYBRID_SSM = (True, False, True, True)
#: the tiny Mamba-2 mixers: (d_conv, d_inner, d_state, n_head, n_group): two groups of 4 heads of 16 (Granite 4.0-H has
#: one group, Mamba-Codestral 8), states of 16 (real ones 128)
SSM_GEOMETRY = (4, 128, 16, 8, 2)
#: rope dimensions of the LayerNorm models' heads of 16 (partial rotary: Phi-2 turns 32 of 80, StableLM a quarter)
ROPE_DIM = {"phi2": 8, "stablelm": 4}


#: the tiny models held to llama.cpp's logits (tests/fixtures/arch_<name>.npz, tools/make_arch_fixtures.py):
#: name -> write_tiny_model arguments
FIXTURE_MODELS: dict[str, dict] = {
    "llama": {"arch": "llama"},
    "llama-rope-freqs": {"arch": "llama", "rope_freqs": True},  # Llama 3.1+'s rope_freqs.weight
    "qwen2": {"arch": "qwen2"},
    "qwen3": {"arch": "qwen3"},
    "gemma3": {"arch": "gemma3"},
    "gemma2": {"arch": "gemma2"},
    "phi3": {"arch": "phi3"},
    "smollm3": {"arch": "smollm3"},
    "granite": {"arch": "granite"},
    "qwen3moe": {"arch": "qwen3moe"},
    "llama-moe": {"arch": "llama", "n_expert": 4},  # Mixtral's layout
    "phi3-rope-factors": {"arch": "phi3", "rope_freqs": True},  # the short factors (context 64 of 1024)
    "granitemoe": {"arch": "granitemoe"},
    "granitemoe-shared": {"arch": "granitemoe", "shared_expert": True},  # GraniteMoeShared: a dense shared expert beside the routed ones
    "qwen2moe": {"arch": "qwen2moe"},  # QKV biases, weights not renormalised, a sigmoid-gated shared expert
    "deepseek": {"arch": "deepseek"},  # a leading dense layer, then experts (weights scaled) and 2 shared experts as one FFN
    "gemma": {"arch": "gemma"},
    "olmo2": {"arch": "olmo2"},
    "olmo2-swa": {"arch": "olmo2", "sliding_window": 8, "rope_yarn": (4.0, 16)},  # OLMo 3: window layers' rope unscaled
    "olmoe": {"arch": "olmoe"},
    "exaone": {"arch": "exaone"},
    "exaone-rope-freqs": {"arch": "exaone", "rope_freqs": True},  # EXAONE 3.5's Llama 3 rope factors
    "lfm2": {"arch": "lfm2"},
    "lfm2moe": {"arch": "lfm2moe"},
    "gpt-oss": {"arch": "gpt-oss"},  # sink logits, biases, alternating windows, YaRN, clamped-SwiGLU experts (tinygptoss.py)
    "gpt-oss-mxfp4": {"arch": "gpt-oss", "qtype": Q.MXFP4},  # its experts in MXFP4, as the published files
    "phi2": {"arch": "phi2"},  # fused QKV with its bias, as llama.cpp's converter writes Phi-2
    "phi2-split-qkv": {"arch": "phi2", "split_qkv": True},  # q, k, v and their biases apart
    "stablelm": {"arch": "stablelm", "split_qkv": True},  # QKV biases, as StableLM 2 1.6B
    "stablelm-qk-norm": {"arch": "stablelm", "split_qkv": True, "qk_norm": True},  # per-head QK LayerNorms and a parallel block, as StableLM 2 12B
    "ernie4_5": {"arch": "ernie4_5"},  # a tied output head, as ERNIE-4.5-0.3B
    "exaone4": {"arch": "exaone4", "sliding_window": 8},  # 4 layers: the window ignored, rope in every layer, as llama.cpp runs the 1.2B
    "exaone4-swa": {"arch": "exaone4", "sliding_window": 8, "n_layer": 64},  # the 32B's depth: 3 window layers then 1 global without rope
    "cohere2": {"arch": "cohere2"},  # parallel blocks, windows on 3 layers of 4 (only they rotate), logits times 0.25
    # Cohere2 MoE (tiny_cohere2moe.py): Command R7B's parallel block, a leading dense layer that rotates though global,
    # sigmoid-routed experts averaged with a shared one, LayerNorms, an MTP block not run; "rms": RMSNorms, softmax, no shared
    "cohere2moe": {"arch": "cohere2moe"},
    "cohere2moe-rms": {"arch": "cohere2moe", "variant": "rms"},
    # MiniMax-01 (tiny_minimax_01.py): lightning attention (a decay per head and layer) among softmax layers with partial
    # rope, the normed stream as the residual times residual_scale, softmax experts; "array": attention.recurrent_layers
    "minimax-01": {"arch": "minimax-01"},
    "minimax-01-array": {"arch": "minimax-01", "variant": "array"},
    "arcee": {"arch": "arcee"},  # squared-ReLU FFN without a gate, a separate output head
    "mamba2": {"arch": "mamba2"},  # Mamba-2 mixers only, two groups, a tied output head
    "granitehybrid": {"arch": "granitehybrid"},  # Granite 4.0-H-Tiny/Small: Mamba-2 and NoPE attention, experts and a shared one
    "granitehybrid-dense-rope": {"arch": "granitehybrid", "n_expert": 0, "ssm_rope": True},  # H-Micro's dense FFN; rope (Bamba's)
    # Granite SWA (tiny_granite_swa.py): Granite's multipliers, sinks, windows and rope by the file's arrays; "-moe": fused
    # QKV and gate-up experts with biases, a fused shared expert
    "granite_swa": {"arch": "granite_swa"},
    "granite_swa-moe": {"arch": "granite_swa", "variant": "moe"},
    # Granite Switch (tiny_graniteswitch.py): Granite's multipliers, fused QKV, 3 LoRA adapters on every projection that
    # the prompt's control tokens switch on (slots 0, 1, then 2: the router's mean), each control token embedded as another
    "graniteswitch": {"arch": "graniteswitch"},
    "falcon-h1": {"arch": "falcon-h1"},  # attention and Mamba-2 side by side, heads of key_length, no ssm_norm (_write_tiny_ssm_hybrid)
    "nemotron_h": {"arch": "nemotron_h"},  # Mamba-2, NoPE attention and squared-ReLU FFN layers of two widths
    "gemma3n": {"arch": "gemma3n"},  # AltUp, LAuReL, per-layer inputs, shared K/V, sparse FFN gates (_write_tiny_gemma3n)
    # Gemma 4 (tiny_gemma4.py): heads of two widths, proportional rope, V normed, layer output scales, soft-capped logits
    "gemma4": {"arch": "gemma4"},  # E2B/E4B: per-layer inputs, shared K/V, double-wide FFNs in the sharing layers
    "gemma4_moe": {"arch": "gemma4", "variant": "moe"},  # 26B-A4B: a dense MLP beside GELU experts, a global layer's V its K
    # Gated DeltaNet hybrids (_write_tiny_qwen35): DeltaNet and gated attention by turns, 2 key heads over 4 value heads
    "qwen35": {"arch": "qwen35"},  # interleaved multimodal rope whose sections leave a pair unturned, a dense FFN
    "qwen35moe": {"arch": "qwen35moe"},  # the same with experts and a sigmoid-gated shared expert, no feed_forward_length
    "qwen3next": {"arch": "qwen3next"},  # neox rope, grouped ssm_in and ssm_ba (older converters), experts
    "qwen3next-split-qkv": {"arch": "qwen3next", "split_qkv": True},  # attn_qkv and attn_gate in place of ssm_in
    # Ministral 3: YaRN (its magnitude cancelled) and Llama 4's query temperature, which grows every 8 positions here
    "mistral3": {"arch": "mistral3"},
    "mistral3-mscale": {"arch": "mistral3", "yarn_log_mul": 0.5},  # YaRN's magnitude mscale(4, 1) / mscale(4, 0.5), not 1
    "ernie4_5-moe": {"arch": "ernie4_5-moe"},  # a leading dense layer, experts chosen with exp_probs_b, a plain shared expert
    # DeepSeek-V2/V3 (_write_tiny_deepseek2): multi-head latent attention, YaRN with DeepSeek's mscale, a leading dense
    # layer, then experts and 2 shared experts as one FFN
    "deepseek2": {"arch": "deepseek2"},  # V2-Lite's layout: no query LoRA, attn_kv_b, softmax router, mscale_all_dim 0.707
    "deepseek2-v3": {"arch": "deepseek2", "mla": "v3"},  # query LoRA, split attn_k_b/attn_v_b, sigmoid router, groups
    # Hunyuan dense: per-head QK-norm after the rope, NTK-alpha (rope.scaling.alpha, Hunyuan's 1000) on the rope base
    "hunyuan-dense": {"arch": "hunyuan-dense", "rope_alpha": 1000.0},
    # MiniCPM: muP's multipliers as the converter states them (scale_emb 12, scale_depth 1.4, dim_model_base 16)
    "minicpm": {"arch": "minicpm"},
    "minicpm-defaults": {"arch": "minicpm", "mup_defaults": True},  # an older file: no multipliers stated
    "minicpm4-longrope": {"arch": "minicpm", "rope_freqs": True},  # LongRoPE's long factors (context 64, original 32)
    # BitNet b1.58 (tiny_bitnet.py): ternary projections, attn_sub_norm and ffn_sub_norm, SiLU (llama.cpp 0.3.36's), tied
    "bitnet": {"arch": "bitnet"},
    "bitnet-scales": {"arch": "bitnet", "scales": True},  # a [1] scale tensor beside every projection
    "bitnet-tq2_0": {"arch": "bitnet", "qtype": Q.TQ2_0},  # the same weights as TQ2_0 (llama.cpp: int8 activations)
    # Llama kin (tiny_llama_kin.py): Seed-OSS's QKV biases, wide heads, neox rope, post_attention_norm before the FFN
    "seed_oss": {"arch": "seed_oss"},
    "apertus": {"arch": "apertus", "rope_freqs": True},  # per-head QK-norm, xIELU per layer, Llama 3's rope factors
    "command-r": {"arch": "command-r"},  # Command R7B's parallel block, no windows, every layer rotating, logits times 1/16
    "command-r-qk-norm": {"arch": "command-r", "qk_norm": True, "n_layer": 64},  # Command R+: per-head QK LayerNorms (64 layers)
    # GPT-2's family (tiny_gpt2.py): LayerNorms with biases, biased projections, an ungated GELU FFN
    "gpt2": {"arch": "gpt2"},  # learned positions, fused QKV, the output head tied, as GPT-2 and DistilGPT2
    "gpt2-output-head": {"arch": "gpt2", "output_head": True},  # an output.weight of its own
    "starcoder2": {"arch": "starcoder2"},  # full-head neox rope, q/k/v apart, GQA, the head tied, as StarCoder2-3B
    "starcoder2-swa": {"arch": "starcoder2", "sliding_window": 8, "output_head": True},  # a window stated (llama.cpp ignores it)
    "gptneox": {"arch": "gptneox"},  # parallel residual, a quarter of each head turned, as Pythia
    "gptneox-sequential": {"arch": "gptneox", "parallel_residual": False},  # use_parallel_residual false: GPT-2's block
    # StarCoder v1, GPT-BigCode (tiny_classic.py)
    "starcoder": {"arch": "starcoder"},  # multi-query, learned positions, the head tied, as SantaCoder and tiny_starcoder
    "starcoder-output-head": {"arch": "starcoder", "output_head": True},  # an output.weight of its own, as StarCoder-15B
    "bloom": {"arch": "bloom"},  # ALiBi, the embeddings' LayerNorm, fused QKV, the head tied
    "bloom-output-head": {"arch": "bloom", "output_head": True},  # an output.weight of its own (the converter's copy)
    "mpt": {"arch": "mpt"},  # ALiBi (max bias 8), no biases, the head tied, as MPT-7B
    "mpt-clip-qkv": {"arch": "mpt", "clamp_kqv": 0.5},  # clip_qkv stated, as MPT-7B-8k
    # GLM-4-0414 (tiny_glm4.py): post-attention and post-FFN norms, fused gate+up, QKV biases, half-head rope (pairs)
    "glm4": {"arch": "glm4"},
    # GLM-4.5/4.6: per-head QK norm, neox half-head rope, a leading dense layer, sigmoid-routed experts with exp_probs_b,
    # renormalised and scaled, a shared expert
    "glm4moe": {"arch": "glm4moe", "qk_norm": True},
    "glm4moe-nextn": {"arch": "glm4moe", "nextn": True},  # GLM-4.5-Air: no QK norm, a NextN layer loaded but not run
    "glm4moe-mrope": {"arch": "glm4moe", "variant": "mrope"},  # GLM-4.5V's text: multimodal rope sections (tiny_vision_glm45v.py)
    # Llama 4 (tiny_llama4.py): 3 chunked rope layers with Q/K L2-normed and 1 NoPE layer, dense and MoE layers by turns
    # (one expert a token, its sigmoid weight on its input, and a shared expert), Llama 3's rope factors
    "llama4": {"arch": "llama4"},  # Scout's 16 experts
    "llama4-128e": {"arch": "llama4", "n_expert": 128},  # Maverick's 128 experts: no QK L2 norm
    # RWKV-7 (tiny_rwkv7.py): token shift, WKV-7 with its LoRAs, value residual, group norm, squared-ReLU channel mix
    "rwkv7": {"arch": "rwkv7"},
    # RWKV-6 (tiny_rwkv6.py): ddlerp token shift, data-dependent decay, WKV-6 with its bonus, group norm, SiLU gate, the
    # channel mix's receptance, the residual halved every 2 layers; "-unfused": the five mus apart (older files)
    "rwkv6": {"arch": "rwkv6"},
    "rwkv6-unfused": {"arch": "rwkv6", "lerp_fused": False},
    # ARWKV-7 (tiny_arwkv7.py): RWKV-7's time mix (one token shift) in a Qwen 2.5 trunk, RMSNorms, SwiGLU FFN; the gate and
    # group norm (wkv_has_gate); "-nogate": five mus, neither
    "arwkv7": {"arch": "arwkv7"},
    "arwkv7-nogate": {"arch": "arwkv7", "variant": "nogate"},
    # RWKV6-Qwen2 (tiny_rwkv6qwen2.py): RWKV-6's ddlerp and decay, gated linear attention (no bonus, no group norm), a
    # sigmoid gate, r/k/v biases, 2 K/V heads for 4 (QRWKV6's layout), in a Qwen 2 trunk; "-mha": 4 K/V heads, no
    # biases, an output-norm bias
    "rwkv6qwen2": {"arch": "rwkv6qwen2"},
    "rwkv6qwen2-mha": {"arch": "rwkv6qwen2", "variant": "mha"},
    # SmallThinker (tiny_smallthinker.py): the router reads the layer's input, ReGLU experts renormalised. 21B's layout: a
    # sigmoid router, no window; 4B's: a softmax router, 4096 windows on 3 layers of 4 (the first global, NoPE every 4th)
    "smallthinker": {"arch": "smallthinker"},
    "smallthinker-swa": {"arch": "smallthinker", "sliding_window": 4096},
    "smallthinker-swa-pattern": {"arch": "smallthinker", "sliding_window": 4096, "swa_pattern": 2},  # windows by 2, rope base 1000
    # Ling 2.0 (tiny_bailingmoe2.py): fused QKV, per-head QK norm, half-head neox rope, a leading dense layer, sigmoid-routed
    # experts with exp_probs_b in groups, renormalised and scaled, a shared expert; "-nextn": a NextN layer, no groups
    "bailingmoe2": {"arch": "bailingmoe2"},
    "bailingmoe2-nextn": {"arch": "bailingmoe2", "nextn": True, "seed": 1},  # (seed 0's last token ties two experts' scores)
    # tiny_small_lms.py: InternLM2 (the Llama layout, q/k/v split by the converter), OLMo v1 (non-parametric LayerNorms),
    # Nemotron (LayerNorms with biases, squared ReLU, partial rope, wide heads), OpenELM (per-layer heads and FFN widths)
    "internlm2": {"arch": "internlm2"},
    "internlm2-fused-qkv": {"arch": "internlm2", "fused_qkv": True},  # one attn_qkv (llama.cpp's loader takes it too)
    "olmo": {"arch": "olmo"},  # OLMo-1B: the output head tied, no clip
    "olmo-clamp": {"arch": "olmo", "clamp_kqv": 1.0, "output_head": True},  # OLMo 1.7-7B: clip_qkv, a separate output head
    "nemotron": {"arch": "nemotron"},  # Nemotron-Mini-4B, Minitron: no biases beyond the LayerNorms'
    "nemotron-biases": {"arch": "nemotron", "biases": True},  # the optional attn_output, ffn_up and ffn_down biases
    "openelm": {"arch": "openelm"},
    # tiny_vl_falcon_chatglm.py: the Qwen VL language models (text: multimodal rope at (p, p, p, 0)), Falcon, ChatGLM
    "qwen2vl": {"arch": "qwen2vl"},  # Qwen2-VL/2.5-VL: M-RoPE sections covering every pair (text: neox rope), QKV biases
    "qwen2vl-extra-section": {"arch": "qwen2vl", "variant": "extra-section"},  # an extra section: its pairs unturned
    "qwen3vl": {"arch": "qwen3vl"},  # interleaved M-RoPE leaving 2 pairs unturned (as the published sections), DeepStack 2
    "qwen3vlmoe": {"arch": "qwen3vlmoe"},  # the same over Qwen3-MoE's block: 4 experts, 2 a token
    "falcon": {"arch": "falcon"},  # Falcon-7B: one LayerNorm, multi-query, fused QKV, GELU MLP, parallel block
    "falcon-40b": {"arch": "falcon", "variant": "40b"},  # Falcon-40B/180B: attention's own attn_norm_2, 2 K/V groups, tied head
    "chatglm": {"arch": "chatglm"},  # ChatGLM3 / GLM-4-9B-chat: fused QKV with bias, half-head rope (pairs), fused gate+up
    # Mamba 1 (tiny_mamba.py): the selective scan with a state per channel, dt/B/C from the convolution's output
    "mamba": {"arch": "mamba"},  # mamba-130m ... 2.8b: the output head tied
    "mamba-falcon": {"arch": "mamba", "variant": "falcon"},  # Falcon-Mamba-7B: dt, B, C RMS-normed, an output head
    # MiniCPM3 (tiny_minicpm3.py): DeepSeek-V2's latent attention with a query LoRA, neox rope, muP's fixed multipliers,
    # LongRoPE's short factors (context 64 of 1024); "-long": its long ones (context 64 of 32)
    "minicpm3": {"arch": "minicpm3"},
    "minicpm3-long": {"arch": "minicpm3", "variant": "long"},
    # AFMoE, Arcee's Trinity (tiny_afmoe.py): embeddings times sqrt(n_embd), sandwich norms, sigmoid-gated attention,
    # per-head QK norm, windows on 3 layers of 4 (the 4th global, NoPE), a leading dense layer, sigmoid-routed experts
    # with exp_probs_b, renormalised and scaled, a shared expert
    "afmoe": {"arch": "afmoe"},
    # Muse Glimmer (tiny_muse_glimmer.py): AFMoE's attention (sandwich norms, gate, per-head QK norm), the input RMS-normed,
    # post-norms at 1e-8, rope (pairs) and windows on the layers the file's pattern array says, a dense FFN, logit scale, softcap
    "muse-glimmer": {"arch": "muse-glimmer"},
    # Laguna (tiny_laguna.py): softplus attention gates (one a head, one a value), per-layer heads, per-head QK norm, the
    # global layer YaRN-rotated over part of its heads, the window layers plainly at their own base, sigmoid-routed experts
    "laguna": {"arch": "laguna"},
    # Hy3 (tiny_hy_v3.py): per-head QK norm before the rope, a leading dense layer, sigmoid-routed experts with the
    # suffixless exp_probs_b, renormalised and scaled, a shared expert; an MTP block past the trunk (not run)
    "hy_v3": {"arch": "hy_v3", "seed": 1},  # (seed 0's logits all but tie two tokens at one position)
    # HY V4 (tiny_hy_v4.py): deepseek2's MLA with 4 hyper-connection streams, a gate a value of the heads' outputs, sinks;
    # a leading dense layer, sigmoid-routed experts (exp_probs_b, renormalised, scaled, clamped SwiGLU) and a shared one; DSA (dense)
    "hy_v4": {"arch": "hy_v4", "seed": 2},  # (seed 0's top two logits 2e-4 apart at one position; seed 2's 1.9e-3)
    # Maple (tiny_maple.py): per-head QK norm, rope (partial) and windows on the layers the file's pattern array says, the
    # window layers' own base, softmax-routed experts renormalised, their SwiGLU clamped gate first (one limit a layer)
    "maple": {"arch": "maple"},
    # Spark-X2.5 (tiny_spark2_5.py): fused QKV, per-layer heads, rope everywhere (the window layers' own base and partial
    # width), windows on the layers the file's pattern array says, a sigmoid gate a head, a GELU-gated FFN, a tied head
    "spark2_5": {"arch": "spark2_5"},
    # HRM-Text (tiny_hrm_text.py): a low and a high stack of 2 layers run in 2 high cycles of 2 low ones (12 cache slots over
    # 4 blocks), z_l_init, embedding scale, weightless norms, a gate as wide as the heads, no output norm but the last stack's
    "hrm_text": {"arch": "hrm_text"},
    # EXAONE MoE, K-EXAONE (tiny_exaone_moe.py): pre-norms, per-head QK norm, windows on the layers the file's pattern says
    # (only they rotate, with Llama 3's factors), a leading dense layer, sigmoid-routed experts with exp_probs_b, a shared one
    "exaone-moe": {"arch": "exaone-moe", "seed": 1},  # (seed 0's logits tie two tokens at one position)
    # MiniMax-M2, MiMo-V2-Flash, Step-3.5-Flash, Mistral Small 4 (tiny_moe3.py): QK-norm over all heads, sigmoid routing;
    # sinks, windows, per-layer KV heads, value scale; gated attention, per-layer heads and rope; MLA as deepseek2
    "minimax-m2": {"arch": "minimax-m2"},
    "minimax-m3": {"arch": "minimax-m3"},  # MiniMax-M3 (tiny_minimax_m3.py): per-head QK norm, swigluoai experts, MSA's dense path
    "mimo2": {"arch": "mimo2"},
    "step35": {"arch": "step35"},
    "mistral4": {"arch": "mistral4"},
    "pangu-embedded": {"arch": "pangu-embedded"},  # openPangu-Embedded (tiny_pangu.py): Q/K/V and attn_output biases, neox rope
    # tiny_moe2.py: Phi-3.5-MoE (norms and projections with biases, LongRoPE's short factors; "-long": its long ones), Ling
    # v1 (softmax-routed experts renormalised, 2 shared; "-scaled": 1 shared, as the router gave them, times 2.5), Hunyuan-A13B
    # (QK norm after the rope, a shared expert), dots.llm1 (a dense layer, sigmoid-routed experts with exp_probs_b in groups,
    # a shared one), GroveMoE (chunk experts beside the experts); RND1 (non-causal) is held to llama.cpp by test_moe2.py
    "phimoe": {"arch": "phimoe"},
    "phimoe-long": {"arch": "phimoe", "variant": "long"},
    "bailingmoe": {"arch": "bailingmoe"},
    "bailingmoe-scaled": {"arch": "bailingmoe", "variant": "scaled"},
    "hunyuan-moe": {"arch": "hunyuan-moe"},
    "dots1": {"arch": "dots1"},
    "grovemoe": {"arch": "grovemoe"},
    # tiny_hybrids2.py: Jamba (Mamba 1 with weighted dt/B/C norms, rope-less attention, experts on odd layers), PLaMo 2
    # (Mamba-2-like layers with per-head z/x rows, sandwich norms, per-head QK-norm), Deci (per-layer heads and FFN widths,
    # layers with no attention, a linear attention replacement, no FFN)
    "jamba": {"arch": "jamba"},
    "jamba-dense": {"arch": "jamba", "variant": "dense"},  # no experts (Mini-Jamba's layout), an output head of its own
    "plamo2": {"arch": "plamo2"},  # attention layers 0 and 2, Mamba 1 and 3, the output head tied
    "deci": {"arch": "deci"},  # Nemotron-51B/49B/253B's blocks: per-layer heads and FFN widths, a layer of each kind
    # Llama kin 2 (tiny_llama_likes2.py): Qwen 1's fused QKV with bias and halved FFN width; Baichuan 7B's rope (32 layers)
    # and 13B's ALiBi (40 layers, 5 heads); Orion's LayerNorms; XVERSE; PLaMo 3's sandwich norms, QK-norm, fused QKV and
    # gate+up, windows (7 of 8 layers) with a local rope base, and without; Maincoder's QK-norm after the rope; Jais-2's
    # LayerNorms, biases everywhere and squared-ReLU FFN
    "qwen": {"arch": "qwen"},
    "baichuan": {"arch": "baichuan"},
    "baichuan-13b": {"arch": "baichuan", "variant": "13b"},
    "orion": {"arch": "orion"},
    "xverse": {"arch": "xverse"},
    "plamo3": {"arch": "plamo3"},
    "plamo3-full": {"arch": "plamo3", "variant": "full"},
    "maincoder": {"arch": "maincoder"},
    "jais2": {"arch": "jais2"},
    # tiny_moe4.py: DBRX (LayerNorms without biases, fused QKV clipped, 16 experts 4 a token), Arctic (a dense FFN beside
    # experts reading the layer's input), Grok (sandwich norms, GELU experts, soft caps and multipliers; Grok-2 stated with a
    # dense FFN, Grok-1's defaults), Nemotron 3 Nano (Mamba-2, attention and sigmoid-routed squared-ReLU experts with a
    # shared one; "-latent": the experts in a latent space)
    "dbrx": {"arch": "dbrx"},
    "arctic": {"arch": "arctic"},
    "grok": {"arch": "grok"},
    "grok1": {"arch": "grok", "variant": "grok1"},
    "nemotron_h_moe": {"arch": "nemotron_h_moe"},
    "nemotron_h_moe-latent": {"arch": "nemotron_h_moe", "variant": "latent"},
    # tiny_classic2.py: Jais (ALiBi over 5 heads, muP's 1/head_dim scores, biased SwiGLU), CodeShell (GPT-2's block with
    # neox rope and GQA), Refact (Llama with ALiBi, multi-query), PLM (latent attention without a query LoRA, squared ReLU),
    "jais": {"arch": "jais"},
    "codeshell": {"arch": "codeshell"},
    "refact": {"arch": "refact"},
    "plm": {"arch": "plm"},
    # PLaMo v1 (Llama's parts in a parallel block), Chameleon (per-head QK LayerNorms with biases, image tokens suppressed;
    # "-swin": Chameleon-30B's norms after attention and the FFN)
    "plamo": {"arch": "plamo"},
    "chameleon": {"arch": "chameleon"},
    "chameleon-swin": {"arch": "chameleon", "variant": "swin"},
    # Kimi Linear (tiny_kimi_linear.py): KDA layers (short convolutions, per-channel decay, sigmoid output gate) among
    # rope-less MLA layers, a leading dense layer, sigmoid-routed experts with exp_probs_b and a shared one
    "kimi-linear": {"arch": "kimi-linear"},
    # Ling 3 (tiny_bailingmoe3.py): Kimi Linear's shape with full-rank safe KDA gates, gated and roped MLA (a query LoRA;
    # "-mrope": the VL files' rope sections, attn_q), clamped SwiGLUs, a wider shared expert, an MTP layer left out
    "bailingmoe3": {"arch": "bailingmoe3"},
    "bailingmoe3-mrope": {"arch": "bailingmoe3", "variant": "mrope", "seed": 1},
    # Kimi K3 (tiny_kimi_k3.py): Kimi Linear's layers with cross-layer residual attention, latent experts, situ, a per-channel
    # MLA output gate, a full-rank KDA output gate and the bounded decay
    "kimi-k3": {"arch": "kimi-k3", "seed": 1},
    # GLM-5.3-Flash (tiny_glm5_next.py): Kimi Linear's KDA (the decay bounded) among rope-less MLA layers, 4 mHC streams
    # (Sinkhorn-mixed), the k-pool DSA indexer (dense: top_k past the prompt), sigmoid experts clamped gate first, a shared one
    "glm5-next": {"arch": "glm5-next"},
    # text sides of VL/OCR models (tiny_text_sides.py): CogVLM (fused QKV, the visual expert's weights unread), DeepSeek-OCR
    # (plain attention in DeepSeek-V2's trunk), GLM-5 (MLA, sigmoid router unstated, NextN; the DSA indexer's top_k past the
    # prompt), HunyuanOCR (QK-norm after an M-RoPE with an unturned fourth section; "-plain": no sections), PaddleOCR-VL
    "cogvlm": {"arch": "cogvlm"},
    "deepseek2-ocr": {"arch": "deepseek2-ocr"},
    "glm-dsa": {"arch": "glm-dsa"},
    "hunyuan_vl": {"arch": "hunyuan_vl"},
    "hunyuan_vl-plain": {"arch": "hunyuan_vl", "variant": "plain"},
    "paddleocr": {"arch": "paddleocr"},
    "dots3note": {"arch": "dots3note"},  # dots.note (tiny_dots3note.py): glm-dsa's MLA, window layers of their own latent, heads and rope base, k_norm, a head gate
    "deepseek32": {"arch": "deepseek32"},  # DeepSeek-V3.2 (tiny_deepseek32.py): V3's MLA, YaRN and grouped sigmoid experts, the DSA indexer (top_k past the prompt), an MTP layer
    "mellum": {"arch": "mellum"},  # Mellum 2 (tiny_mellum.py): per-head QK norm, softmax experts in every layer, windows by the file's array, YaRN on the global layers
    # Nanbeige (tiny_nanbeige.py): Llama's block with rope_freqs and a tied head, 3 layers run twice over, output_norm between
    # the loops ("-skip": skip_loop_final_norm, none), an attention.scale unread
    "nanbeige": {"arch": "nanbeige"},
    "nanbeige-skip": {"arch": "nanbeige", "variant": "skip"},
    # Talkie (tiny_talkie.py): weightless norms, per-head Q gains after the rope, attention/FFN output gains, the normed
    # embeddings added to every layer's output (its own scale), logit scale
    "talkie": {"arch": "talkie"},
}


def _add_byte_vocab(w: GGUFWriter, extra: tuple[str, ...] = ()) -> None:
    """The byte-level vocabulary's metadata (byte_vocab; ``extra`` control tokens after it), <|endoftext|> as BOS and
    EOS, no BOS added."""
    toks, merges, types = byte_vocab()
    toks, types = toks + list(extra), types + [3] * len(extra)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(toks) - 1 - len(extra))
    w.add_bos_token_id(len(toks) - 1 - len(extra))
    w.add_add_bos_token(False)


def _file_type(qtype: int) -> int:
    """general.file_type as llama.cpp's quantizer names a file of ``qtype`` matrices."""
    return int(getattr(LlamaFileType, f"MOSTLY_{Q(qtype).name}", LlamaFileType.ALL_F32))


def _random_tensors(w: GGUFWriter, rng: np.random.Generator, qtype: int) -> tuple[Callable[..., None], Callable[..., None]]:
    """A tiny model's tensor writers: ``mat(name, rows, cols, scale=0.1, f32=False)``, a matrix ~ N(0, scale²)
    stored as ``qtype`` (float32 with ``f32``), and ``vec(name, n, base=1.0, scale=0.1)``, a float32 vector
    ~ base + N(0, scale²); both draw from ``rng`` in call order, so a writer's bytes follow from its seed."""

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qtype == Q.F32 or f32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    return mat, vec


def _random_tensors_dropping(w: GGUFWriter, rng: np.random.Generator, qtype: int,
                             drop: tuple[str, ...]) -> tuple[Callable[..., None], ...]:  # fmt: skip
    """:func:`_random_tensors`' ``mat`` and ``vec`` and ``tensor3(name, shape, scale=0.1)`` (an N-d tensor stored as
    ``qtype``), which leave out the tensors named in ``drop`` but draw their numbers all the same, so that the others
    do not move (the tests of a missing tensor's error)."""
    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        if name in drop:
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale, f32)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    def tensor3(name: str, shape: tuple[int, ...], scale: float = 0.1) -> None:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    return mat, vec, tensor3


def _start_writer(path: Path, arch: str, n_embd: int, n_layer: int, n_ff: int, n_head: int | list[int], n_head_kv: int,
                  head_dim: int) -> GGUFWriter:  # fmt: skip
    """A writer of a tiny ``arch`` model at ``path`` with the keys a GQA model's converter writes first, in its order:
    the name ("tiny-" and ``arch``, "-" for "_"), a context of 1024, the widths, ``n_layer`` blocks, the heads
    (``n_head`` one count or one a layer) and the key and value lengths (both ``head_dim``)."""
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-" + arch.replace("_", "-"))
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    return w


def _add_v3_expert_keys(w: GGUFWriter, n_expert: int, n_used: int, n_ff_exp: int, n_shared: int) -> None:
    """DeepSeek-V3's expert keys as its converters write them: one leading dense layer, ``n_expert`` experts
    (``n_used`` a token, ``n_ff_exp`` wide) beside ``n_shared`` shared ones, a sigmoid router renormalised, times 2.5."""
    w.add_leading_dense_block_count(1)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_expert_weights_scale(2.5)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)


def _write_qk_norm_attention(mat: Callable[..., None], vec: Callable[..., None], b: str, n_embd: int, n_head: int, n_head_kv: int,
                             head_dim: int) -> None:  # fmt: skip
    """Layer ``b``'s pre-norm attention with per-head QK norms, in the converters' order: ``attn_norm``, q/k/v apart,
    ``attn_q_norm``/``attn_k_norm``, ``attn_output``, then ``ffn_norm`` (through ``_random_tensors``' ``mat``/``vec``)."""
    vec(b + "attn_norm.weight", n_embd)
    mat(b + "attn_q.weight", n_head * head_dim, n_embd)
    mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
    mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
    # (norms of 0.5 keep the QK-normed scores about 1, where both runtimes' fp16 K stays well under 1e-3: tiny_afmoe.py)
    vec(b + "attn_q_norm.weight", head_dim, 0.5)
    vec(b + "attn_k_norm.weight", head_dim, 0.5)
    mat(b + "attn_output.weight", n_embd, n_head * head_dim)
    vec(b + "ffn_norm.weight", n_embd)


def _write_swiglu(mat: Callable[..., None], b: str, n_embd: int, n_ff: int, kind: str = "") -> None:
    """Layer ``b``'s SwiGLU FFN ``n_ff`` wide: ``ffn_gate``, ``ffn_up``, ``ffn_down``; ``kind`` "_shexp": the shared
    expert's."""
    mat(b + f"ffn_gate{kind}.weight", n_ff, n_embd)
    mat(b + f"ffn_up{kind}.weight", n_ff, n_embd)
    mat(b + f"ffn_down{kind}.weight", n_embd, n_ff)


def _write_experts(tensor3: Callable[..., None], b: str, n_embd: int, n_expert: int, n_ff_exp: int) -> None:
    """Layer ``b``'s routed experts stacked, ``ffn_gate_exps``, ``ffn_up_exps``, ``ffn_down_exps`` (through
    ``_random_tensors_dropping``' ``tensor3``: ~ N(0, 0.1²), stored as the matrices' type)."""
    tensor3(b + "ffn_gate_exps.weight", (n_expert, n_ff_exp, n_embd))
    tensor3(b + "ffn_up_exps.weight", (n_expert, n_ff_exp, n_embd))
    tensor3(b + "ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp))


def _write_moe(mat: Callable[..., None], vec: Callable[..., None], tensor3: Callable[..., None], b: str, n_embd: int, n_expert: int,
               n_ff_exp: int, probs_b: str = "", probs_b_scale: float = 0.5, n_ff_shexp: int = 0) -> None:  # fmt: skip
    """Layer ``b``'s mixture of experts: the router (float32, as in real files, ~ N(0, 0.5²)), the selection bias
    named ``probs_b`` where given (~ N(0, ``probs_b_scale``²)), the stacked experts (``_write_experts``) and, where
    ``n_ff_shexp``, a shared expert that wide."""
    mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5, f32=True)
    if probs_b:
        vec(b + probs_b, n_expert, 0.0, probs_b_scale)
    _write_experts(tensor3, b, n_embd, n_expert, n_ff_exp)
    if n_ff_shexp:
        _write_swiglu(mat, b, n_embd, n_ff_shexp, "_shexp")


def _write_nextn(mat: Callable[..., None], vec: Callable[..., None], b: str, n_embd: int) -> None:
    """A multi-token-prediction block's NextN projections (which llama.cpp loads and its trunk never runs)."""
    mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
    vec(b + "nextn.enorm.weight", n_embd)
    vec(b + "nextn.hnorm.weight", n_embd)
    vec(b + "nextn.shared_head_norm.weight", n_embd)


def _write_indexer(mat: Callable[..., None], vec: Callable[..., None], b: str, n_embd: int, q_rank: int, n_head: int,
                   key_length: int) -> None:  # fmt: skip
    """Layer ``b``'s lightning indexer (DeepSeek-V3.2's) in its converter's order: the keys' LayerNorm, the head
    weights, the key and query projections (the queries from the ``q_rank`` latent)."""
    vec(b + "indexer.k_norm.weight", key_length)
    vec(b + "indexer.k_norm.bias", key_length, 0.0)
    mat(b + "indexer.proj.weight", n_head, n_embd)
    mat(b + "indexer.attn_k.weight", key_length, n_embd)
    mat(b + "indexer.attn_q_b.weight", n_head * key_length, q_rank)


def _finish(w: GGUFWriter, path: Path) -> Path:
    """Header, metadata and tensors out to ``path``."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: the architectures whose tiny model tiny_<arch>.py writes alone: (that module, whether its writer takes ``variant``)
OWN_WRITERS: dict[str, tuple[str, bool]] = {
    "glm5-next": ("tiny_glm5_next", False),
    "talkie": ("tiny_talkie", False),
    "nanbeige": ("tiny_nanbeige", True),
    "graniteswitch": ("tiny_graniteswitch", False),
    "granite_swa": ("tiny_granite_swa", True),
    "mellum": ("tiny_mellum", False),
    "deepseek32": ("tiny_deepseek32", False),
    "minimax-01": ("tiny_minimax_01", True),
    "cohere2moe": ("tiny_cohere2moe", True),
    "hrm_text": ("tiny_hrm_text", False),
    "spark2_5": ("tiny_spark2_5", False),
    "maple": ("tiny_maple", False),
    "hy_v4": ("tiny_hy_v4", False),
    "hy_v3": ("tiny_hy_v3", False),
    "laguna": ("tiny_laguna", False),
    "kimi-linear": ("tiny_kimi_linear", False),
    "kimi-k3": ("tiny_kimi_k3", False),
    "bailingmoe3": ("tiny_bailingmoe3", True),
    "dots3note": ("tiny_dots3note", False),
    "minicpm3": ("tiny_minicpm3", True),
    "pangu-embedded": ("tiny_pangu", False),
    "gemma4": ("tiny_gemma4", True),
    "minimax-m3": ("tiny_minimax_m3", False),
    "exaone-moe": ("tiny_exaone_moe", False),
    "muse-glimmer": ("tiny_muse_glimmer", False),
    "afmoe": ("tiny_afmoe", False),
    "rwkv7": ("tiny_rwkv7", False),
}


def write_tiny_model(
    path: Path, arch: str = "llama", qtype: int = Q.F32, seed: int = 0, sliding_window: int | None = None, rope_freqs: bool = False,
    chat_template: str | None = None, n_expert: int | None = None, extra_tensor: tuple[str, int, int] | None = None,
    rope_yarn: tuple[float, int] | None = None, split_qkv: bool = False, qk_norm: bool = False, shared_expert: bool = False,
    n_layer: int | None = None, ssm_rope: bool = False, yarn_log_mul: float = 1.0,
    mla: str = "lite",
    rope_alpha: float = 0.0, mup_defaults: bool = False,
    parallel_residual: bool | None = True, output_head: bool = False,
    nextn: bool = False,
    scales: bool = False,
    swa_pattern: int = 0,
    lerp_fused: bool = True,
    fused_qkv: bool = False, clamp_kqv: float = 0.0, biases: bool = False,
    variant: str = "",
) -> Path:  # fmt: skip
    """A random ``arch`` model; matrices stored as ``qtype`` (F32, F16, Q8_0, Q4_0...).  ``rope_freqs``:
    with Llama 3.1's per-frequency rope factors (``rope_freqs.weight``, 1 to 8 from high to low), or
    for phi3 its long and short sets.  ``sliding_window``: gemma2's and gemma3's window (8 unless given); olmo2
    has one only where given (OLMo 3's layout).  ``rope_yarn``: YaRN rope scaling (factor, original context).
    ``split_qkv``, ``qk_norm``: phi2's and stablelm's variants (:func:`_write_tiny_layernorm`).  ``shared_expert``:
    granitemoe's shared expert (GraniteMoeShared); qwen2moe always has one, sigmoid-gated.  ``n_layer``: exaone4's
    depth where not ARCH_GEOMETRY's (:func:`_write_tiny_llama_variant`).  mamba2, granitehybrid: :func:`_write_tiny_ssm`
    (granitehybrid: experts unless ``n_expert`` is 0, ``ssm_rope`` its attention rotated).  qwen35, qwen35moe,
    qwen3next: :func:`_write_tiny_qwen35` (qwen3next with ``split_qkv``: attn_qkv and attn_gate, not ssm_in).
    mistral3, ernie4_5-moe: :func:`_write_tiny_mistral3_ernie_moe` (mistral3's ``yarn_log_mul``).  hunyuan-dense,
    minicpm: :func:`_write_tiny_hunyuan_minicpm` (``rope_alpha``; minicpm's ``mup_defaults``, and ``rope_freqs``: LongRoPE)."""
    if arch in OWN_WRITERS:  # (a writer of its own: tiny_<arch>.py's write_tiny_<arch>, with the variant where it takes one)
        module, takes_variant = OWN_WRITERS[arch]
        write = getattr(importlib.import_module(module), "write_" + module)
        return write(path, qtype, seed, variant) if takes_variant else write(path, qtype, seed)
    if arch == "glm4moe" and variant == "mrope":  # (tiny_vision_glm45v.py: GLM-4.5V's text, rope sections)
        from tiny_vision_glm45v import write_tiny_glm45v_arch

        return write_tiny_glm45v_arch(path, qtype, seed)
    if arch in ("cogvlm", "deepseek2-ocr", "glm-dsa", "hunyuan_vl", "paddleocr"):  # (tiny_text_sides.py: hunyuan_vl's ``variant``)
        from tiny_text_sides import write_tiny_text_side

        return write_tiny_text_side(path, arch, qtype, seed, variant)
    if arch in ("dbrx", "arctic", "grok", "nemotron_h_moe"):  # (tiny_moe4.py: its ``variant``)
        from tiny_moe4 import write_tiny_moe4

        return write_tiny_moe4(path, arch, qtype, seed, variant)
    if arch in ("qwen", "baichuan", "orion", "xverse", "plamo3", "maincoder", "jais2"):  # (tiny_llama_likes2.py: ``variant``)
        from tiny_llama_likes2 import write_tiny_llama_like2

        return write_tiny_llama_like2(path, arch, qtype, seed, variant)
    if arch in ("jais", "codeshell", "refact", "plm", "plamo", "chameleon"):  # (tiny_classic2.py: chameleon's ``variant``)
        from tiny_classic2 import write_tiny_classic2

        return write_tiny_classic2(path, arch, qtype, seed, variant)
    if arch in ("jamba", "plamo2", "deci"):  # (tiny_hybrids2.py: ``variant``)
        from tiny_hybrids2 import write_tiny_hybrid2

        return write_tiny_hybrid2(path, arch, qtype, seed, variant)
    if arch in ("phimoe", "bailingmoe", "hunyuan-moe", "dots1", "rnd1", "grovemoe"):  # (tiny_moe2.py: its ``variant``)
        from tiny_moe2 import write_tiny_moe2

        return write_tiny_moe2(path, arch, qtype, seed, variant)
    if arch == "mamba":  # (tiny_mamba.py; ``variant`` "falcon": Falcon-Mamba's dt/B/C norms)
        from tiny_mamba import write_tiny_mamba

        return write_tiny_mamba(path, qtype, seed, falcon=variant == "falcon")
    if arch in ("minimax-m2", "mimo2", "step35", "mistral4"):  # (tiny_moe3.py)
        from tiny_moe3 import write_tiny_moe3

        return write_tiny_moe3(path, arch, qtype, seed)
    if arch in ("qwen2vl", "qwen3vl", "qwen3vlmoe", "falcon", "chatglm"):  # (tiny_vl_falcon_chatglm.py: its ``variant``)
        from tiny_vl_falcon_chatglm import write_tiny_vl_falcon_chatglm

        return write_tiny_vl_falcon_chatglm(path, arch, qtype, seed, variant)
    if arch in ("internlm2", "olmo", "nemotron", "openelm"):  # (tiny_small_lms.py: internlm2's ``fused_qkv``, olmo's ``clamp_kqv``, nemotron's ``biases``)
        from tiny_small_lms import write_tiny_small_lm

        return write_tiny_small_lm(path, arch, qtype, seed, fused_qkv=fused_qkv, clamp_kqv=clamp_kqv, output_head=output_head, biases=biases)
    if arch in ("smallthinker", "bailingmoe2"):  # (tiny_smallthinker.py: ``sliding_window``, ``swa_pattern``; tiny_bailingmoe2.py: ``nextn``)
        from tiny_bailingmoe2 import write_tiny_bailingmoe2
        from tiny_smallthinker import write_tiny_smallthinker

        return write_tiny_smallthinker(path, qtype, seed, sliding_window, swa_pattern) if arch == "smallthinker" else write_tiny_bailingmoe2(path, qtype, seed, nextn)
    if arch in ("glm4", "glm4moe"):  # (tiny_glm4.py; glm4moe's ``qk_norm`` and ``nextn`` layer)
        from tiny_glm4 import write_tiny_glm4

        return write_tiny_glm4(path, arch, qtype, seed, qk_norm, nextn)
    if arch in ("starcoder", "bloom", "mpt"):  # (tiny_classic.py: ``output_head``, mpt's ``clamp_kqv``)
        from tiny_classic import write_tiny_classic

        return write_tiny_classic(path, arch, qtype, seed, output_head, clamp_kqv)
    if arch in ("gpt2", "starcoder2", "gptneox"):  # (tiny_gpt2.py: ``sliding_window``, ``parallel_residual``, ``output_head``)
        from tiny_gpt2 import write_tiny_gpt2_family

        return write_tiny_gpt2_family(path, arch, qtype, seed, sliding_window, parallel_residual, output_head)
    if arch in ("seed_oss", "apertus", "command-r"):  # (tiny_llama_kin.py: apertus's ``rope_freqs``, command-r's ``qk_norm``)
        from tiny_llama_kin import write_tiny_llama_kin

        return write_tiny_llama_kin(path, arch, qtype, seed, qk_norm, rope_freqs, n_layer)
    if arch == "llama4":  # (tiny_llama4.py: chunked and NoPE layers, interleaved experts; ``n_expert``, ``sliding_window``)
        from tiny_llama4 import write_tiny_llama4

        return write_tiny_llama4(path, qtype, seed, n_expert, sliding_window)
    if arch == "bitnet":  # (tiny_bitnet.py: ternary projections, sub-norms)
        from tiny_bitnet import write_tiny_bitnet

        return write_tiny_bitnet(path, qtype, seed, scales)
    if arch == "arwkv7":  # (tiny_arwkv7.py; ``variant`` "nogate": no gate, five mus, no group norm)
        from tiny_arwkv7 import write_tiny_arwkv7

        return write_tiny_arwkv7(path, qtype, seed, gate=variant != "nogate")
    if arch == "rwkv6qwen2":  # (tiny_rwkv6qwen2.py; ``variant`` "mha": no GQA, no r/k/v biases, an output-norm bias)
        from tiny_rwkv6qwen2 import write_tiny_rwkv6qwen2

        return write_tiny_rwkv6qwen2(path, qtype, seed, gqa=variant != "mha", bias=variant != "mha", output_norm_bias=variant == "mha")
    if arch == "rwkv6":  # (tiny_rwkv6.py; ``lerp_fused``: the token shift's five mus in one tensor)
        from tiny_rwkv6 import write_tiny_rwkv6

        return write_tiny_rwkv6(path, qtype, seed, lerp_fused)
    if arch == "deepseek2":  # (``mla``: :func:`_write_tiny_deepseek2`'s variant)
        return _write_tiny_deepseek2(path, qtype, seed, mla)
    if arch == "gemma3n":
        return _write_tiny_gemma3n(path, qtype, seed)
    if arch in ("qwen35", "qwen35moe", "qwen3next"):
        return _write_tiny_qwen35(path, arch, qtype, seed, split_qkv)
    if arch in ("mamba2", "granitehybrid"):
        return _write_tiny_ssm(path, arch, qtype, seed, n_expert=4 if n_expert is None else n_expert, rope=ssm_rope)
    if arch in ("falcon-h1", "nemotron_h"):
        return _write_tiny_ssm_hybrid(path, arch, qtype, seed)
    if arch in ("lfm2", "lfm2moe"):
        return _write_tiny_lfm2(path, qtype, seed, moe=arch == "lfm2moe")
    if arch == "gpt-oss":
        from tinygptoss import write_tiny_gptoss

        return write_tiny_gptoss(path, qtype, seed)
    if arch in ("phi2", "stablelm"):
        return _write_tiny_layernorm(path, arch, qtype, seed, split_qkv, qk_norm)
    if arch in ("mistral3", "ernie4_5-moe"):
        return _write_tiny_mistral3_ernie_moe(path, arch, qtype, seed, yarn_log_mul)
    if arch in ("hunyuan-dense", "minicpm"):
        return _write_tiny_hunyuan_minicpm(path, arch, qtype, seed, rope_alpha, mup_defaults, rope_freqs)
    if arch in ("ernie4_5", "exaone4", "cohere2", "arcee"):
        return _write_tiny_llama_variant(path, arch, qtype, seed, sliding_window, n_layer)
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    # (llama.cpp sets token attributes by the model's name, looking up SentencePiece's <s> and </s>
    # when it says phi3: a byte-level vocabulary has neither)
    w.add_name("tiny-p3" if arch == "phi3" else f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if rope_yarn is not None:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope_yarn[0])
        w.add_rope_scaling_orig_ctx_len(rope_yarn[1])
    w.add_file_type(_file_type(qtype))
    # mixture of experts (qwen3moe, qwen2moe, granitemoe, olmoe, deepseek; llama with n_expert: Mixtral's layout): 2 of
    # n_expert per token; a shared expert (qwen2moe, granitemoe with shared_expert; deepseek's 2 of n_ff_exp, one FFN)
    # as wide as neither the routed experts nor n_ff
    n_expert = (4 if arch in ("qwen3moe", "qwen2moe", "granitemoe", "olmoe", "deepseek") else 0) if n_expert is None else n_expert
    n_ff_exp = {"qwen3moe": 64, "qwen2moe": 32, "deepseek": 32}.get(arch, n_ff)
    n_ff_shexp = 64 if arch in ("qwen2moe", "deepseek") or shared_expert else 0
    n_dense_lead = 1 if arch == "deepseek" else 0
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        if arch in ("qwen3moe", "qwen2moe", "deepseek"):
            w.add_expert_feed_forward_length(n_ff_exp)
        if arch == "deepseek":
            w.add_leading_dense_block_count(n_dense_lead)
            w.add_expert_shared_count(n_ff_shexp // n_ff_exp)
            w.add_expert_weights_scale(1.5)
        elif n_ff_shexp:
            w.add_expert_shared_feed_forward_length(n_ff_shexp)
    if arch in ("gemma", "gemma2", "gemma3", "qwen3", "qwen3moe"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(8 if sliding_window is None else sliding_window)
    elif arch == "olmo2" and sliding_window:
        w.add_sliding_window(sliding_window)
    if arch in ("granite", "granitemoe"):  # multipliers far enough from 1 to matter
        w.add_embedding_scale(3.0)
        w.add_residual_scale(0.5)
        w.add_attention_scale(0.2)
        w.add_logit_scale(4.0)
    if arch == "gemma2":  # caps low enough to bite on a tiny model's logits (Gemma 2's own: 50 and 30)
        w.add_attn_logit_softcapping(1.5)
        w.add_final_logit_softcapping(8.0)
    _add_byte_vocab(w)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    mat, vec = _random_tensors(w, rng, qtype)

    def experts(name: str, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch in ("olmo2", "olmoe", "qwen2moe", "deepseek"):  # (llama.cpp requires their own output head)
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        if arch != "olmo2":  # (OLMo 2 normalises after attention and the FFN only)
            vec(b + "attn_norm.weight", n_embd)
        if arch == "phi3":  # fused: Q, K, V rows in one matrix; gate then up rows in ffn_up
            mat(b + "attn_qkv.weight", (n_head + 2 * n_head_kv) * head_dim, n_embd)
        else:
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch != "olmo2":
            vec(b + "ffn_norm.weight", n_embd)
        if n_expert and i >= n_dense_lead:  # the router (float32, as in real files) and the experts' 3-D tensors
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp)
            if n_ff_shexp:
                mat(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd)
                mat(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd)
                mat(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp)
            if arch == "qwen2moe":  # the shared expert's gate: one row, float32 as in real files
                w.add_tensor(b + "ffn_gate_inp_shexp.weight", (rng.standard_normal(n_embd) * 0.2).astype(np.float32))
        elif arch == "phi3":
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        if arch in ("qwen2", "qwen2moe"):
            vec(b + "attn_q.bias", n_head * head_dim, 0.0)
            vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0)
            vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0)
        if arch in ("gemma3", "qwen3", "qwen3moe"):
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
        if arch in ("olmo2", "olmoe"):  # QK-norm over all heads' width at once
            vec(b + "attn_q_norm.weight", n_head * head_dim)
            vec(b + "attn_k_norm.weight", n_head_kv * head_dim)
        if arch in ("gemma2", "gemma3", "olmo2"):
            vec(b + "post_attention_norm.weight", n_embd)
            vec(b + "post_ffw_norm.weight", n_embd)
    if extra_tensor is not None:  # (name, ggml type, n_cols): one [1, n_cols] tensor of random bytes, of any type
        from gguf import GGML_QUANT_SIZES

        name, qt, n_cols = extra_tensor
        block, size = GGML_QUANT_SIZES[Q(qt)]
        raw = rng.integers(0, 256, (1, n_cols // block * size), dtype=np.uint8)
        w.add_tensor(name, raw, raw_dtype=Q(qt))  # (the shape in bytes: gguf derives the weights)
    if rope_freqs and arch == "phi3":  # the 128k models' two sets, chosen by the context asked for
        w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 16.0, head_dim // 2).astype(np.float32))
        w.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 4.0, head_dim // 2).astype(np.float32))
    elif rope_freqs:
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    return _finish(w, path)


#: the LoRA adapter held to llama.cpp (tests/fixtures/lora_llama.npz, tools/make_lora_fixture.py): on the
#: tiny llama (F32), Q and V of every layer and the FFN's down projection of layer 1, rank 4
LORA_TARGETS = ("blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.attn_q.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight")


def write_tiny_lora(path: Path, base: Path, targets: tuple[str, ...] = LORA_TARGETS, rank: int = 4, alpha: float = 8.0,
                    seed: int = 1, arch: str = "llama") -> Path:  # fmt: skip
    """A LoRA adapter for the model at ``base`` as convert_lora_to_gguf.py writes one: ``<name>.lora_a``
    [rank, n_in] and ``<name>.lora_b`` [n_out, rank] (float32) for each target, alpha in the metadata."""
    from kvrun.loaders.gguf_file import GGUFFile

    shapes = {name: GGUFFile(base).tensors[name].shape for name in targets}
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for name in targets:
        n_out, n_in = shapes[name]
        w.add_tensor(name + ".lora_a", (rng.standard_normal((rank, n_in)) * 0.3).astype(np.float32))
        w.add_tensor(name + ".lora_b", (rng.standard_normal((n_out, rank)) * 0.3).astype(np.float32))
    return _finish(w, path)


def _write_tiny_lfm2(path: Path, qtype: int, seed: int, moe: bool = False) -> Path:
    """A random LFM2: convolution layers where LFM2_CONV says (per-layer head_count_kv 0), attention
    layers with per-head QK-norm, the final norm named token_embd_norm (as llama.cpp's converter).
    ``moe``: LFM2-MoE, the FFNs after the first a mixture of experts with sigmoid routing and a bias."""
    rng = np.random.default_rng(seed)
    arch = "lfm2moe" if moe else "lfm2"
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    toks, merges, types = byte_vocab()
    n_vocab, l_cache, n_expert, n_ff_exp = len(toks), 3, 4, 32
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    if moe:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_leading_dense_block_count(1)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_norm(True)
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([0 if conv else n_head_kv for conv in LFM2_CONV])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_uint32(f"{arch}.shortconv.l_cache", l_cache)
    w.add_vocab_size(n_vocab)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("token_embd_norm.weight", n_embd)
    for i, conv in enumerate(LFM2_CONV):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if conv:
            w.add_tensor(b + "shortconv.conv.weight", (rng.standard_normal((n_embd, l_cache)) * 0.5).astype(np.float32))
            mat(b + "shortconv.in_proj.weight", 3 * n_embd, n_embd, 0.3)
            mat(b + "shortconv.out_proj.weight", n_embd, n_embd)
        else:
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        if moe and i >= 1:
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(n_expert) * 0.3).astype(np.float32))
            for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
                a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
                w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


def _write_tiny_layernorm(path: Path, arch: str, qtype: int, seed: int, split_qkv: bool, qk_norm: bool) -> Path:
    """A random Phi-2 or StableLM: LayerNorms with biases, partial NeoX rotary (ROPE_DIM), Q, K and V
    fused with a bias, or apart (``split_qkv``) with theirs.  phi2: a parallel block, biases on every
    projection and the output head, an ungated GELU FFN.  stablelm: SwiGLU; ``qk_norm``: per-head QK
    LayerNorms, no Q/K/V biases and no ffn_norm (a parallel block), as StableLM 2 12B."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_eps(1e-5)
    w.add_rope_dimension_count(ROPE_DIM[arch])
    w.add_rope_freq_base(10000.0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    vec("output_norm.bias", n_embd, 0.0)
    mat("output.weight", n_vocab, n_embd, 0.5)
    if arch == "phi2":
        vec("output.bias", n_vocab, 0.0, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_norm.bias", n_embd, 0.0)
        if not split_qkv:
            mat(b + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
            vec(b + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.0)
        else:
            for x, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                mat(b + f"attn_{x}.weight", rows, n_embd)
                if not qk_norm:
                    vec(b + f"attn_{x}.bias", rows, 0.0)
        if qk_norm:  # [n_head, head_dim]: each head its own weights
            w.add_tensor(b + "attn_q_norm.weight", (1.0 + rng.standard_normal((n_head, head_dim)) * 0.1).astype(np.float32))
            w.add_tensor(b + "attn_k_norm.weight", (1.0 + rng.standard_normal((n_head_kv, head_dim)) * 0.1).astype(np.float32))
        mat(b + "attn_output.weight", n_embd, q_dim)
        if arch == "phi2":
            vec(b + "attn_output.bias", n_embd, 0.0)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            vec(b + "ffn_up.bias", n_ff, 0.0)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            vec(b + "ffn_down.bias", n_embd, 0.0)
            continue
        if not qk_norm:
            vec(b + "ffn_norm.weight", n_embd)
            vec(b + "ffn_norm.bias", n_embd, 0.0)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


def _write_tiny_llama_variant(path: Path, arch: str, qtype: int, seed: int, sliding_window: int | None, n_layer: int | None) -> Path:
    """A random ERNIE 4.5, EXAONE 4.0, Command R7B or Arcee AFM: the Llama layout with its norms, its rope or its
    FFN moved.  ernie4_5: the Llama block, the output head tied.  exaone4: no pre-norms, post-norms, per-head
    QK-norm, the output head tied; ``sliding_window`` stated where given (llama.cpp heeds it at the 32B's
    depth only, ``n_layer`` 64).  cohere2: parallel blocks, one LayerNorm without a bias each, a window of
    ``sliding_window`` (8 unless given) in 3 layers of 4, logits times ``logit_scale`` 0.25, the output head
    tied.  arcee: an ungated FFN (no ffn_gate), a separate output head."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_geom = ARCH_GEOMETRY[arch]
    n_layer = n_layer or n_geom
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    if arch == "cohere2":
        w.add_layer_norm_eps(1e-5)
        w.add_sliding_window(8 if sliding_window is None else sliding_window)
        w.add_logit_scale(0.25)
    else:
        w.add_layer_norm_rms_eps(1e-6)
        if sliding_window is not None:
            w.add_sliding_window(sliding_window)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch == "arcee":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        if arch != "exaone4":
            vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "exaone4":
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
            vec(b + "post_attention_norm.weight", n_embd)
            vec(b + "post_ffw_norm.weight", n_embd)
        elif arch != "cohere2":  # (Cohere's FFN reads the attention's normed input)
            vec(b + "ffn_norm.weight", n_embd)
        if arch != "arcee":
            mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


#: the tiny Ministral 3's rope and temperature: YaRN factor 4 over an original context of 8 (Ministral 3's: 16 over
#: 16384), the queries times 1 + beta ln(1 + floor(pos / 8)), beta 0.3 (Ministral 3's llama_4_scaling_beta: 0.1)
#: the tiny DeepSeek-V2/V3: (n_embd, n_head, qk_nope, n_rot, v_head_dim, kv_lora_rank, q_lora_rank, n_ff, n_layer)
DEEPSEEK2_GEOMETRY = (64, 4, 16, 8, 12, 32, 24, 96, 3)
#: its YaRN (factor, original context): positions past 8 are interpolated
DEEPSEEK2_YARN = (4.0, 8)
#: the spread of its attention weights (queries', latent's, expansions'): scores about 1, where rope, its magnitude
#: and the scale show (0.2 to 0.3 everywhere: both runtimes' fp16 K/V, and llama.cpp's fp16 Q, reach 1e-3 of the logits)
DEEPSEEK2_ATTN_SCALE = 0.15
#: the spread of its routers' weights (no near-tie between experts on the fixtures' prompt left to rounding)
DEEPSEEK2_ROUTER_SCALE = 0.5


def _write_tiny_deepseek2(path: Path, qtype: int, seed: int, mla: str = "lite", extra_tokens: tuple[str, ...] = ()) -> Path:
    """A random DeepSeek-V2/V3 as llama.cpp's converters write ``deepseek2`` (DEEPSEEK2_GEOMETRY): heads of 16
    non-rope and 8 rope dimensions, V 12 wide, a latent of 32; YaRN (DEEPSEEK2_YARN) with yarn_log_multiplier 0.1 *
    mscale_all_dim; layer 0 dense (leading_dense_block_count 1), layers 1 and 2 a mixture of 8 experts 32 wide and
    2 shared ones (expert_shared_count: one FFN 64 wide).  ``mla`` "lite": DeepSeek-V2-Lite's layout (q_lora_rank 0,
    ``attn_q``; the older converters' ``attn_kv_b``, head_count_kv = head_count; a softmax router, 2 experts a token,
    weights as the router gave them, expert_weights_scale 1, mscale_all_dim 0.707), a separate output head.  "v3":
    DeepSeek-V3's (``attn_q_a`` -> ``attn_q_a_norm`` -> ``attn_q_b`` of rank 24; the newer converters' split
    ``attn_k_b`` (transposed) and ``attn_v_b`` with key_length_mla/value_length_mla, key_length and value_length the
    latent's, head_count_kv 1; a sigmoid router with ``exp_probs_b``, 3 experts a token from the best 2 of 4
    groups, weights renormalised, times 2.5, mscale_all_dim 1), the output head tied."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, nope, n_rot, dv, rank, q_rank, n_ff, n_layer = DEEPSEEK2_GEOMETRY
    v3 = mla == "v3"
    if not v3:
        assert mla == "lite", mla
        q_rank = 0
    n_expert, n_used, n_ff_exp, n_shared, n_dense_lead = 8, 3 if v3 else 2, 32, 2, 1
    toks, merges, types = byte_vocab()
    n_vocab = len(toks) + len(extra_tokens)  # (extra_tokens: control tokens after the bytes, tiny_vision_kimivl.py's)
    w = GGUFWriter(str(path), "deepseek2")
    w.add_name(f"tiny-deepseek2-{mla}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(1 if v3 else n_head)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(n_rot)
    if v3:
        w.add_key_length(rank + n_rot)
        w.add_value_length(rank)
        w.add_key_length_mla(nope + n_rot)
        w.add_value_length_mla(dv)
    else:
        w.add_key_length(nope + n_rot)
        w.add_value_length(dv)
    w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    w.add_leading_dense_block_count(n_dense_lead)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_expert_weights_scale(2.5 if v3 else 1.0)
    w.add_expert_weights_norm(v3)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if v3 else ExpertGatingFuncType.SOFTMAX)
    if v3:
        w.add_expert_group_count(4)
        w.add_expert_group_used_count(2)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(DEEPSEEK2_YARN[0])
    w.add_rope_scaling_orig_ctx_len(DEEPSEEK2_YARN[1])
    w.add_rope_scaling_yarn_log_mul(0.1 * (1.0 if v3 else 0.707))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    mat, vec = _random_tensors(w, rng, qtype)

    def experts(name: str, shape: tuple[int, ...], scale: float = 0.1) -> None:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if not v3:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if v3:
            mat(b + "attn_q_a.weight", q_rank, n_embd, DEEPSEEK2_ATTN_SCALE)
            vec(b + "attn_q_a_norm.weight", q_rank)
            mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, DEEPSEEK2_ATTN_SCALE)
        else:
            mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, DEEPSEEK2_ATTN_SCALE)
        mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, DEEPSEEK2_ATTN_SCALE)
        vec(b + "attn_kv_a_norm.weight", rank)
        if v3:  # (the converter: kv_b per head [k_nope rows; v rows], k_b transposed for the absorbed product)
            experts(b + "attn_k_b.weight", (n_head, rank, nope), DEEPSEEK2_ATTN_SCALE)
            experts(b + "attn_v_b.weight", (n_head, dv, rank), DEEPSEEK2_ATTN_SCALE)
        else:
            mat(b + "attn_kv_b.weight", n_head * (nope + dv), rank, DEEPSEEK2_ATTN_SCALE)
        mat(b + "attn_output.weight", n_embd, n_head * dv)
        vec(b + "ffn_norm.weight", n_embd)
        if i < n_dense_lead:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * DEEPSEEK2_ROUTER_SCALE).astype(np.float32))
        if v3:
            w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(n_expert) * 0.3).astype(np.float32))
        experts(b + "ffn_gate_exps.weight", (n_expert, n_ff_exp, n_embd))
        experts(b + "ffn_up_exps.weight", (n_expert, n_ff_exp, n_embd))
        experts(b + "ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp))
        mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
    return _finish(w, path)


MISTRAL3_YARN = (4.0, 8)
MISTRAL3_TEMPERATURE = 0.3


def _write_tiny_mistral3_ernie_moe(path: Path, arch: str, qtype: int, seed: int, yarn_log_mul: float = 1.0) -> Path:
    """A random Ministral 3 or ERNIE 4.5 MoE: the Llama layout with what sets each apart.  mistral3: heads of
    key_length, YaRN as Ministral 3's converter writes it (beta_fast 32, beta_slow 1, yarn_log_multiplier
    ``yarn_log_mul``, Ministral 3's 1 unless given: MISTRAL3_YARN) and attention.temperature_scale
    (MISTRAL3_TEMPERATURE), the output head tied.  ernie4_5-moe: layer 0 dense (leading_dense_block_count 1,
    interleave_moe_layer_step 1, as the 21B-A3B), the others 4 experts (2 a token) 32 wide with exp_probs_b (the
    selection bias, wide enough to move choices) and a shared expert 64 wide (expert_shared_feed_forward_length),
    a separate output head."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    n_expert, n_ff_exp, n_ff_shexp, n_dense_lead = 4, 32, 64, 1
    moe = arch == "ernie4_5-moe"
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if moe:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
        w.add_leading_dense_block_count(n_dense_lead)
        w.add_interleave_moe_layer_step(1)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(MISTRAL3_YARN[0])
        w.add_rope_scaling_orig_ctx_len(MISTRAL3_YARN[1])
        w.add_rope_scaling_yarn_beta_fast(32.0)
        w.add_rope_scaling_yarn_beta_slow(1.0)
        w.add_rope_scaling_yarn_log_mul(yarn_log_mul)
        w.add_attn_temperature_scale(MISTRAL3_TEMPERATURE)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if moe:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        if moe and i >= n_dense_lead:
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(n_expert) * 0.3).astype(np.float32))
            for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
                a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
                w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
            mat(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


#: the tiny MiniCPM's muP multipliers as its converter states them: scale_emb, scale_depth, dim_model_base (MiniCPM's
#: own 256 would make logit_scale 0.25 at n_embd 64; 16 makes it 4, as the 2B's 9)
MINICPM_MUP = (12.0, 1.4, 16)
#: the tiny MiniCPM4's LongRoPE: the original context (the fixtures' 64 is beyond it: the long factors)
MINICPM_LONGROPE_CTX = 32
MINICPM_LONG_FACTORS = np.geomspace(4.0, 32.0, 8).astype(np.float32)  # (head_dim 16: 8 frequencies)
MINICPM_SHORT_FACTORS = np.geomspace(1.0, 2.0, 8).astype(np.float32)


def _write_tiny_hunyuan_minicpm(path: Path, arch: str, qtype: int, seed: int, rope_alpha: float = 0.0,
                                mup_defaults: bool = False, longrope: bool = False) -> Path:  # fmt: skip
    """A random Hunyuan dense or MiniCPM: the Llama layout with what sets each apart.  hunyuan-dense: per-head
    ``attn_q_norm``/``attn_k_norm`` (weights 1 +- 0.5, so that their order with the rope shows), ``rope.scaling.alpha``
    where ``rope_alpha`` > 0, the output head tied (as the 0.5B).  minicpm: ``embedding_scale``, ``residual_scale`` and
    ``logit_scale`` from MINICPM_MUP as the converter writes them (none with ``mup_defaults``: llama.cpp's defaults),
    a separate output head; with ``longrope`` MiniCPM4's ``rope.scaling.type`` longrope,
    ``original_context_length`` MINICPM_LONGROPE_CTX and the ``rope_factors_long``/``short`` tensors."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    if arch == "hunyuan-dense":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if rope_alpha > 0:
            w.add_rope_scaling_alpha(rope_alpha)
    else:
        if not mup_defaults:
            scale_emb, scale_depth, dim_model_base = MINICPM_MUP
            w.add_embedding_scale(scale_emb)
            w.add_residual_scale(scale_depth / n_layer**0.5)
            w.add_logit_scale(n_embd / dim_model_base)
        if longrope:
            w.add_rope_scaling_type(RopeScalingType.LONGROPE)
            w.add_rope_scaling_orig_ctx_len(MINICPM_LONGROPE_CTX)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch == "minicpm":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        qk_scale = 0.3 if arch == "minicpm" else 0.1  # (MiniCPM's scores sharp enough for the rope factors to show)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd, qk_scale)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd, qk_scale)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "hunyuan-dense":
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    if arch == "minicpm" and longrope:  # (far apart in the fast frequencies too, so that 40 positions tell them apart)
        w.add_tensor("rope_factors_long.weight", MINICPM_LONG_FACTORS)
        w.add_tensor("rope_factors_short.weight", MINICPM_SHORT_FACTORS)
    return _finish(w, path)


def _write_tiny_ssm(path: Path, arch: str, qtype: int, seed: int, n_expert: int = 4, rope: bool = False) -> Path:
    """A random Mamba-2 or Granite 4.0-H, as llama.cpp's converter writes them: the mixers' ``ssm_*`` tensors
    (SSM_GEOMETRY; ``ssm_a`` = -exp(A_log) and ``ssm_d`` [n_head, 1], ``ssm_norm`` [n_group, d_inner / n_group],
    ``ssm_conv1d`` [channels, d_conv]) after each attn_norm.  mamba2: no attention, no FFN, a tied output
    head.  granitehybrid: attention where GRANITEHYBRID_SSM says (head_count_kv per layer), Granite's
    multipliers, an FFN after every layer: ``n_expert`` experts (2 a token) beside a shared expert, or dense
    (0); its attention rotated only where ``rope`` (rope.scaling.finetuned: Granite 4.0-H has no rope)."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    d_conv, d_inner, d_state, n_ssm_head, n_group = SSM_GEOMETRY
    channels = d_inner + 2 * n_group * d_state
    is_ssm = (True,) * n_layer if arch == "mamba2" else GRANITEHYBRID_SSM
    toks, merges, types = byte_vocab()
    n_vocab, n_ff_shexp = len(toks), 64
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(n_ssm_head)
    w.add_ssm_group_count(n_group)
    if arch == "granitehybrid":
        w.add_head_count_kv([0 if ssm else n_head_kv for ssm in is_ssm])
        w.add_rope_freq_base(10000.0)
        w.add_rope_scaling_finetuned(rope)
        w.add_embedding_scale(3.0)
        w.add_residual_scale(0.5)
        w.add_attention_scale(0.2)
        w.add_logit_scale(4.0)
        if n_expert:
            w.add_expert_count(n_expert)
            w.add_expert_used_count(2)
            w.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    for i, ssm in enumerate(is_ssm):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if ssm:
            mat(b + "ssm_in.weight", 2 * d_inner + 2 * n_group * d_state + n_ssm_head, n_embd, 0.2)
            w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((channels, d_conv)) * 0.5).astype(np.float32))
            vec(b + "ssm_conv1d.bias", channels, 0.0)
            # decays from ~0.99 to ~0.1 a token: some heads remember the whole prompt, some a few tokens
            w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, n_ssm_head).astype(np.float32))
            w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (n_ssm_head, 1))).astype(np.float32))
            w.add_tensor(b + "ssm_d", (1.0 + rng.standard_normal((n_ssm_head, 1)) * 0.3).astype(np.float32))
            w.add_tensor(b + "ssm_norm.weight", (1.0 + rng.standard_normal((n_group, d_inner // n_group)) * 0.1).astype(np.float32))
            mat(b + "ssm_out.weight", n_embd, d_inner)
        else:
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "mamba2":
            continue
        vec(b + "ffn_norm.weight", n_embd)
        if n_expert:
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            for name, rows, cols in (("ffn_gate_exps", n_ff, n_embd), ("ffn_up_exps", n_ff, n_embd), ("ffn_down_exps", n_embd, n_ff)):
                a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
                w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
            mat(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


def _write_tiny_gemma3n(path: Path, qtype: int, seed: int, image_tokens: tuple[str, ...] = (), chat_template: str | None = None) -> Path:
    """A random Gemma 3n: the sizes llama.cpp fixes (4 AltUp streams, per-layer inputs 256 wide, LAuReL rank 64),
    a window of 8 on 4 layers of 5, global rope base 1M (window layers' 10k), logits soft-capped at 30.  The
    tensors as llama.cpp's loader has them; the small AltUp ones (coefficients, routers) always float32.
    ``image_tokens``: control tokens after the byte vocabulary (tests/tiny_vision_gemma3n.py's image markers)."""
    rng = np.random.default_rng(seed)
    arch = "gemma3n"
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY[arch]
    n_altup, n_embd_altup, laurel_rank = 4, 256, 64
    toks, merges, types = byte_vocab()
    n_vocab = len(toks) + len(image_tokens)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(8)
    w.add_final_logit_softcapping(30.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, image_tokens)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    mat("per_layer_token_embd.weight", n_vocab, n_embd_altup * n_layer, 0.1)
    mat("per_layer_model_proj.weight", n_embd_altup * n_layer, n_embd, 0.1)
    vec("per_layer_proj_norm.weight", n_embd_altup)
    for name in ("altup_proj.weight", "altup_unembd_proj.weight"):  # [n_altup-1, n_embd, n_embd]
        a = (rng.standard_normal((n_altup - 1, n_embd, n_embd)) * 0.2).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        # (Q and K normed and attention unscaled: weights near 1 give scores of +-head_dim, whose softmax rounds
        # llama.cpp's fp16 Q and attention weights into whole logits; near 0.3, +-3)
        vec(b + "attn_q_norm.weight", head_dim, 0.3, 0.05)
        vec(b + "attn_k_norm.weight", head_dim, 0.3, 0.05)
        vec(b + "post_attention_norm.weight", n_embd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd, 0.3)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "post_ffw_norm.weight", n_embd)
        mat(b + "inp_gate.weight", n_embd_altup, n_embd, 0.3)
        mat(b + "proj.weight", n_embd, n_embd_altup)
        vec(b + "post_norm.weight", n_embd)
        mat(b + "altup_correct_coef.weight", n_altup, n_altup, 0.05, f32=True)
        vec(b + "altup_correct_scale.weight", n_embd)
        mat(b + "altup_predict_coef.weight", n_altup * n_altup, n_altup, 0.05, f32=True)
        mat(b + "altup_router.weight", n_altup, n_embd, 3.0, f32=True)  # (its input is scaled by 1/n_embd)
        vec(b + "altup_router_norm.weight", n_embd)
        mat(b + "laurel_l.weight", laurel_rank, n_embd)
        mat(b + "laurel_r.weight", n_embd, laurel_rank)
        vec(b + "laurel_post_norm.weight", n_embd)
    return _finish(w, path)


#: Falcon-H1's tiny layout: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer), heads wider than n_embd / n_head
#: (its key_length, as the 0.5B's 64 at n_embd 1024 of 8 heads), and its mixers' own inner width (d_conv, d_inner,
#: d_state, n_head, n_group): 96, not 2 * n_embd (Falcon's mamba_d_ssm)
FALCON_H1_GEOMETRY = ((64, 4, 2, 24, 96, 3), (4, 96, 16, 6, 2))
#: Nemotron-H's tiny layout, as its hybrid_override_pattern writes it ("M": Mamba-2, "-": an FFN, "*": attention),
#: the FFNs of two widths (llama.cpp sizes each from its feed_forward_length entry)
NEMOTRON_H_PATTERN, NEMOTRON_H_FF = "M-*-M", (96, 80)


def _write_tiny_ssm_hybrid(path: Path, arch: str, qtype: int, seed: int) -> Path:
    """A random Falcon-H1 or Nemotron-H, as llama.cpp's converter writes them.  falcon-h1: every layer attention
    (GQA, rope) and a Mamba-2 mixer on one attn_norm, then a SwiGLU FFN; no ``ssm_norm`` (as the released
    checkpoints: ``mamba_rms_norm`` false); its muP multipliers are in the weights, so random ones stand for
    them.  nemotron_h: each layer one of a Mamba-2 mixer (with the grouped ``ssm_norm``), attention without
    rope or an ungated squared-ReLU FFN, as NEMOTRON_H_PATTERN says (per-layer head_count_kv and
    feed_forward_length, both 0 for Mamba-2).  Both with a separate output head."""
    rng = np.random.default_rng(seed)
    if arch == "falcon-h1":
        (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer), ssm_geo = FALCON_H1_GEOMETRY
        kinds = "P" * n_layer  # (attention and mixer in parallel)
    else:
        (n_embd, n_head, n_head_kv, head_dim), ssm_geo = (64, 4, 2, 24), SSM_GEOMETRY
        kinds, n_layer = NEMOTRON_H_PATTERN, len(NEMOTRON_H_PATTERN)
        widths = iter(NEMOTRON_H_FF)
        n_ff = [next(widths) if kind == "-" else 0 for kind in kinds]
    d_conv, d_inner, d_state, n_ssm_head, n_group = ssm_geo
    channels = d_inner + 2 * n_group * d_state
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv if arch == "falcon-h1" else [n_head_kv if kind == "*" else 0 for kind in kinds])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if arch == "nemotron_h":  # (llama.cpp requires this one too of nemotron_h; its RMSNorms read the rms one)
        w.add_layer_norm_eps(1e-5)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(n_ssm_head)
    w.add_ssm_group_count(n_group)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i, kind in enumerate(kinds):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if kind in "PM":
            mat(b + "ssm_in.weight", 2 * d_inner + 2 * n_group * d_state + n_ssm_head, n_embd, 0.2)
            w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((channels, d_conv)) * 0.5).astype(np.float32))
            vec(b + "ssm_conv1d.bias", channels, 0.0)
            w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, n_ssm_head).astype(np.float32))
            w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (n_ssm_head, 1))).astype(np.float32))
            w.add_tensor(b + "ssm_d", (1.0 + rng.standard_normal((n_ssm_head, 1)) * 0.3).astype(np.float32))
            if kind == "M":
                w.add_tensor(b + "ssm_norm.weight", (1.0 + rng.standard_normal((n_group, d_inner // n_group)) * 0.1).astype(np.float32))
            mat(b + "ssm_out.weight", n_embd, d_inner)
        if kind in "P*":
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if kind == "P":  # (the converter maps pre_ff_layernorm.weight, suffix and all, to blk.N.ffn_norm: no ".weight")
            vec(b + "ffn_norm", n_embd)
            mat(b + "ffn_gate.weight", n_ff, n_embd)
        if kind in "P-":
            width = n_ff if kind == "P" else n_ff[i]
            mat(b + "ffn_up.weight", width, n_embd)
            mat(b + "ffn_down.weight", n_embd, width)
    return _finish(w, path)


#: the tiny Gated DeltaNet hybrids (qwen35, qwen35moe, qwen3next): (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer),
#: attention every QWEN35_INTERVAL-th layer (layers 1 and 3), and the DeltaNet's (d_conv, n_k_heads, n_v_heads, d_k):
#: two key heads over four value heads, so the key head each value head reads (tiled or repeated in place) matters
QWEN35_GEOMETRY, QWEN35_INTERVAL, QWEN35_DELTANET = (64, 4, 2, 32, 96, 4), 2, (4, 2, 4, 16)
#: Qwen3.5's rope: 16 of 32 dimensions (Qwen3.5's a quarter: 64 of 256), and sections that leave pair 5 to the extra
#: (4th) position, 0 for text (the real files' [11, 11, 10, 0] cover every pair); Qwen3-Next's: 8 dimensions, neox
QWEN35_ROPE, QWEN35_SECTIONS, QWEN3NEXT_ROPE = 16, [3, 2, 1, 0], 8


def _write_tiny_qwen35(path: Path, arch: str, qtype: int, seed: int, split_qkv: bool = False) -> Path:
    """A random Qwen3.5 (dense or MoE) or Qwen3-Next, as llama.cpp's converter writes them: Gated DeltaNet layers
    (``attn_qkv``, ``attn_gate``, ``ssm_beta``, ``ssm_alpha``; Qwen3-Next's grouped ``ssm_in`` (or, ``split_qkv``,
    ``attn_qkv`` and ``attn_gate``) and ``ssm_ba``) with ``ssm_conv1d``, ``ssm_dt.bias``, ``ssm_a`` = -exp(A_log),
    ``ssm_norm`` [d_v], ``ssm_out``; gated attention (``attn_q`` twice as wide: query and gate per head, QK-norm)
    every QWEN35_INTERVAL-th layer; every layer's FFN after ``post_attention_norm``: SwiGLU (qwen35) or 4 experts, 2 a
    token, beside a shared expert with its sigmoid gate.  A separate output head."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = QWEN35_GEOMETRY
    d_conv, n_k, n_v, d_k = QWEN35_DELTANET
    key_dim, value_dim = n_k * d_k, n_v * d_k
    n_expert, n_ff_exp, n_ff_shexp = (4, 32, 48) if arch != "qwen35" else (0, 0, 0)
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    if arch != "qwen35moe":  # (llama.cpp reads it optionally; an MoE file need not state it)
        w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch == "qwen3next":
        w.add_rope_dimension_count(QWEN3NEXT_ROPE)
    else:
        w.add_rope_dimension_count(QWEN35_ROPE)
        w.add_rope_dimension_sections(QWEN35_SECTIONS)
    w.add_full_attention_interval(QWEN35_INTERVAL)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(value_dim)
    w.add_ssm_state_size(d_k)
    w.add_ssm_time_step_rank(n_v)
    w.add_ssm_group_count(n_k)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "post_attention_norm.weight", n_embd)
        if (i + 1) % QWEN35_INTERVAL:  # Gated DeltaNet
            if arch == "qwen3next" and not split_qkv:
                mat(b + "ssm_in.weight", 2 * key_dim + 2 * value_dim, n_embd, 0.2)
            else:
                mat(b + "attn_qkv.weight", 2 * key_dim + value_dim, n_embd, 0.2)
                mat(b + "attn_gate.weight", value_dim, n_embd, 0.2)
            if arch == "qwen3next":
                mat(b + "ssm_ba.weight", 2 * n_v, n_embd, 0.3)
            else:
                mat(b + "ssm_beta.weight", n_v, n_embd, 0.3)
                mat(b + "ssm_alpha.weight", n_v, n_embd, 0.3)
            w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((2 * key_dim + value_dim, d_conv)) * 0.5).astype(np.float32))
            # decays from ~0.99 to ~0.1 a token: some heads remember the whole prompt, some a few tokens
            w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, n_v).astype(np.float32))
            w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, n_v)).astype(np.float32))
            vec(b + "ssm_norm.weight", d_k)
            mat(b + "ssm_out.weight", n_embd, value_dim)
        else:  # gated attention
            mat(b + "attn_q.weight", 2 * n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
        if n_expert:
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
                a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
                w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
            w.add_tensor(b + "ffn_gate_inp_shexp.weight", (rng.standard_normal(n_embd) * 0.2).astype(np.float32))
            mat(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
