"""Loading and launching the CUDA kernels of ``ops/gpu/*.cu``.

Every kernel the Python side launches is declared in :data:`KERNELS` with its
source file and argument types; :func:`launch` converts the arguments to those
types (CuPy would otherwise pass a Python ``int`` as 64-bit and a ``float`` as
double, silently shifting every later argument), and the compile check
(``compile_check.py``) holds the table to the parameter lists in the compiled
PTX, so a wrapper and its kernel cannot drift apart unnoticed, GPU or not.

Argument codes: ``p`` device array (pointer), ``i`` int32, ``l`` int64,
``f`` float32.

Kernels run on a *runtime*: :class:`CupyRuntime` (the GPU) unless
:func:`set_runtime` installs another, such as ``emulate.EmulatedRuntime``
which runs them on the CPU for tests.  CuPy is imported only when the CuPy
runtime is first needed: the CPU path never touches it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as T

KERNEL_DIR = Path(__file__).resolve().parent
COMPILE_OPTIONS = ("-std=c++17",)
# kvquant.cu makes discrete choices (a value's code: floor(x * inv + z + 0.5); a merge's target).
# Contracted into an FMA, x * inv + z rounds once where the CPU's quantizer (and the emulator)
# round twice, and a group on a near-tie would take another code on the device than on the CPU.
FILE_OPTIONS: dict[str, tuple[str, ...]] = {"kvquant.cu": ("--fmad=false",)}


def compile_options(file: str) -> tuple[str, ...]:
    """NVRTC / nvcc options for one .cu file (CuPy's compile and the compile check use the same)."""
    return COMPILE_OPTIONS + FILE_OPTIONS.get(file, ())

# ggml type id -> kernel name suffix (the X-macro FOR_EACH_QTYPE in quants.cuh)
QTYPE_SUFFIX: dict[int, str] = {
    int(T.F32): "f32",
    int(T.F16): "f16",
    int(T.BF16): "bf16",
    int(T.Q4_0): "q4_0",
    int(T.Q4_1): "q4_1",
    int(T.Q5_0): "q5_0",
    int(T.Q5_1): "q5_1",
    int(T.Q8_0): "q8_0",
    int(T.Q2_K): "q2_k",
    int(T.Q3_K): "q3_k",
    int(T.Q4_K): "q4_k",
    int(T.Q5_K): "q5_k",
    int(T.Q6_K): "q6_k",
    int(T.IQ4_NL): "iq4_nl",
    int(T.IQ4_XS): "iq4_xs",
    int(T.IQ3_XXS): "iq3_xxs",
    int(T.IQ3_S): "iq3_s",
    int(T.IQ2_XXS): "iq2_xxs",
    int(T.IQ2_XS): "iq2_xs",
    int(T.IQ2_S): "iq2_s",
    int(T.IQ1_S): "iq1_s",
    int(T.IQ1_M): "iq1_m",
    int(T.MXFP4): "mxfp4",
    int(T.TQ1_0): "tq1_0",  # (the ternary types: BitNet b1.58, TriLM)
    int(T.TQ2_0): "tq2_0",
}


@dataclass(frozen=True)
class Kernel:
    file: str  # .cu file under ops/gpu
    args: str  # argument codes, one per parameter


KERNELS: dict[str, Kernel] = {}


def _declare(file: str, name: str, args: str) -> None:
    KERNELS[name] = Kernel(file, args)


for _sfx in QTYPE_SUFFIX.values():
    # w, x, up, y, xn, n_rows, n_cols, row_bytes, acc, act, write_xn, eps
    _declare("qmatmul.cu", f"matvec_{_sfx}", "pppppiiiiiif")
    # w0, w1, w2, x, y0, y1, y2, nw, xn, n0, n1, n2, n_cols, row_bytes, norm, eps
    _declare("qmatmul.cu", f"matvec3_{_sfx}", "pppppppppiiiiiif")
    _declare("qmatmul.cu", f"matmul_{_sfx}", "pppiiii")  # w, x, y, n_rows, n_cols, n_tok, row_bytes
    _declare("qmatmul.cu", f"get_rows_{_sfx}", "pppii")  # w, ids, out, n_cols, row_bytes
_declare("nn.cu", "rms_norm_f32", "pppifi")  # x, w, out, n, eps, acc
_declare("nn.cu", "rms_norm_heads_f32", "ppiif")  # x, w, n_rows, head_dim, eps
_declare("nn.cu", "layer_norm_f32", "ppppifi")  # x, w, b, out, n, eps, has_b
_declare("nn.cu", "layer_norm_heads_f32", "ppiiif")  # x, w, n_rows, n_head, head_dim, eps
_declare("nn.cu", "rope_f32", "ppppiiiii")  # x, pos, cos, sin, T, n_head, head_dim, half, neox
_declare("nn.cu", "rope_qk_f32", "pppppiiiiii")  # q, k, pos, cos, sin, T, n_head_q, n_head_k, head_dim, half, neox
# q, k, wq, wk, pos, cos, sin, T, n_head_q, n_head_k, head_dim, half, neox, eps
_declare("nn.cu", "rope_qk_norm_f32", "pppppppiiiiiif")
_declare("nn.cu", "silu_mul_f32", "pppl")  # gate, up, out, n
_declare("nn.cu", "gelu_mul_f32", "pppl")
_declare("nn.cu", "gelu_f32", "ppl")  # x, out, n
_declare("nn.cu", "relu_sqr_f32", "ppl")  # x, out, n
_declare("nn.cu", "xielu_f32", "pplffff")  # x, out, n, a_p, a_n, beta, eps
_declare("nn.cu", "copy_f32", "ppl")  # src, dst, n
_declare("nn.cu", "add_f32", "ppl")  # x, y, n
_declare("nn.cu", "add_bias_f32", "ppli")  # x, b, total, n
_declare("nn.cu", "scale_f32", "pfl")  # x, s, n
_declare("nn.cu", "softcap_f32", "pfl")  # x, cap, n
_declare("nn.cu", "clamp_f32", "pfl")  # x, limit, n
_declare("nn.cu", "mul_vec_f32", "pppil")  # x, w, out, n, total
_declare("nn.cu", "softplus_mul_f32", "ppll")  # x, s, rep, n
# k_new, v_new, pos, k_cache, v_cache, kpos, n_kv, D, Dv, cap
_declare("attention.cu", "kv_store_f16", "ppppppiiii")
# q, k, v, kpos, qpos, part_o, part_m, part_l, out, alibi, sinks, n_slots, cap, n_head, n_kv, D, Dv, window, scale, softcap,
# direct, has_alibi, has_sinks, vs (V's row stride: Dv, or D where V is read through K's rows)
_declare("attention.cu", "attn_decode_partial_f16", "pppppppppppiiiiiiiffiiii")
# part_o, part_m, part_l, out, sinks, n_head, n_split, Dv, has_sinks
_declare("attention.cu", "attn_decode_reduce", "pppppiiii")
# q, k, v, kpos, qpos, out, alibi, sinks, T, n_slots, cap, n_head, n_kv, D, Dv, window, scale, softcap, BQ, BKV, has_alibi,
# has_sinks, vs
_declare("attention.cu", "attn_prefill_f16", "ppppppppiiiiiiiiffiiiii")
# a batch's decode rows, each sequence's ring from a table (batch_attention.cu): k_new, v_new, pos, tab, n_kv, D, Dv
_declare("batch_attention.cu", "kv_store_batch_f16", "ppppiii")
# q, qpos, tab, part_o, part_m, part_l, count, out, alibi, sinks, n_head, n_kv, D, Dv, window, scale, softcap, has_alibi,
# has_sinks
_declare("batch_attention.cu", "attn_decode_batch_f16", "p" * 10 + "iiiiiffii")
# compressed cache (qattention.cu): q, qpos, k16, v16, kc0, km0, vc0, vm0, kc1, km1, vc1, vm1, luts, kpos, logw,
# part_o, part_m, part_l, scores, F, C0, C1, n_head, n_kv, D, Dv, G, wk0, wv0, wk1, wv1, P, use_logw,
# write_scores, window, scale, softcap, alibi, use_alibi
_declare("qattention.cu", "qattn_decode_partial", "p" * 19 + "i" * 16 + "ff" + "pi")
# scores, part_m, part_l, acc, sinks, T, n_head, n_kv, N, n_split, has_sinks
_declare("qattention.cu", "qattn_decode_probs", "pppppiiiiii")
# x16, codes0, meta0, codes1, meta1, lut0, lut1, ids, out, F, C0, C1, Dx, G, w0, w1, stride
_declare("qattention.cu", "qattn_gather_f16", "p" * 9 + "i" * 8)
# writing the compressed cache (kvquant.cu): x, codes, meta, lut, clips, Dx, bits, G
_declare("kvquant.cu", "kvq_quantize_rows", "pppppiii")
# the pools: k16, v16, kc0, km0, vc0, vm0, kc1, km1, vc1, vm1, luts, clips, pos; sizes F, C0, C1, D, Dv, G, wk0, wv0, wk1, wv1
# q, k, v, t_k, mu, pools, qr, plan, ppos, use_plan, j, jq, jc, n_head, rot_k, rot_v, sizes
_declare("kvquant.cu", "kv_decode_push", "p" * 21 + "i" * 7 + "i" * 10)
_declare("kvquant.cu", "kv_fwht_rows", "ppi")  # x, y, n
# k, v, t_k, mu, pools, slots, ppos, T, rot_k, rot_v, sizes
_declare("kvquant.cu", "kv_push_tokens", "p" * 19 + "i" * 3 + "i" * 10)
# q, k, v, t_k, mu, pools (13), qr, rank0, rank1, ps0..2, logw, score, fold0, fold1, plan, ppos; n_ps, use_plan, j, spill,
# n_head, rot_k, rot_v, has_rank0, has_rank1, merge, threshold, has_logw, has_score, n_fold, chunk, sizes (10)
_declare("kvquant.cu", "kv_policy_push", "p" * 30 + "i" * 10 + "f" + "iiii" + "i" * 10)
# k, v, t_k, mu, pools (13), ps0..2, logw, score, fold0, fold1, plan, ppos, init, rs, ri; T, n_ps, rot_k, rot_v, pool_width,
# merge, threshold, has_logw, has_score, n_fold, chunk, sizes (10)
_declare("kvquant.cu", "kv_policy_push_tokens", "p" * 29 + "i" * 6 + "f" + "iiii" + "i" * 10)
_declare("ranks.cu", "pol_pooled_ranks", "pppppii")  # s, pos, out, order, rank, n, width
# mixture of experts (moe.cu): logits, sel_bias, router_b, ids, wts, n_expert, k, gating, norm, has_bias, has_router_b,
# n_group, n_group_used, scale
_declare("moe.cu", "moe_route_f32", "ppppp" + "i" * 8 + "f")
for _sfx in QTYPE_SUFFIX.values():
    # wg, wu, x, ids, gb, ub, g, h, n_ff, n_cols, row_bytes, k, mode, act, has_b
    _declare("moe.cu", f"moe_gate_up_{_sfx}", "p" * 8 + "i" * 7)
    _declare("moe.cu", f"moe_down_{_sfx}", "p" * 6 + "i" * 6)  # wd, h, ids, wts, db, x, n_embd, n_ff, row_bytes, k, acc, has_b
_declare("moe.cu", "moe_gated_add_f32", "pppil")  # x, y, s, n, total
# a prompt's experts grouped (moe.cu, ops/gpu/moe.py grouped): ids, order, inv, offs, n, n_expert; x, order, xg, k, n_cols, total;
# g, u, ids, order, gb, ub, h, n_ff, act, has_b, total; d, ids, inv, wts, db, x, k, n_embd, acc, has_b, total
_declare("moe.cu", "moe_group_slots", "ppppii")
_declare("moe.cu", "moe_gather_rows_f32", "pppiil")
_declare("moe.cu", "moe_glu_rows_f32", "ppppppp" + "iii" + "l")
_declare("moe.cu", "moe_scatter_rows_f32", "pppppp" + "iiii" + "l")
# the mixture-of-experts variants (moe2.cu): wg, wu, x, ids, wts, g, h, n_ff, n_cols, row_bytes, k, mode, act, wbf, limit,
# limit2; wd, h, ids, wts, x, n_embd, n_ff, row_bytes, k, acc, wbf
for _sfx in QTYPE_SUFFIX.values():
    _declare("moe2.cu", f"moe_gate_up_x_{_sfx}", "p" * 7 + "i" * 7 + "ff")
    _declare("moe2.cu", f"moe_down_x_{_sfx}", "p" * 5 + "i" * 6)
_declare("moe2.cu", "moe_chunk_route_f32", "ppppiiiif")  # logits, ids, cids, cw, n_expert, k, kc, group, scale
_declare("moe2.cu", "gelu_f16_mul_f32", "pppl")  # g, u, out, n
_declare("moe2.cu", "swiglu_clamp_f32", "pppfil")  # g, u, out, limit, gate_first, n
_declare("moe2.cu", "swiglu_oai_f32", "pppl")  # g, u, out, n
_declare("moe2.cu", "situ_f32", "pppffl")  # g, u, out, beta, linear_beta, n
_declare("moe2.cu", "sigmoid_mul_f32", "ppll")  # x, s, rep, n
# Kimi K3's cross-layer residual attention (attn_res.cu)
_declare("attn_res.cu", "attn_res_bank_f32", "ppiiil")  # x, bank, slot, n_slot, n_embd, total
_declare("attn_res.cu", "attn_res_mix_f32", "pppp" + "iii" + "f")  # bank, x, score, out, n_bank, n_slot, n_embd, eps
# ungated squared-ReLU experts (moe3.cu; their down products moe2.cu's moe_down_x): wu, x, ids, h, n_ff, n_cols, row_bytes, k
for _sfx in QTYPE_SUFFIX.values():
    _declare("moe3.cu", f"moe_up_sq_{_sfx}", "pppp" + "iiii")
# multi-head latent attention (mla.cu): kva, w, kvc, rank, stride, eps; q_raw, k_nope, kva, q, k, T, n_head, nope, n_rot, stride
_declare("mla.cu", "mla_latent_norm_f32", "pppiif")
_declare("mla.cu", "mla_qk_f32", "pppppiiiii")
_declare("mla.cu", "mla_rope_norm_f32", "ppiiif")  # kva, w, T, n_rot, stride, eps (dots.note's rope key norm, in place)
# its absorbed form (mla_latent.cu): kva, w, k, v, rank, n_rot, eps; q_raw, wk, q, T, n_head, nope, n_rot, rank; att, wv, out,
# T, n_head, rank, dv
_declare("mla_latent.cu", "mla_latent_kv_f32", "ppppiif")
_declare("mla_latent.cu", "mla_absorb_q_f32", "pppiiiii")
_declare("mla_latent.cu", "mla_heads_out_f32", "pppiiii")
# state-space layers (ssm.cu): x, ring, pos, w, b, out, T, C, K, x_stride, x_col0, ring_w, n_ring
_declare("ssm.cu", "ssm_conv_f32", "pppppp" + "i" * 7)
_declare("ssm.cu", "ssm_store_f32", "ppp" + "i" * 8)  # x, ring, pos, T, keep, n, x_stride, x_col0, ring_w, ring_col0, n_ring
# state, x, dt, dt_b, A, bc, D, y, ck, ck_buf, T, n_head, head_dim, d_state, n_group, x_stride, dt_stride, dt_col0, a_hs, a_ks,
# bc_stride, b_col0, c_col0, n_ck
_declare("ssm.cu", "ssm_scan_f32", "p" * 10 + "i" * 14)
_declare("ssm.cu", "ssm_gate_norm_f32", "pppiiiifi")  # y, z, w, n, n_group, z_stride, z_col0, eps, norm
_declare("ssm.cu", "ssm_rms_cols_f32", "ppiiifi")  # x, w, n, stride, col0, eps, has_w
_declare("ssm.cu", "ssm_copy_cols_f32", "ppiiii")  # src, dst, T, n, stride, col0
_declare("ssm.cu", "rms_norm_heads_each_f32", "ppiiif")  # x, w, n_rows, n_head, head_dim, eps
# RWKV-6/7's and LFM2's recurrent layers (recurrent.cu)
_declare("recurrent.cu", "rwkv_lerp_f32", "pppppp" + "i" * 7 + "l")  # xn, ring, pos, mu, add, out, T, n, m, ring_w, ring_col, n_ring, has_add, plane
_declare("recurrent.cu", "rwkv_act_split_f32", "ppiiiil")  # h, out, T, E, m, act, plane
_declare("recurrent.cu", "rwkv_decay_f32", "ppili")  # x, base, n, total, version
_declare("recurrent.cu", "rwkv7_vres_f32", "ppppil")  # v, v_first, lo, v0, n, total
_declare("recurrent.cu", "rwkv7_kprep_f32", "pppppp" + "iii")  # k, lo, a0, k_k, k_a, x, H, N, stride
_declare("recurrent.cu", "rwkv_pack_f32", "ppp" + "iiiii")  # src, m, x, T, n, stride, col0, mode
_declare("recurrent.cu", "rwkv_repeat_heads_f32", "ppiiii")  # src, dst, T, H, kvh, N
_declare("recurrent.cu", "rwkv_bonus_f32", "ppppp" + "iifi")  # y, r, k, v, u, H, N, scale, has_u
_declare("recurrent.cu", "rwkv_mul_act_f32", "ppli")  # y, g, total, act
_declare("recurrent.cu", "wkv_f32", "ppppp" + "i" * 6)  # state, x, y, ck, ck_buf, T, H, N, stride, version, n_ck
_declare("recurrent.cu", "shortconv_f32", "ppppp" + "iiii")  # bcx, ring, pos, w, y, T, n, K, n_ring
_declare("recurrent.cu", "shortconv_store_f32", "ppp" + "iiii")  # bcx, ring, pos, T, keep, n, n_ring
# Gated DeltaNet and Kimi Delta Attention (delta.cu)
_declare("delta.cu", "delta_gb_f32", "ppppp" + "iiiif")  # a, beta, dt_b, A, gb, T, n_g, n_v, per, lower_bound
# state, qkv, gb, k_of_v, y, ck, ck_buf, T, n_v, n_k, d_v, d_k, gb_stride, gb_col0, per_channel, eps, n_ck
_declare("delta.cu", "delta_rule_f32", "p" * 7 + "i" * 8 + "fi")
_declare("delta.cu", "delta_norm_gate_f32", "pppiifi")  # y, z, w, n_rows, d, eps, sigmoid_gate
_declare("delta.cu", "delta_qgate_f32", "pplii")  # qg, out, n_rows, d, mode
_declare("delta.cu", "delta_put_cols_f32", "ppiiii")  # src, dst, T, n, stride, col0
# Gemma 3n's and Gemma 4's own steps (gemma.cu)
_declare("gemma.cu", "gemma_match_norm_f32", "pppii")  # a, src, out, n, acc
_declare("gemma.cu", "gemma_altup_coefs_f32", "ppppiiiff")  # xr, router, coef, c, n_embd, n_altup, m, inv_n, add
_declare("gemma.cu", "gemma_altup_predict_f32", "pppiiil")  # xs, coefs, pred, n_altup, T, n_embd, stride
_declare("gemma.cu", "gemma_altup_correct_f32", "ppppiiili")  # pred, out, coefs, xs, n_altup, T, n_embd, stride, act
_declare("gemma.cu", "gemma_gaussian_topk_f32", "pif")  # x, n, std_mul
_declare("gemma.cu", "gemma_gelu_mul_strided_f32", "ppiiil")  # g, pl, n, pl_stride, pl_off, total
_declare("gemma.cu", "gemma_scale_by_expert_f32", "pppl")  # wts, ids, scale, total
# hyper-connections' streams (hyper.cu): mixes, base, streams, cur, post, n_hc, n_mix, n_embd, s_pre, s_post, eps,
# post_eps, magnitude
_declare("hyper.cu", "hc_pre_f32", "ppppp" + "iii" + "fffff")
_declare("hyper.cu", "hc_post_f32", "pppiil")  # streams, post, out, n_hc, n_embd, total
_declare("hyper.cu", "hc_fill_f32", "ppiil")  # x, streams, n_hc, n_embd, total
_declare("hyper.cu", "hc_sinkhorn_f32", "pppiifif")  # mixes, base, comb, n_hc, n_mix, s_comb, n_iter, eps
_declare("hyper.cu", "hc_mix_f32", "ppppii")  # streams, post, comb, out, n_hc, n_embd
_declare("hyper.cu", "hc_mean_f32", "ppiifl")  # streams, x, n_hc, n_embd, inv_n, total
# token-switched LoRA adapters (lora.cu)
_declare("lora.cu", "lora_router_qkv", "ppppp" + "iii" + "f")  # tokens, slot_of, q, k, v, T, hd, n_vocab, gain
_declare("lora.cu", "lora_route_slots", "ppiii")  # att, slots, T, stride, n_adapters
_declare("lora.cu", "lora_substitute", "pppii")  # tokens, shown_as, shown, T, n_vocab
_declare("lora.cu", "lora_add_f32", "ppppp" + "iiii")  # a, b, x, slots, out, n_slots, rank, n_in, n_out
# a picture's rows seeing each other both ways (picture.cu): q, k, v, kpos, qpos, out, T, n_slots, cap, n_head, n_kv, D,
# Dv, pend, window, scale, softcap, BQ, BKV
_declare("picture.cu", "attn_picture_f16", "pppppp" + "i" * 9 + "ff" + "ii")
# the rope positions of text after M-RoPE pictures (mrope.cu): pos, out, shift, n
_declare("mrope.cu", "mrope_shift_positions", "ppii")
# every query row's scores held whole (encoder.cu): a float32 batch both ways (the text encoders') or T5's fp16 ring: q, k, v,
# bias, kpos, qpos, out, Tq, Tk, n_head, n_kv, D, Dv, scale, bias_mode, bias_hs, cap
_declare("encoder.cu", "attn_full_f32", "ppppppp" + "i" * 6 + "fili")
# T5 (t5.cu): the encoders' element-wise ops
_declare("t5.cu", "gelu_f16_f32", "ppl")  # x, out, n
_declare("t5.cu", "gelu_f16_glu_f32", "pppl")  # g, u, out, n
_declare("t5.cu", "relu_f32", "ppl")  # x, out, n
# the Whisper audio encoder's exact GELU (whisper.cu): x, out, n
_declare("whisper.cu", "gelu_erf_f32", "ppl")


def cu_files() -> list[str]:
    """Every kernel source, sorted (headers ``*.cuh`` are inlined into these)."""
    return sorted(p.name for p in KERNEL_DIR.glob("*.cu"))


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def source(name: str, directory: Path = KERNEL_DIR) -> str:
    """The text of ``name`` with its local ``#include "x.cuh"`` lines inlined.

    Inlining (rather than an include path) makes CuPy's compile cache key on
    the headers too, and lets NVRTC compile without any file system access.
    ``#line`` directives keep compiler messages pointing at the right file
    and line.  Each header is inlined once (they all ``#pragma once``).
    """
    seen: set[str] = set()

    def expand(fname: str) -> list[str]:
        path = directory / fname
        out = [f'#line 1 "{fname}"']
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _INCLUDE.match(line)
            if m:
                inc = m.group(1)
                if inc not in seen:
                    seen.add(inc)
                    out.extend(expand(inc))
                out.append(f'#line {lineno + 1} "{fname}"')
            elif line.strip() == "#pragma once":
                out.append("")
            else:
                out.append(line)
        return out

    seen.add(name)
    return "\n".join(expand(name)) + "\n"


# ----------------------------------------------------------------- runtimes
class CupyRuntime:
    """Kernels compiled by CuPy (NVRTC) for the current device; arrays are CuPy arrays."""

    name = "cuda"
    checks = False  # launch() trusts the argument layout (the emulated test runs check it)
    records_xp = True  # a stream capture records CuPy's array operations too (they are kernels)

    def __init__(self) -> None:
        import cupy

        self.xp = cupy

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one runtime per process
    def module(self, file: str) -> Any:
        """The compiled ``RawModule`` of one .cu file (CuPy also caches the binary on disk)."""
        return self.xp.RawModule(code=source(file), options=compile_options(file))

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def function(self, name: str) -> Any:
        return self.module(KERNELS[name].file).get_function(name)

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int) -> None:
        self.function(name)(grid, block, args, shared_mem=shared_mem)

    def asnumpy(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self.xp.cuda.Device().synchronize()

    def capture(self, step: Any) -> "CudaGraph":
        """What ``step()`` launches, captured as a CUDA graph (nothing runs now); ``launch()`` replays it.

        The graph keeps the pointers and scalars of every launch, so ``step``
        must read what changes between replays from device buffers.  Arrays
        it allocates come from a memory pool of the graph's own, so memory
        the graph uses is never handed to another array.  Any host-device
        copy inside ``step`` makes the capture fail (the caller then stays eager).
        """
        cp = self.xp
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=True)  # the legacy default stream cannot capture
        with cp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
        return CudaGraph(graph, pool)


