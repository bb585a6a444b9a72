"""Model hyperparameters read from GGUF metadata.

One typed ``ModelConfig`` covers the llama family (llama, mistral-style, smollm3, granite, granitemoe), qwen2,
qwen2moe, deepseek, qwen3, qwen3moe, phi3, gemma, gemma2, gemma3, olmo2, olmoe, exaone, exaone4, ernie4_5, ernie4_5-moe, mistral3, cohere2, arcee, phi2, stablelm and gemma3n,
and the state-space models mamba2, granitehybrid, falcon-h1 and nemotron_h (their ``ssm.*`` hyperparameters), and the
Gated DeltaNet hybrids qwen35, qwen35moe and qwen3next (the same ``ssm.*`` keys, read as llama.cpp reads them there).  Per-architecture defaults that llama.cpp hard-codes (Gemma 2's and 3's
sliding-window layer patterns, Gemma 3's local rope base) live in ``_ARCH_DEFAULTS``
so the numbers are in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import GGUFError, UnsupportedModelError
from .gguf_file import GGUFFile

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "smollm3", "granite", "qwen2", "qwen2moe", "deepseek", "qwen3", "qwen3moe", "phi3", "gemma", "gemma2", "gemma3", "olmo2", "granitemoe", "olmoe", "exaone", "bert", "nomic-bert", "lfm2", "lfm2moe", "phi2", "stablelm", "gpt-oss", "ernie4_5", "exaone4", "cohere2", "arcee", "mamba2", "granitehybrid", "gemma3n", "falcon-h1", "nemotron_h", "qwen35", "qwen35moe", "qwen3next", "mistral3", "ernie4_5-moe")

SUPPORTED_ARCHITECTURES += ("gemma-embedding",)  # EmbeddingGemma: an encoder (models/gemma_embedding.py)
SUPPORTED_ARCHITECTURES += ("jina-bert-v2", "jina-bert-v3", "nomic-bert-moe", "neo-bert")  # encoders: models/jina_bert.py, nomic_bert_moe.py, neo_bert.py
SUPPORTED_ARCHITECTURES += ("deepseek2",)  # DeepSeek-V2/V3, Moonlight: multi-head latent attention (models/deepseek2.py)
SUPPORTED_ARCHITECTURES += ("hunyuan-dense", "minicpm")  # models/hunyuan_dense.py, models/minicpm.py
SUPPORTED_ARCHITECTURES += ("rwkv7",)  # RWKV-7 "Goose": an attention-free RNN (models/rwkv7.py)
SUPPORTED_ARCHITECTURES += ("rwkv6",)  # RWKV-6 "Finch": RWKV-7's trunk with its own mixes (models/rwkv6.py)
SUPPORTED_ARCHITECTURES += ("arwkv7",)  # ARWKV-7: RWKV-7's time mix in a Qwen 2.5 trunk (models/arwkv7.py)
SUPPORTED_ARCHITECTURES += ("rwkv6qwen2",)  # RWKV6-Qwen2 (QRWKV6): RWKV-6's time mix in a Qwen 2 trunk (models/rwkv6qwen2.py)
SUPPORTED_ARCHITECTURES += ("bitnet",)  # BitNet b1.58: sub-norms before the output projections (models/bitnet.py)
SUPPORTED_ARCHITECTURES += ("seed_oss", "apertus", "command-r")  # models/seed_oss.py, models/apertus.py, models/command_r.py
SUPPORTED_ARCHITECTURES += ("gpt2", "starcoder2", "gptneox")  # LayerNorm and GELU: models/gpt2.py, starcoder2.py, gptneox.py
SUPPORTED_ARCHITECTURES += ("starcoder", "bloom", "mpt")  # StarCoder v1 (GPT-BigCode), BLOOM, MPT: models/starcoder.py, bloom.py, mpt.py
SUPPORTED_ARCHITECTURES += ("glm4", "glm4moe")  # GLM-4-0414, GLM-4.5/4.6 (models/glm4.py)
SUPPORTED_ARCHITECTURES += ("smallthinker", "bailingmoe2")  # SmallThinker, Ling/Ring 2.0 (models/smallthinker.py, bailingmoe2.py)
SUPPORTED_ARCHITECTURES += ("llama4",)  # Llama 4 Scout/Maverick: chunked and NoPE attention, interleaved experts (models/llama4.py)
SUPPORTED_ARCHITECTURES += ("internlm2", "olmo", "nemotron", "openelm")  # models/internlm2.py, olmo.py, nemotron.py, openelm.py
SUPPORTED_ARCHITECTURES += ("qwen2vl", "qwen3vl", "qwen3vlmoe", "falcon", "chatglm")  # text only: models/qwen2vl.py, qwen3vl.py; falcon.py, chatglm.py
SUPPORTED_ARCHITECTURES += ("mamba",)  # Mamba 1, Falcon-Mamba: the selective scan without heads (models/mamba.py)
SUPPORTED_ARCHITECTURES += ("afmoe",)  # Arcee's Trinity: gated attention, sandwich norms, sigmoid-routed experts (models/afmoe.py)
SUPPORTED_ARCHITECTURES += ("muse-glimmer",)  # Muse Glimmer: AFMoE's attention, a dense FFN, logit scale and softcap (models/muse_glimmer.py)
SUPPORTED_ARCHITECTURES += ("laguna",)  # Poolside's Laguna: a softplus attention gate, per-layer heads and rope, sigmoid-routed experts (models/laguna.py)
SUPPORTED_ARCHITECTURES += ("hy_v3",)  # Tencent's Hy3: Qwen3's attention, DeepSeek-V3's sigmoid-routed experts and a shared one (models/hy_v3.py)
SUPPORTED_ARCHITECTURES += ("hy_v4",)  # Tencent's HY V4: DeepSeek-V3's MLA and experts with hyper-connections, a gated MLA output, sinks (models/hy_v4.py)
SUPPORTED_ARCHITECTURES += ("exaone-moe",)  # K-EXAONE: EXAONE 4.0's attention, pre-norms, DeepSeek-V3's experts (models/exaone_moe.py)
SUPPORTED_ARCHITECTURES += ("pangu-embedded",)  # openPangu-Embedded: Llama with attention biases (models/pangu_embedded.py)
SUPPORTED_ARCHITECTURES += ("minicpm3",)  # MiniCPM3-4B: DeepSeek-V2's latent attention with muP (models/minicpm3.py)
SUPPORTED_ARCHITECTURES += ("phimoe", "bailingmoe", "hunyuan-moe", "dots1", "rnd1", "grovemoe")  # mixtures of experts: models/<arch>.py
SUPPORTED_ARCHITECTURES += ("dream", "llada", "llada-moe")  # diffusion language models (kvrun diffusion): models/dream.py, llada.py, llada_moe.py
SUPPORTED_ARCHITECTURES += ("minimax-m2", "mimo2", "step35", "mistral4")  # models/minimax_m2.py, mimo2.py, step35.py, mistral4.py
SUPPORTED_ARCHITECTURES += ("minimax-m3",)  # MiniMax-M3: MiniMax-M2's attention, DeepSeek-V3's experts, swigluoai, MSA's dense path (models/minimax_m3.py)
SUPPORTED_ARCHITECTURES += ("modern-bert", "eurobert", "llama-embed", "t5encoder")  # encoders: models/modern_bert.py, eurobert.py, llama_embed.py, t5encoder.py
SUPPORTED_ARCHITECTURES += ("qwen", "baichuan", "orion", "xverse", "plamo3", "maincoder", "jais2")  # the Llama block's kin: models/qwen.py, baichuan.py, orion.py, xverse.py, plamo3.py, maincoder.py, jais2.py
SUPPORTED_ARCHITECTURES += ("t5",)  # T5 / Flan-T5 text generation: the encoder-decoder (models/t5.py)
SUPPORTED_ARCHITECTURES += ("gemma4",)  # Gemma 4: Gemma 3n's per-layer inputs and K/V sharing, heads of two widths, experts (models/gemma4.py)
SUPPORTED_ARCHITECTURES += ("gemma4-assistant",)  # Gemma 4's MTP draft head, only beside its Gemma 4 with -md (models/gemma4_assistant.py)
SUPPORTED_ARCHITECTURES += ("eagle3",)  # EAGLE-3 draft heads, only beside their target with -md: they read three of its layers (models/eagle3.py)
SUPPORTED_ARCHITECTURES += ("jamba", "plamo2", "deci")  # Mamba 1 / Mamba-2-like layers among attention ones, per-layer blocks (models/jamba.py, plamo2.py, deci.py)
SUPPORTED_ARCHITECTURES += ("jais", "codeshell", "refact", "plm", "plamo", "chameleon")  # older and niche decoders: models/jais.py, codeshell.py, refact.py, plm.py, plamo.py, chameleon.py
SUPPORTED_ARCHITECTURES += ("dbrx", "arctic", "grok", "nemotron_h_moe")  # big mixtures of experts: models/dbrx.py, arctic.py, grok.py, nemotron_h_moe.py
SUPPORTED_ARCHITECTURES += ("kimi-linear",)  # Kimi Linear: Kimi Delta Attention among rope-less MLA layers, experts (models/kimi_linear.py)
SUPPORTED_ARCHITECTURES += ("bailingmoe3",)  # Ling 3: Kimi Linear's shape, full-rank KDA gates, gated and roped MLA (models/bailingmoe3.py)
SUPPORTED_ARCHITECTURES += ("kimi-k3",)  # Kimi K3: Kimi Linear's layers, residual attention, latent experts, situ (models/kimi_k3.py)
SUPPORTED_ARCHITECTURES += ("cogvlm", "deepseek2-ocr", "glm-dsa", "hunyuan_vl", "paddleocr")  # text sides of VL/OCR models: models/cogvlm.py, deepseek2_ocr.py, glm_dsa.py, hunyuan_vl.py, paddleocr.py
SUPPORTED_ARCHITECTURES += ("cohere2moe",)  # Cohere's MoE Command (North): Command R7B's parallel block, sigmoid-routed experts averaged with a shared one (models/cohere2moe.py)
SUPPORTED_ARCHITECTURES += ("maple",)  # Maple: QK-norm, rope on the pattern's window layers only, softmax experts with a gate-first clamped SwiGLU (models/maple.py)
SUPPORTED_ARCHITECTURES += ("spark2_5",)  # Spark-X2.5: window layers of their own rope, per-layer heads, a head-wise sigmoid gate, GELU FFN (models/spark2_5.py)
SUPPORTED_ARCHITECTURES += ("hrm_text",)  # HRM-Text (DFM-Mimir): low and high stacks run in cycles, a cache slot a pass, gated attention (models/hrm_text.py)
SUPPORTED_ARCHITECTURES += ("minimax-01",)  # MiniMax-Text-01, MiniMax-M1: lightning attention among softmax layers, postnorm residuals, experts (models/minimax_01.py)
SUPPORTED_ARCHITECTURES += ("dots3note",)  # rednote's dots.note: glm-dsa's MLA and DSA with window layers of their own geometry, a head gate (models/dots3note.py)
SUPPORTED_ARCHITECTURES += ("mellum",)  # JetBrains' Mellum 2: Qwen3-MoE's block, window layers with plain rope at the global base (models/mellum.py)
SUPPORTED_ARCHITECTURES += ("graniteswitch",)  # IBM Granite Switch: Granite with LoRA adapters control tokens switch on, routed in-graph (models/graniteswitch.py)
SUPPORTED_ARCHITECTURES += ("granite_swa",)  # IBM Granite SWA / MoE SWA: Granite's block, windows, sinks and rope by per-layer arrays (models/granite_swa.py)
SUPPORTED_ARCHITECTURES += ("nanbeige",)  # Nanbeige: the Llama block, its layers run num_loops times over, output_norm between the loops (models/nanbeige.py)
SUPPORTED_ARCHITECTURES += ("talkie",)  # Talkie: weightless RMSNorms, per-head Q gains after the rope, output gains, an embedding skip (models/talkie.py)
SUPPORTED_ARCHITECTURES += ("deepseek32",)  # DeepSeek-V3.2: DeepSeek-V3's MLA and experts, DSA's lightning indexer, its dense path up to top_k (models/deepseek32.py)
SUPPORTED_ARCHITECTURES += ("glm5-next",)  # GLM-5.3-Flash: Kimi Linear's KDA among nope MLA layers, mHC streams, a k-pool DSA indexer (dense), experts (models/glm5_next.py)

# What llama.cpp fixes in code rather than reading from the file.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # Jamba: Mamba 1 and rope-less attention layers, experts on some (their softmax weights as the router gave them); PLaMo 2:
    # Mamba-2-like and attention layers (neox rope), sandwich norms; Deci: Llama's block with per-layer heads and FFN widths
    "jamba": {"rope_neox": False, "expert_weights_norm": False},
    "plamo2": {"rope_neox": True},
    "deci": {"rope_neox": False},
    # Llama 4: rope over consecutive pairs; its chosen expert's sigmoid weight as the router gave it (models/llama4.py)
    "llama4": {"rope_neox": False, "expert_weights_norm": False},
    # InternLM2 (the Llama block, the converter splitting its fused wqkv), OLMo v1 (non-parametric LayerNorms, Q/K/V clamped
    # where the file says), Nemotron (LayerNorms with biases, squared-ReLU FFN, partial rope), OpenELM (per-layer head
    # counts and FFN widths, per-head QK-norm): models/internlm2.py, olmo.py, nemotron.py, openelm.py
    "internlm2": {"rope_neox": False},
    "olmo": {"rope_neox": False},
    "nemotron": {"rope_neox": True},
    "openelm": {"rope_neox": True},
    # (the Qwen VL models' multimodal rope is neox-laid; models/qwen2vl.py, qwen3vl.py)
    "qwen2vl": {"rope_neox": True},
    "qwen3vl": {"rope_neox": True},
    "qwen3vlmoe": {"rope_neox": True},  # (its chosen experts' weights renormalised, as Qwen3-MoE's)
    "falcon": {"rope_neox": True},
    "chatglm": {"rope_neox": False},  # (rope over consecutive pairs, half of each head)
    # BERT encoders (embeddings): learned positions; nomic-bert rotates, NeoX layout
    "bert": {"rope_neox": False},
    # LFM2: convolution and attention layers (which ones: the per-layer head_count_kv, 0 for convolutions)
    "lfm2": {"rope_neox": True},
    "lfm2moe": {"rope_neox": True},  # (its experts' sigmoid weights renormalised)
    "nomic-bert": {"rope_neox": True},
    # jina-bert-v2: ALiBi, no rope; jina-bert-v3, nomic-bert-moe: NeoX rope (the MoE's chosen experts' softmax weights as
    # the router gave them); neo-bert: rope over consecutive pairs (llama.cpp's llama_model_rope_type)
    "jina-bert-v2": {"rope_neox": False},
    "jina-bert-v3": {"rope_neox": True},
    "nomic-bert-moe": {"rope_neox": True, "expert_weights_norm": False},
    "neo-bert": {"rope_neox": False},
    "llama": {"rope_neox": False},
    "mistral": {"rope_neox": False},
    "smollm3": {"rope_neox": False},
    "granite": {"rope_neox": False},
    "granitemoe": {"rope_neox": False},  # (its chosen experts' weights renormalised)
    "granite_swa": {"rope_neox": False},  # (windows and rope by the file's arrays: models/granite_swa.py)
    "graniteswitch": {"rope_neox": False},  # (rope unless rope.scaling.finetuned is false: models/graniteswitch.py)
    "qwen2": {"rope_neox": True},
    "qwen2moe": {"rope_neox": True, "expert_weights_norm": False},  # its chosen experts' weights as the router gave them
    "deepseek": {"rope_neox": False, "expert_weights_norm": False},  # (DeepSeek-MoE: the same, times expert_weights_scale)
    "qwen3": {"rope_neox": True},
    "qwen3moe": {"rope_neox": True},  # (its chosen experts' weights renormalised, as Mixtral's)
    "phi3": {"rope_neox": True},
    "gemma": {"rope_neox": True},  # (embeddings scaled by sqrt(n_embd), GELU-gated FFN: models/gemma.py)
    # Gemma 2: sliding-window and global layers alternate (even layers local), one rope base.
    "gemma2": {"rope_neox": True, "swa_pattern": 2},
    # Gemma 3: 5 sliding-window layers then 1 global, local rope base 10k,
    # embeddings scaled by sqrt(n_embd), GELU-gated FFN.
    "gemma3": {"rope_neox": True, "swa_pattern": 6, "rope_theta_swa": 10_000.0},
    # EmbeddingGemma: Gemma 3's layout attending both ways, its windows symmetric (models/gemma_embedding.py)
    "gemma-embedding": {"rope_neox": True, "swa_pattern": 6, "rope_theta_swa": 10_000.0},
    # OLMo 2 (no window); OLMo 3, under the same name, states a window: 3 window layers then 1 global.
    "olmo2": {"rope_neox": True, "swa_pattern": 4},
    "olmoe": {"rope_neox": True, "expert_weights_norm": False},  # its chosen experts' weights as the router gave them
    "exaone": {"rope_neox": True},
    # gpt-oss: even layers attend in a window, odd ones globally; the chosen experts' weights are a
    # softmax over their own router logits (moe.route's "softmax_weight"), not renormalised after
    "gpt-oss": {"rope_neox": True, "swa_pattern": 2, "expert_weights_norm": False},
    # LayerNorm (with bias) models: their eps is the file's attention.layer_norm_epsilon
    "phi2": {"rope_neox": True},
    "stablelm": {"rope_neox": True},
    # ERNIE 4.5 (dense), Arcee AFM (its FFN an ungated squared ReLU): the Llama block, Llama's rope layout
    "ernie4_5": {"rope_neox": False},
    "arcee": {"rope_neox": False},
    # ERNIE 4.5 MoE: the dense block, its FFN a mixture of experts by leading_dense_block_count and
    # interleave_moe_layer_step, the chosen experts' weights renormalised (models/ernie4_5_moe.py)
    "ernie4_5-moe": {"rope_neox": False},
    # DeepSeek-V2/V3 (multi-head latent attention: models/deepseek2.py): rope over consecutive pairs of each head's
    # rope part; the chosen experts' weights as the router gave them unless the file says to renormalise them
    "deepseek2": {"rope_neox": False, "expert_weights_norm": False},
    # Mistral 3 (Ministral 3, Mistral Small 3.x): the Llama block; YaRN's magnitude cancelled, Llama 4's query
    # temperature by position where the file states one (models/mistral3.py)
    "mistral3": {"rope_neox": False},
    # Hunyuan dense (0.5B-7B): the Llama block, neox rope, per-head QK-norm after the rope; the rope base times
    # rope.scaling.alpha^(head_dim / (head_dim - 2)) where the file states an alpha (NTK-alpha; older converters bake
    # it into rope.freq_base) (models/hunyuan_dense.py)
    "hunyuan-dense": {"rope_neox": True, "rope_alpha": True},
    # MiniCPM 1B/2B, MiniCPM4: Granite's multipliers, MiniCPM's own where the file states none: embeddings times 12,
    # block outputs times 1.4 / sqrt(n_layer) (llama.cpp's defaults too), logits divided by n_embd / 256 (dim_model_base;
    # llama.cpp's default divides them by 256 / n_embd instead); LongRoPE's factor tensors where rope.scaling.type says
    # longrope (models/minicpm.py)
    "minicpm": {"rope_neox": False, "embedding_scale": 12.0, "scale_depth": 1.4, "dim_model_base": 256, "longrope": True},
    # BitNet b1.58: rope over halves (llama.cpp puts it with the NeoX architectures)
    "bitnet": {"rope_neox": True},
    # MiniCPM3: MiniCPM's multipliers, which llama.cpp fixes in code (the converter states none), over DeepSeek-V2's
    # latent attention; rope over halves; LongRoPE's factor tensors wherever the file has them (models/minicpm3.py)
    "minicpm3": {"rope_neox": True, "embedding_scale": 12.0, "scale_depth": 1.4, "dim_model_base": 256},
    # AFMoE (Trinity): neox rope; where a window is stated, 3 window layers then 1 global (llama.cpp's fixed pattern);
    # the chosen experts' weights as the router gave them unless expert_weights_norm says (llama.cpp's default)
    "afmoe": {"rope_neox": True, "swa_pattern": 4, "expert_weights_norm": False},
    # Muse Glimmer: rope over consecutive pairs; the file's sliding_window_pattern, else 3 window layers then 1 global
    "muse-glimmer": {"rope_neox": False, "swa_pattern": 4},
    # Laguna: neox rope; where a window is stated, the file's sliding_window_pattern, else 1 global layer then 3 window
    # ones (llama.cpp's pattern, global first); the chosen experts' weights as the router gave them unless expert_weights_norm says
    "laguna": {"rope_neox": True, "swa_pattern": 4, "swa_dense_first": True, "expert_weights_norm": False},
    # Hy3: neox rope; the chosen experts' weights as the router gave them unless expert_weights_norm says; NextN layers after the trunk
    "hy_v3": {"rope_neox": True, "expert_weights_norm": False, "nextn": True},
    "hy_v4": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},  # (HY V4: rope over consecutive pairs; models/hy_v4.py)
    # EXAONE MoE: neox rope; the file's sliding_window_pattern, else 3 window layers then 1 global; NextN layers after the trunk
    "exaone-moe": {"rope_neox": True, "swa_pattern": 4, "nextn": True},
    # MiniMax-M2, MiMo-V2-Flash, Step-3.5-Flash: neox rope; MiMo's and Step's windows where the file's pattern says (models/
    # minimax_m2.py, mimo2.py, step35.py); Mistral Small 4: deepseek2's latent attention and its defaults (models/mistral4.py)
    "minimax-m2": {"rope_neox": True},
    # MiniMax-M3: neox rope; the chosen experts' weights as the router gave them unless expert_weights_norm says (llama.cpp's default)
    "minimax-m3": {"rope_neox": True, "expert_weights_norm": False},
    "mimo2": {"rope_neox": True},
    "step35": {"rope_neox": True, "nextn": True},
    "mistral4": {"rope_neox": False, "expert_weights_norm": False},
    "pangu-embedded": {"rope_neox": True},  # (openPangu-Embedded: Llama with Q/K/V/O biases, rope over halves)
    # Phi-3.5-MoE, Hunyuan-A13B, dots.llm1, RND1, GroveMoE: rope over halves (Ling v1: over consecutive pairs); Ling's and
    # dots.llm1's chosen experts' weights as the router gave them unless the file says to renormalise them (the others'
    # graphs always renormalise)
    "phimoe": {"rope_neox": True},
    "bailingmoe": {"rope_neox": False, "expert_weights_norm": False},
    "hunyuan-moe": {"rope_neox": True},
    "dots1": {"rope_neox": True, "expert_weights_norm": False},
    "rnd1": {"rope_neox": True},
    # Dream (Qwen2 trunk), LLaDA-MoE: rope over halves; LLaDA (Llama trunk): over consecutive pairs (llama_model_rope_type)
    "dream": {"rope_neox": True},
    "llada": {"rope_neox": False},
    "llada-moe": {"rope_neox": True, "expert_weights_norm": False},
    "grovemoe": {"rope_neox": True},
    # encoders: ModernBERT's window layers symmetric, of every sliding_window_pattern (3) the first global; EuroBERT rope over
    # halves, llama-embed over consecutive pairs (Llama's); T5 has no rope (relative position buckets)
    "modern-bert": {"rope_neox": True, "swa_pattern": 3, "swa_dense_first": True},
    "eurobert": {"rope_neox": True},
    "llama-embed": {"rope_neox": False},
    "t5encoder": {"rope_neox": False},
    "t5": {"rope_neox": False},  # (the encoder-decoder, for text: models/t5.py)
    # Qwen 1 (fused QKV with bias, the FFN half feed_forward_length wide): rope over halves; Baichuan (7B rope, 13B ALiBi, by
    # depth), XVERSE, Maincoder (QK-norm after the rope): over consecutive pairs; Orion (LayerNorms), Jais-2 (LayerNorms,
    # squared ReLU): over halves; PLaMo 3: over halves, where the file states a window 7 window layers then 1 global
    # (llama.cpp's default pattern 8), the window layers at rope.freq_base_swa (models/qwen.py ... jais2.py)
    "qwen": {"rope_neox": True},
    "baichuan": {"rope_neox": False},
    "orion": {"rope_neox": True},
    "xverse": {"rope_neox": False},
    "plamo3": {"rope_neox": True, "swa_pattern": 8},
    "maincoder": {"rope_neox": False},
    "jais2": {"rope_neox": True},
    # Jais (ALiBi, no rope), CodeShell (GPT-2's block, rope over halves), Refact (Llama with ALiBi, no rope), PLM (latent
    # attention, rope over consecutive pairs of the rope part), PLaMo (rope over halves), Chameleon (over consecutive pairs)
    "jais": {"rope_neox": False},
    "codeshell": {"rope_neox": True},
    "refact": {"rope_neox": False},
    "plm": {"rope_neox": False},
    "plamo": {"rope_neox": True},
    "chameleon": {"rope_neox": False},
    # GPT-2 (learned positions, no rope), StarCoder2 (rope over halves, the whole head; llama.cpp never reads its
    # sliding window, so neither does kvrun: attention.sliding_window ignored), GPT-NeoX / Pythia (rope over halves of
    # the first rope.dimension_count dimensions): LayerNorms with biases, attention.layer_norm_epsilon
    "gpt2": {"rope_neox": False},
    "starcoder2": {"rope_neox": True, "swa_ignored": True},
    "gptneox": {"rope_neox": True},
    "starcoder": {"rope_neox": False},  # (learned positions, no rope)
    "bloom": {"rope_neox": False},  # (ALiBi, no rope)
    "mpt": {"rope_neox": False},  # (ALiBi, no rope)
    # GLM-4-0414 (dense): rope over consecutive pairs; GLM-4.5/4.6 (MoE): neox pairs, the chosen experts' weights as the
    # router gave them unless the file says to renormalise them.  Both rope part of each head (rope.dimension_count) and
    # may end in multi-token-prediction (NextN) layers, counted in block_count, which llama.cpp loads but never runs
    # (models/glm4.py)
    "glm4": {"rope_neox": False, "nextn": True},
    "glm4moe": {"rope_neox": True, "expert_weights_norm": False, "nextn": True},
    # SmallThinker: neox rope; where the file states a window, of every sliding_window_pattern layers (4 unless stated) the
    # *first* is global and the rest attend within 4096 (llama.cpp's, whatever the file states) (models/smallthinker.py)
    "smallthinker": {"rope_neox": True, "swa_pattern": 4, "swa_dense_first": True, "swa_window": 4096},
    # Ling/Ring 2.0: neox rope over part of each head, the chosen experts' weights as the router gave them unless the file
    # says to renormalise them, NextN layers at the end of block_count which llama.cpp never runs (models/bailingmoe2.py)
    "bailingmoe2": {"rope_neox": True, "expert_weights_norm": False, "nextn": True},
    # RWKV-7: no attention, no rope; LayerNorms with biases (attention.layer_norm_epsilon), its WKV hyperparameters read
    # by models/rwkv7.py
    "rwkv7": {"rope_neox": False},
    "rwkv6": {"rope_neox": False},  # RWKV-6 alike (models/rwkv6.py)
    "arwkv7": {"rope_neox": False},  # ARWKV-7 alike, its RMSNorms' eps attention.layer_norm_rms_epsilon (models/arwkv7.py)
    "rwkv6qwen2": {"rope_neox": False},  # RWKV6-Qwen2 alike (models/rwkv6qwen2.py)
    # EXAONE 4.0: window layers in the 32B only (llama.cpp decides by its depth, 64 layers): 3 window
    # layers then 1 global (no rope), a window of 4096 unless the file says
    "exaone4": {"rope_neox": True, "swa_pattern": 4, "swa_n_layer": 64, "sliding_window": 4096},
    # Seed-OSS: the Llama block, QKV biases, rope over halves (models/seed_oss.py); Apertus: QK-norm, rope over halves with
    # Llama 3's factors, xIELU FFN (models/apertus.py); Command R: Command R7B's block without windows, every layer
    # rotating over consecutive pairs (models/command_r.py)
    "seed_oss": {"rope_neox": True},
    "apertus": {"rope_neox": True},
    "command-r": {"rope_neox": False},
    # Command R7B: 3 window layers then 1 global (no rope); LayerNorms without bias (attention.layer_norm_epsilon)
    "cohere2": {"rope_neox": False, "swa_pattern": 4},
    # Cohere2 MoE: the file's pattern array, else of every 4 layers the first global (dense_first); its experts' weights as the
    # router gave them unless expert_weights_norm says; the MTP block after the trunk not run (models/cohere2moe.py)
    "cohere2moe": {"rope_neox": False, "swa_pattern": 4, "swa_dense_first": True, "expert_weights_norm": False, "nextn": True},
    # Maple: neox rope on the window layers of the file's (required) pattern array only (models/maple.py)
    "maple": {"rope_neox": True},
    # Spark-X2.5: neox rope on every layer, the window layers' own where the file's (required) pattern array says (models/spark2_5.py)
    "spark2_5": {"rope_neox": True},
    # HRM-Text: neox rope on every layer; block_count the cache slots of its stacks' passes (models/hrm_text.py)
    "hrm_text": {"rope_neox": True},
    # Mamba-2: every layer a state-space (SSM) mixer, no attention, no rope
    "mamba2": {"rope_neox": False},
    "mamba": {"rope_neox": False},  # Mamba 1 (Falcon-Mamba: dt, B and C RMS-normed where ssm.dt_b_c_rms says)
    # Granite 4.0-H (and Bamba): Mamba-2 layers and attention ones (which: the per-layer head_count_kv, 0 for
    # Mamba-2), Granite's multipliers; rope only where rope.scaling.finetuned says (Granite 4.0-H has none)
    "granitehybrid": {"rope_neox": False},
    # Falcon-H1: attention (rope over halves) and a Mamba-2 mixer side by side in every layer; its muP multipliers
    # are in the weights (the converter folds them), none at run time
    "falcon-h1": {"rope_neox": True, "ssm_parallel": True},  # (every layer: attention and a Mamba-2 mixer side by side)
    # Nemotron-H: Mamba-2, attention (no rope) or a squared-ReLU FFN alone in each layer (which: the per-layer
    # head_count_kv and feed_forward_length, both 0 for Mamba-2)
    "nemotron_h": {"rope_neox": False},
    # Qwen3.5 (dense, MoE), Qwen3-Next: Gated DeltaNet layers and, every full_attention_interval-th (4 unless stated),
    # gated attention with partial rope: Qwen3.5's interleaved multimodal rope (neox pairs), Qwen3-Next's neox
    "qwen35": {"rope_neox": True, "full_attention_interval": 4},
    "qwen35moe": {"rope_neox": True, "full_attention_interval": 4},
    "qwen3next": {"rope_neox": True, "full_attention_interval": 4},
    # MiniMax-01: lightning-attention layers and, every full_attention_interval-th (8 unless stated, or the file's
    # attention.recurrent_layers), softmax attention with partial neox rope (models/minimax_01.py)
    "minimax-01": {"rope_neox": True, "full_attention_interval": 8},
    # Kimi Linear: KDA layers (head_count_kv 0) among MLA layers that turn nothing (models/kimi_linear.py)
    "kimi-linear": {"rope_neox": False},
    # Ling 3: Kimi Linear's layers (models/bailingmoe3.py: normal rope, halves where the VL files state sections), NextN layers past the trunk
    "bailingmoe3": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},
    # Kimi K3: Kimi Linear's layers (models/kimi_k3.py), the experts renormalised only where the file says
    "kimi-k3": {"rope_neox": False, "expert_weights_norm": False},
    # GLM-5.3-Flash: Kimi Linear's layer kinds with the MLA rope-less (models/glm5_next.py), the experts renormalised only where the file says, NextN layers past the trunk
    "glm5-next": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},
    # Gemma 3n (E2B, E4B): 4 sliding-window layers then 1 global, local rope base 10k, attention unscaled (Q and K
    # are normed), logits soft-capped at 30; what llama.cpp fixes in code: layers from the 20th on keep no K/V
    # (they read an earlier layer's), the first 10 layers' FFN gates sparse (kept above mean + 1.645 std, the
    # normal's 95th percentile), 4 AltUp streams (the first the one layers compute on), per-layer inputs 256
    # wide, LAuReL of rank 64
    "gemma3n": {"rope_neox": True, "swa_pattern": 5, "rope_theta_swa": 10_000.0, "final_logit_softcap": 30.0,
                "n_layer_kv_from_start": 20, "n_layer_sparsity": 10, "sparsity_std_mul": 1.6448533535003662,
                "n_altup": 4, "i_altup_act": 0, "n_embd_altup": 256, "laurel_rank": 64},
    # Gemma 4 (models/gemma4.py): what Gemma 3n fixes in code its files state (the window pattern a flag a layer,
    # shared_kv_layers, embedding_length_per_layer_input, the window layers' heads and rope); rope over halves
    "gemma4": {"rope_neox": True},
    "gemma4-assistant": {"rope_neox": True},
    "eagle3": {"rope_neox": False},  # (EAGLE-3 drafts: Llama's rope; models/eagle3.py)
    # DBRX, Arctic, Grok (softmax-routed experts, renormalised); Nemotron-H MoE: no rope, its sigmoid weights as the router
    # gave them unless expert_weights_norm says (models/dbrx.py, arctic.py, grok.py, nemotron_h_moe.py)
    "dbrx": {"rope_neox": True},
    "arctic": {"rope_neox": False},
    "grok": {"rope_neox": True},
    "nemotron_h_moe": {"rope_neox": False, "expert_weights_norm": False},
    # the language sides of CogVLM, DeepSeek-OCR, GLM-5 (DeepSeek sparse attention), HunyuanOCR/Hunyuan-VL, PaddleOCR-VL
    # (models/cogvlm.py, deepseek2_ocr.py, glm_dsa.py, hunyuan_vl.py, paddleocr.py): glm-dsa's MLA heads as deepseek2's and its NextN layers past the trunk
    "cogvlm": {"rope_neox": True},
    "deepseek2-ocr": {"rope_neox": True, "expert_weights_norm": False},
    "glm-dsa": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},
    "dots3note": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},  # (models/dots3note.py: its MTP layer past the trunk)
    "hunyuan_vl": {"rope_neox": True, "rope_alpha": True},
    "paddleocr": {"rope_neox": True},
    # Mellum 2: neox rope; the file's sliding_window_pattern, else 3 window layers then 1 global (models/mellum.py)
    "mellum": {"rope_neox": True, "swa_pattern": 4},
    "nanbeige": {"rope_neox": False},  # (Nanbeige: Llama's rope over consecutive pairs; models/nanbeige.py)
    "talkie": {"rope_neox": True},  # (Talkie: rope over halves; models/talkie.py)
    "deepseek32": {"rope_neox": False, "expert_weights_norm": False, "nextn": True},  # (DeepSeek-V3.2: deepseek2's rope, its MTP layer past the trunk; models/deepseek32.py)
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer (names as in llama.cpp)."""

    arch: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int  # per-head width of Q and K
    head_dim_v: int  # per-head width of V
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    norm_eps: float  # the RMSNorms' eps; the LayerNorms' (phi2, stablelm: attention.layer_norm_epsilon) where a file states that
    rope_theta: float
    rope_dim: int
    rope_neox: bool
    rope_scaling_type: str = "none"  # none | linear | yarn
    rope_scaling_factor: float = 1.0
    rope_orig_ctx: int = 0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_ext_factor: float = -1.0  # <0: derived from scaling factor as llama.cpp does
    yarn_attn_factor: float = 1.0
    rope_theta_swa: float = 0.0  # rope base of sliding-window layers (0: same as global)
    sliding_window: int = 0  # 0: no sliding-window layers
    swa_layers: tuple[bool, ...] = field(default_factory=tuple)  # per layer: uses the window
    attn_logit_softcap: float = 0.0
    final_logit_softcap: float = 0.0
    # Granite's multipliers (1.0 / 0.0: none): embeddings times embedding_scale, each block's output
    # times residual_scale before its residual add, attention scores times attention_scale instead of
    # 1/sqrt(head_dim), logits divided by logit_scale (Cohere's multiplied by theirs: Model.logit_multiplier)
    embedding_scale: float = 1.0
    residual_scale: float = 1.0
    attention_scale: float = 0.0
    logit_scale: float = 1.0
    # mixture of experts (0: a dense FFN): experts per layer, chosen per token, their FFN width, and
    # whether the chosen experts' router probabilities are renormalised to sum 1
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    expert_weights_norm: bool = True
    # Mamba-2's state-space layers (0: none): the convolution's kernel, the inner width, the state's width
    # (d_state), the heads (llama.cpp's ssm_dt_rank), the groups B and C are shared among; which layers are
    # Mamba-2 (head_count_kv 0).  Gated DeltaNet (qwen35, qwen35moe, qwen3next) reads the same keys as llama.cpp does:
    # d_inner the value heads' width, d_state a head's width (d_k = d_v), dt_rank the value heads, n_group the key
    # heads; ssm_layers its linear-attention layers (all but every full_attention_interval-th)
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_dt_rank: int = 0
    ssm_n_group: int = 0
    ssm_layers: tuple[bool, ...] = field(default_factory=tuple)
    #: KV heads of each layer where they differ by layer (OpenELM); empty: n_head_kv in every attention layer
    kv_heads_per_layer: tuple[int, ...] = field(default_factory=tuple)
    ssm_parallel: bool = False  # every layer a Mamba-2 mixer beside its attention (Falcon-H1), not in place of it
    # Nemotron-H's layers that are an FFN alone (no attention, no state: feed_forward_length > 0 where head_count_kv is 0)
    ffn_layers: tuple[bool, ...] = field(default_factory=tuple)
    # Gemma 3n (models/gemma3n.py): layers from n_layer_kv_from_start on store no K/V (-1: every layer its own);
    # the first n_layer_sparsity layers' FFN gates keep only what exceeds mean + sparsity_std_mul * std; n_altup
    # streams of the hidden state (i_altup_act: the one a layer computes on), per-layer inputs n_embd_altup wide,
    # LAuReL's low-rank residual of rank laurel_rank
    n_layer_kv_from_start: int = -1
    #: K+V values one token stores in each layer where layers differ in width or store none (Gemma 3n, Gemma 4:
    #: shared K/V, two head widths); empty: kv_values_by_layer counts every attention layer alike.  (What a model's cache
    #: holds in another form, MLA's latent, its class says: models/common.py's ``Model.cache_widths``)
    kv_values_per_layer: tuple[int, ...] = field(default_factory=tuple)
    n_layer_sparsity: int = 0
    sparsity_std_mul: float = 0.0
    n_altup: int = 0
    i_altup_act: int = 0
    n_embd_altup: int = 0
    laurel_rank: int = 0
    file_type: int = -1

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]

    def kv_values_by_layer(self) -> tuple[int, ...]:
        """K+V values one token stores in each layer as the file's geometry lays them out: 0 in a layer that keeps none
        (state-space and FFN-only layers, Gemma 3n's sharing ones), each layer's own KV heads where they differ."""
        if self.kv_values_per_layer:
            return self.kv_values_per_layer
        if self.kv_heads_per_layer:  # (OpenELM: each layer its own count)
            return tuple(n * (self.head_dim + self.head_dim_v) for n in self.kv_heads_per_layer)
        per_layer = self.n_head_kv * (self.head_dim + self.head_dim_v)
        ssm, ffn = self.ssm_layers, self.ffn_layers
        return tuple(0 if (il < len(ssm) and ssm[il]) or (il < len(ffn) and ffn[il]) else per_layer for il in range(self.n_layer))

    def kv_bytes_per_token(self, bits: float = 16.0) -> float:
        """K+V bytes one token occupies over all layers at ``bits`` per value, by :meth:`kv_values_by_layer`."""
        return sum(self.kv_values_by_layer()) * bits / 8.0


