"""ChatGLM (Zhipu AI / THUDM): ``chatglm``, ChatGLM3-6B and the original layout of GLM-4-9B-chat (and GLM-4-9B,
LongWriter-GLM4, CodeGeeX4), as llama.cpp's CHATGLM graph.  (GLM-4-9B-0414 and GLM-4-32B-0414 are ``glm4``: glm4.py.)

The Llama block (``llama.py``: RMSNorm, SwiGLU, pre-norm residuals) with ChatGLM's layout:

* Q, K and V from one fused ``attn_qkv`` with its bias (the checkpoints' ``query_key_value``: Q rows, then K's, then
  V's; multi-query groups ``multi_query_group_num`` as ``head_count_kv``), cut in three at load (llama.cpp's loader
  also takes ``attn_q``/``attn_k``/``attn_v`` apart, with optional biases);
* rope over only the first half of each head (``rope.dimension_count``: head_dim x partial_rotary_factor 0.5) in
  llama.cpp's normal layout, consecutive pairs (ChatGLM's interleaved rotary), the other half unturned; the rope
  base is 10000 times ``rope_ratio`` (GLM-4-9B's 500), as the converter writes it;
* the FFN's gate and up fused in ``ffn_up`` (``dense_h_to_4h``: ``2 * n_ff`` rows, gate first; llama.cpp's
  LLM_FFN_SWIGLU), cut in two at load as Phi-3's and GLM-4's;
* no bias on the attention output; an output head of its own (``output_layer``), tied where the file has none.

Tokenizers: ChatGLM3's is SentencePiece (``tokenizer.ggml.model`` llama, pre ``chatglm-spm``, which llama.cpp's
SentencePiece path ignores, as kvrun's does); GLM-4-9B-chat's is byte-level BPE (pre ``chatglm-bpe``: Llama 3's
regex, no BOS: ``loaders/tokenizer.py``).  Their prompts open with ``[gMASK]<sop>`` through the chat template.
"""

from __future__ import annotations

from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class ChatGLMModel(LlamaModel):
    archs = ("chatglm",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        w_gate, w_up = w.matrix_rows("w_up", i, (c.n_ff, c.n_ff))  # (gate rows first)
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i), w_gate=w_gate, w_up=w_up,
            w_down=w.matrix("w_down", i),
        )  # fmt: skip
