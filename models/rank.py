"""A reranker's classification head: llama.cpp's pooling type RANK (``build_pooling``), which turns
a (query, document) prompt's hidden states into a relevance score.

One state is taken, the first token's ([CLS]) for a BERT cross-encoder (bge-reranker), the last
for Qwen3-Reranker (llama.cpp picks the last for ``qwen3`` only).  Through ``cls.weight``/``cls.bias``
and tanh where the file has them (the dense layer of RoBERTa/BERT sequence-classification heads),
then ``cls.output.weight``/``cls.output.bias`` where it has those (one row per class, as many as
``classifier.output_labels``, else one); Qwen3's two rows are the output head's "yes" and "no"
tokens, softmaxed, so its score is P(yes).  llama-server's score is the first output.

The head is a few host products over n_embd (float64, dequantized once): nothing for the
backend's kernels to do.  Only ``bert`` (among the encoders llama.cpp's loader gives cls tensors)
and ``qwen3`` have one; another file stating pooling RANK gets no head and is refused as a
reranker where one is asked for.
"""

from __future__ import annotations

import numpy as np

from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize

RANK = 4  #: GGUF ``pooling_type`` of rerankers (LLAMA_POOLING_TYPE_RANK)
ARCHS = ("bert", "qwen3")  #: the architectures llama.cpp reads a classification head for and kvrun runs
LAST_TOKEN = ("qwen3",)  #: the architectures whose score reads the last token (and are softmaxed), not the first


class RankHead:
    """``head(hidden)`` -> the n_cls_out outputs of one prompt from its hidden states [T, n_embd]."""

    def __init__(self, dense: np.ndarray | None, dense_b: np.ndarray | None, out: np.ndarray | None, out_b: np.ndarray | None,
                 last: bool) -> None:  # fmt: skip
        self.dense, self.dense_b, self.out, self.out_b = dense, dense_b, out, out_b
        self.last = last
        self.softmax = last  # (llama.cpp softmaxes exactly where it reads the last token: Qwen3)

    @classmethod
    def load(cls, g: GGUFFile, arch: str) -> RankHead | None:
        """The head of a file whose pooling type is RANK, None for any other file.  A RANK file with
        neither ``cls.weight`` nor ``cls.output.weight``, or Qwen3's without its output rows, is refused."""
        if int(g.arch_get("pooling_type", 0) or 0) != RANK or arch not in ARCHS:
            return None

        def host(name: str) -> np.ndarray | None:
            t = g.tensors.get(name)
            return None if t is None else dequantize(t.data, t.qtype, t.shape).astype(np.float64)

        dense, out = host("cls.weight"), host("cls.output.weight")
        if (dense is None and out is None) or (arch in LAST_TOKEN and out is None):
            raise UnsupportedModelError(f"{g.path}: its pooling type is rank (a reranker) but it has no classification head "
                                        "(cls.weight / cls.output.weight); the file is incomplete")  # fmt: skip
        if out is not None:
            out = out.reshape(-1, out.shape[-1])
            labels = g.arch_get("classifier.output_labels")
            if labels is not None and len(labels) != out.shape[0]:
                raise UnsupportedModelError(f"{g.path}: cls.output.weight has {out.shape[0]} rows for {len(labels)} "
                                            "classifier labels; the file is not a supported reranker")  # fmt: skip
        return cls(dense, host("cls.bias"), out, host("cls.output.bias"), last=arch in LAST_TOKEN)

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        x = np.asarray(hidden[-1 if self.last else 0], np.float64)
        if self.dense is not None:
            x = self.dense @ x
            if self.dense_b is not None:
                x = x + self.dense_b
            x = np.tanh(x)
        if self.out is not None:
            x = self.out @ x
            if self.out_b is not None:
                x = x + self.out_b
        if self.softmax:
            x = np.exp(x - x.max())
            x = x / x.sum()
        return x.astype(np.float32)