def _req(g: GGUFFile, key: str) -> Any:
    v = g.arch_get(key)
    if v is None:
        raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
    return v


def _expert_width(g: GGUFFile, arch: str, n_ff: int) -> int:
    """An expert's FFN width: ``expert_feed_forward_length``, a number or (llama.cpp's get_key_or_arr) one a layer, the
    dense layers' 0 among them; kvrun's experts are one width a model, so a file whose layers differ is refused."""
    v = g.arch_get("expert_feed_forward_length", 0)
    if hasattr(v, "__len__"):
        widths = {int(x) for x in v if int(x)}
        if len(widths) > 1:
            raise UnsupportedModelError(f"{g.path}: {arch}.expert_feed_forward_length gives the layers' experts different "
                                        f"widths ({', '.join(map(str, sorted(widths)))}); kvrun runs one width a model")  # fmt: skip
        v = widths.pop() if widths else 0
    return int(v or n_ff)


def load_config(g: GGUFFile) -> ModelConfig:
    """Read a :class:`ModelConfig` from an open GGUF file.

    Raises
    ------
    UnsupportedModelError : the architecture is not one kvrun runs.
    GGUFError : a required hyperparameter is missing.
    """
    arch = g.architecture
    if g.get("general.type") == "adapter":
        raise GGUFError(f"{g.path}: a LoRA adapter, not a model; give it with --lora beside the model it was made for")
    if arch == "clip":  # (llama.cpp's mmproj files: an image encoder and projector, not a text model)
        raise GGUFError(f"{g.path}: a multimodal projector (mmproj), not a model; give it with --mmproj beside the model it was made for")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{g.path}: architecture {arch!r} is not supported; kvrun runs {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    d = _ARCH_DEFAULTS[arch]
    n_embd = int(_req(g, "embedding_length"))
    n_head = _req(g, "attention.head_count")
    n_head = int(n_head if not hasattr(n_head, "__len__") else max(n_head))  # (OpenELM: a per-layer list; the widest layer's)
    kv = g.arch_get("attention.head_count_kv", n_head)
    # (a per-layer list: LFM2 states 0 for its convolution layers, Granite 4.0-H for its Mamba-2 ones; the
    # attention layers' count is the one)
    n_head_kv = int(kv if not hasattr(kv, "__len__") else max(kv))
    # (Mamba-2 states 0 heads: no attention at all)
    head_dim = int(g.arch_get("attention.key_length", n_embd // n_head if n_head else 0))
    head_dim_v = int(g.arch_get("attention.value_length", head_dim))
    n_layer = int(_req(g, "block_count"))
    if arch in ("deepseek2", "mistral4", "glm-dsa", "deepseek32"):  # (MLA: kvrun caches every head's decompressed K and V, llama.cpp's n_embd_head_k_mla and
        # n_embd_head_v_mla where the file states both (newer converters: key_length is then the latent's), as many
        # K/V heads as query heads)
        k_mla, v_mla = int(g.arch_get("attention.key_length_mla", 0) or 0), int(g.arch_get("attention.value_length_mla", 0) or 0)
        if k_mla and v_mla:
            head_dim, head_dim_v = k_mla, v_mla
        n_head_kv = n_head
    if arch == "minicpm3":  # (MLA as deepseek2; V's heads llama.cpp's n_embd_head_v: n_embd / n_head unless stated, not
        # key_length, which the converter states as qk_nope + qk_rope)
        head_dim_v, n_head_kv = int(g.arch_get("attention.value_length", n_embd // n_head)), n_head
    if arch in ("kimi-linear", "bailingmoe3", "kimi-k3", "hy_v4", "glm5-next"):  # (MLA as deepseek2's, decompressed: llama.cpp requires key_length_mla and value_length_mla)
        head_dim, head_dim_v, n_head_kv = int(_req(g, "attention.key_length_mla")), int(_req(g, "attention.value_length_mla")), n_head
    if "full_attention_interval" in d:  # (Qwen3.5's multi-token-prediction block comes after the trunk, counted in
        # block_count: llama.cpp's graph runs the trunk alone, and so does kvrun)
        n_layer -= int(g.arch_get("nextn_predict_layers", 0) or 0)
    if d.get("nextn"):  # (GLM's NextN layers, the last nextn_predict_layers of block_count: the trunk alone runs)
        n_layer -= int(g.arch_get("nextn_predict_layers", 0) or 0)
    n_ff = g.arch_get("feed_forward_length")
    if n_ff is None and arch in ("qwen35moe", "qwen3next", "maple") and g.arch_get("expert_feed_forward_length") is not None:
        n_ff = 0  # (llama.cpp reads it optionally; a mixture of experts without a dense FFN need not state it)
    if n_ff is None:
        raise GGUFError(f"{g.path}: metadata {arch}.feed_forward_length is missing")
    n_ff = int(n_ff if not hasattr(n_ff, "__len__") else max(n_ff) if arch == "openelm" else n_ff[0])  # (OpenELM: its widest
    # layer's; each layer's own width is its weights', models/openelm.py)

    tokens = g.get("tokenizer.ggml.tokens")
    n_vocab = int(g.arch_get("vocab_size", len(tokens) if tokens is not None else 0))
    if n_vocab == 0 and "token_embd.weight" in g.tensors:
        n_vocab = g.tensors["token_embd.weight"].shape[0]

    scaling = str(g.arch_get("rope.scaling.type", "none"))
    factor = float(g.arch_get("rope.scaling.factor", 1.0) or 1.0)
    if scaling == "none" and g.arch_get("rope.scale_linear") is not None:
        scaling, factor = "linear", float(g.arch_get("rope.scale_linear"))
    if scaling == "longrope" and d.get("longrope"):  # (MiniCPM4: rope_factors_long/short, chosen by the model's class)
        pass
    elif scaling not in ("none", "linear", "yarn"):
        raise UnsupportedModelError(f"{g.path}: rope scaling {scaling!r} is not supported (none, linear, yarn are)")

    sliding_window = int(g.arch_get("attention.sliding_window", 0) or 0)
    if "swa_n_layer" in d:  # (EXAONE 4.0) windows at that depth only, whatever the file states
        sliding_window = (sliding_window or d["sliding_window"]) if n_layer == d["swa_n_layer"] else 0
    if d.get("swa_window") and sliding_window:  # (SmallThinker: the window llama.cpp fixes wherever the file states one)
        sliding_window = int(d["swa_window"])
    if d.get("swa_ignored"):  # (StarCoder2: llama.cpp attends over the whole context whatever the file states)
        sliding_window = 0
    swa_layers: tuple[bool, ...] = ()
    if sliding_window:
        pattern = g.arch_get("attention.sliding_window_pattern")
        if pattern is not None and hasattr(pattern, "__len__"):
            swa_layers = tuple(bool(x) for x in pattern)
        else:
            period = int(pattern) if pattern is not None else int(d.get("swa_pattern", 0))
            if period > 0:
                swa_layers = tuple((il % period) < period - 1 for il in range(n_layer))
                if d.get("swa_dense_first"):  # (SmallThinker's: the global layer first in each period, not last)
                    swa_layers = tuple(il % period != 0 for il in range(n_layer))
            else:
                swa_layers = (True,) * n_layer

    kv_per_layer = list(kv) if hasattr(kv, "__len__") else [kv] * n_layer
    ssm_layers = tuple(int(n) == 0 for n in kv_per_layer) if arch in ("mamba2", "granitehybrid") else ()
    if arch in ("jamba", "plamo2"):  # (their Mamba layers: head_count_kv 0; they keep no K/V)
        ssm_layers = tuple(int(n) == 0 for n in kv_per_layer)
    if arch in ("kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next"):  # (its KDA layers: head_count_kv 0; the trunk's, past it NextN layers)
        ssm_layers = tuple(int(n) == 0 for n in kv_per_layer)[:n_layer]
    rope_theta = float(g.arch_get("rope.freq_base", 10_000.0))
    alpha = float(g.arch_get("rope.scaling.alpha", 0.0) or 0.0)
    if d.get("rope_alpha") and alpha > 0:  # (llama.cpp's powf, in float32)
        import numpy as np

        rope_theta = float(np.float32(rope_theta) * np.float32(alpha) ** (np.float32(head_dim) / np.float32(head_dim - 2)))
    if "scale_depth" in d:  # (MiniCPM files from older converters state no multipliers)
        d = {**d, "residual_scale": d["scale_depth"] / math.sqrt(n_layer), "logit_scale": n_embd / d["dim_model_base"]}
    ffn_layers: tuple[bool, ...] = ()
    if "full_attention_interval" in d:  # (llama.cpp: the file's attention.recurrent_layers where stated, else every
        # full_attention_interval-th layer attends and the rest are Gated DeltaNet)
        recr = g.arch_get("attention.recurrent_layers")
        if recr is not None and hasattr(recr, "__len__"):
            ssm_layers = tuple(bool(x) for x in recr)[:n_layer]
        else:
            every = int(g.arch_get("full_attention_interval", d["full_attention_interval"]) or d["full_attention_interval"])
            ssm_layers = tuple((il + 1) % every != 0 for il in range(n_layer))
    if arch in ("nemotron_h", "nemotron_h_moe"):  # (llama.cpp: a layer is Mamba-2 where both its head_count_kv and feed_forward_length are 0)
        ff = g.arch_get("feed_forward_length")
        ff_per_layer = [int(n) for n in ff] if hasattr(ff, "__len__") else [int(ff)] * n_layer
        ssm_layers = tuple(int(n) == 0 and f == 0 for n, f in zip(kv_per_layer, ff_per_layer))
        ffn_layers = tuple(int(n) == 0 and f > 0 for n, f in zip(kv_per_layer, ff_per_layer))
    # (fixed, as llama.cpp's: the files' shared_kv_layers, E2B's 10 of 30 and E4B's 15 of 35, leave the same 20)
    from_start = int(d.get("n_layer_kv_from_start", -1)) if arch != "gemma4" else n_layer - int(g.arch_get("attention.shared_kv_layers", 0) or 0)
    return ModelConfig(
        arch=arch,
        name=str(g.get("general.name", arch)),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_ff=n_ff,
        n_vocab=n_vocab,
        n_ctx_train=int(g.arch_get("context_length", 2048)),
        norm_eps=float(g.arch_get("attention.layer_norm_rms_epsilon", g.arch_get("attention.layer_norm_epsilon", 1e-5))),
        rope_theta=rope_theta,
        rope_dim=int(g.arch_get("rope.dimension_count", head_dim)),
        rope_neox=bool(d["rope_neox"]),
        rope_scaling_type=scaling,
        rope_scaling_factor=factor,
        rope_orig_ctx=int(g.arch_get("rope.scaling.original_context_length", 0) or 0),
        yarn_beta_fast=float(g.arch_get("rope.scaling.yarn_beta_fast", 32.0)),
        yarn_beta_slow=float(g.arch_get("rope.scaling.yarn_beta_slow", 1.0)),
        yarn_attn_factor=float(g.arch_get("rope.scaling.attn_factor", 1.0)),
        rope_theta_swa=float(g.arch_get("rope.freq_base_swa", d.get("rope_theta_swa", 0.0))),
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        attn_logit_softcap=float(g.arch_get("attn_logit_softcapping", 0.0) or 0.0),
        final_logit_softcap=float(g.arch_get("final_logit_softcapping", d.get("final_logit_softcap", 0.0)) or 0.0),
        embedding_scale=float(g.arch_get("embedding_scale", d.get("embedding_scale", 1.0)) or 1.0),
        residual_scale=float(g.arch_get("residual_scale", d.get("residual_scale", 1.0)) or 1.0),
        attention_scale=float(g.arch_get("attention.scale", 0.0) or 0.0),
        logit_scale=float(g.arch_get("logit_scale", d.get("logit_scale", 1.0)) or 1.0),
        n_expert=int(g.arch_get("expert_count", 0) or 0),
        n_expert_used=int(g.arch_get("expert_used_count", 0) or 0),
        n_ff_exp=_expert_width(g, arch, n_ff),
        expert_weights_norm=bool(g.arch_get("expert_weights_norm", d.get("expert_weights_norm", True))),
        ssm_d_conv=int(g.arch_get("ssm.conv_kernel", 0) or 0),
        ssm_d_inner=int(g.arch_get("ssm.inner_size", 0) or 0),
        ssm_d_state=int(g.arch_get("ssm.state_size", 0) or 0),
        ssm_dt_rank=int(g.arch_get("ssm.time_step_rank", 0) or 0),
        ssm_n_group=int(g.arch_get("ssm.group_count", 0) or 0),
        ssm_layers=ssm_layers,
        kv_heads_per_layer=tuple(int(n) for n in kv_per_layer) if arch in ("openelm", "deci") else (),
        ssm_parallel=bool(d.get("ssm_parallel", False)),
        ffn_layers=ffn_layers,
        n_layer_kv_from_start=from_start,
        kv_values_per_layer=_shared_kv_values(g, n_layer, from_start, kv_per_layer, swa_layers, head_dim, head_dim_v) if arch in ("gemma3n", "gemma4") else (),
        n_layer_sparsity=int(d.get("n_layer_sparsity", 0)),
        sparsity_std_mul=float(d.get("sparsity_std_mul", 0.0)),
        n_altup=int(d.get("n_altup", 0)),
        i_altup_act=int(d.get("i_altup_act", 0)),
        n_embd_altup=int(d.get("n_embd_altup", 0)) if arch != "gemma4" else int(g.arch_get("embedding_length_per_layer_input", 0) or 0),
        laurel_rank=int(d.get("laurel_rank", 0)),
        file_type=int(g.get("general.file_type", -1)),
    )


def yarn_mscale(factor: float) -> float:
    """YaRN attention magnitude correction, 0.1*ln(s)+1 (llama.cpp ``rope_yarn``)."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def _shared_kv_values(g: GGUFFile, n_layer: int, from_start: int, kv_per_layer: list, swa_layers: tuple[bool, ...],
                      head_dim: int, head_dim_v: int) -> tuple[int, ...]:
    """K+V values a token stores in each layer of Gemma 3n / Gemma 4 (the caller's geometry, read once): none from
    ``from_start`` (n_layer_kv_from_start) on (those layers read an earlier layer's cache), each layer's own KV heads,
    the window layers' heads key_length_swa wide (Gemma 4's; the only keys read here)."""
    k_swa = int(g.arch_get("attention.key_length_swa", head_dim) or head_dim)
    v_swa = int(g.arch_get("attention.value_length_swa", k_swa) or k_swa)
    return tuple(
        0 if 0 <= from_start <= il else int(kv_per_layer[il]) * ((k_swa + v_swa) if swa_layers and swa_layers[il] else (head_dim + head_dim_v))
        for il in range(n_layer)
    )