class CudaGraph:
    """A captured decode step; ``launch`` enqueues it on the default stream, after what came before."""

    def __init__(self, graph: Any, pool: Any) -> None:
        self.graph, self.pool = graph, pool  # the pool holds the memory the graph's launches use

    def launch(self) -> None:
        import cupy

        self.graph.launch(stream=cupy.cuda.Stream.null)


_runtime: Any = None


def runtime() -> Any:
    """The runtime kernels launch on: CuPy unless :func:`set_runtime` chose another."""
    global _runtime
    if _runtime is None:
        _runtime = CupyRuntime()
    return _runtime


def runtime_or_none() -> Any:
    """The runtime installed so far, or None (does not create the CuPy one)."""
    return _runtime


def set_runtime(rt: Any) -> Any:
    """Make ``rt`` (e.g. ``emulate.EmulatedRuntime()``) the runtime; returns the previous one."""
    global _runtime
    prev, _runtime = _runtime, rt
    return prev


_CONVERT = {"_i": np.int32, "_l": np.int64, "_f": np.float32}


@functools.lru_cache(maxsize=None)
def _converter(name: str) -> Any:
    """A function of kernel ``name``'s argument tuple converting each to its C type (arrays pass as they are).

    Written out per kernel (``lambda a: (a[0], _i(a[1]), ...)``): a decode token makes ~200
    launches, and a loop over a table of converters costs half as much again.
    """
    items = ", ".join(f"a[{i}]" if c == "p" else f"_{c}(a[{i}])" for i, c in enumerate(KERNELS[name].args))
    return eval(f"lambda a: ({items},)", dict(_CONVERT))  # noqa: S307 - text built from the table above


def check_args(name: str, args: tuple) -> None:
    """Raise TypeError unless ``args`` fit kernel ``name``: the count, and C-contiguous arrays where it takes pointers."""
    spec = KERNELS[name].args
    if len(args) != len(spec):
        raise TypeError(f"kernel {name} takes {len(spec)} arguments, got {len(args)}")
    for i, (c, a) in enumerate(zip(spec, args)):
        if c == "p" and (not getattr(a, "flags", None) or not a.flags.c_contiguous):
            raise TypeError(f"kernel {name}: argument {i} must be a C-contiguous device array, got {type(a).__name__}")


def launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], *args: Any, shared_mem: int = 0) -> None:
    """Run kernel ``name`` with its arguments converted to the declared C types.

    Array arguments must be C-contiguous: kernels index them as dense buffers
    from their data pointer.  The runtime says whether that is checked on every
    launch (``checks``): the emulator, which every test runs, checks; on CuPy a
    decode token makes ~500 launches, and the check (CuPy builds a flags object
    per array) would be a fifth of their host time.
    """
    rt = runtime()
    if len(args) != len(KERNELS[name].args) or getattr(rt, "checks", True):
        check_args(name, args)
    if min(grid) <= 0:  # nothing to do (an empty batch); CUDA rejects an empty grid
        return
    rt.launch(name, grid, block, _converter(name)(args), int(shared_mem))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


EW_BLOCK = 256  # element-wise kernels (common.cuh's GRID_STRIDE loops): threads a block
EW_MAX_GRID = 8192  # ... and at most this many blocks (each thread's loop takes the rest)
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (and z): a launch whose rows outnumber it is cut into runs


def ew_grid(n: int) -> tuple[int]:
    """An element-wise kernel's grid over ``n`` values: a block per :data:`EW_BLOCK` of them, at most
    :data:`EW_MAX_GRID` (none for an empty ``n``: :func:`launch` then launches nothing)."""
    return (min(cdiv(n, EW_BLOCK), EW_MAX_GRID),)
