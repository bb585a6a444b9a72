"""Write tiny random rerankers, llama.cpp's pooling type RANK (4), as its converter writes them:

* ``bert``: a cross-encoder (bge-reranker's shape): the tiny BERT of ``tinybert.py`` with a
  classification head, ``cls.weight``/``cls.bias`` (dense + tanh on the [CLS] state) then
  ``cls.output.weight``/``cls.output.bias`` (one score);
* ``qwen3``: a Qwen3-Reranker: the tiny qwen3 of ``tinymodel.py`` whose ``cls.output.weight`` holds
  the "yes" and "no" rows of the output head (``classifier.output_labels``), the last token's state
  scored against them and softmaxed; its prompt is the file's chat template named ``rerank``.

Each is the base model rewritten with the head's tensors and keys added (every other key and
tensor copied as it is), so the bodies stay those the embedding and architecture tests pin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, PoolingType

Q = GGMLQuantizationType

#: the query and documents the fixtures score: words whole and cut, unknown words, punctuation,
#: an accent, a CJK ideograph, and a special token's text (parsed only inside a rerank template)
QUERY = "what does the cat sit on?"
DOCS = ["the cat sat on the mat.", "Hello, World! running cats", "café xyzzy  the\tmat?", "\u4e2d cat-mats 42",
        "[SEP] on the mat <|endoftext|>"]  # fmt: skip

#: Qwen3-Reranker's prompt, as llama.cpp's converter stores it (tokenizer.chat_template.rerank)
QWEN3_RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. "
    "Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def _rewrite(src: Path, dst: Path, kv: dict[str, tuple[object, GGUFValueType, GGUFValueType | None]], tensors: dict[str, np.ndarray]) -> None:
    """``src`` copied to ``dst`` with the keys of ``kv`` set (value, type, array element type) and
    ``tensors`` (float32) appended."""
    r = GGUFReader(str(src))
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in kv:
            continue
        vtype = f.types[0]
        w.add_key_value(name, f.contents(), vtype, sub_type=f.types[1] if vtype == GGUFValueType.ARRAY else None)
    for name, (value, vtype, sub) in kv.items():
        w.add_key_value(name, value, vtype, sub_type=sub)
    for t in r.tensors:
        if t.tensor_type == Q.F32:
            w.add_tensor(t.name, np.array(t.data))
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, a in tensors.items():
        w.add_tensor(name, a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tiny_bert_reranker(path: Path, seed: int = 0, qtype: int = Q.F32) -> Path:
    """A BERT cross-encoder: pooling RANK, a dense + tanh head and a one-score output layer."""
    from tinybert import N_EMBD, write_tiny_bert

    base = write_tiny_bert(path.with_name(path.name + ".base"), "bert", qtype, seed)
    rng = np.random.default_rng(seed + 100)
    head = {
        "cls.weight": rng.standard_normal((N_EMBD, N_EMBD)) * 0.3,
        "cls.bias": rng.standard_normal(N_EMBD) * 0.1,
        "cls.output.weight": rng.standard_normal((1, N_EMBD)) * 0.5,
        "cls.output.bias": rng.standard_normal(1) * 0.1,
    }
    _rewrite(base, path, {"bert.pooling_type": (int(PoolingType.RANK), GGUFValueType.UINT32, None)}, head)
    base.unlink()
    return path


def write_tiny_qwen3_reranker(path: Path, seed: int = 0, qtype: int = Q.F32) -> Path:
    """A Qwen3-Reranker: pooling RANK, the "yes" and "no" rows of its head, the rerank template."""
    from tinymodel import ARCH_GEOMETRY, write_tiny_model

    n_embd = ARCH_GEOMETRY["qwen3"][0]
    base = write_tiny_model(path.with_name(path.name + ".base"), "qwen3", qtype, seed)
    rng = np.random.default_rng(seed + 100)
    kv = {
        "qwen3.pooling_type": (int(PoolingType.RANK), GGUFValueType.UINT32, None),
        "qwen3.classifier.output_labels": (["yes", "no"], GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.chat_template.rerank": (QWEN3_RERANK_TEMPLATE, GGUFValueType.STRING, None),
    }
    _rewrite(base, path, kv, {"cls.output.weight": rng.standard_normal((2, n_embd)) * 0.5})
    base.unlink()
    return path


WRITERS = {"bert": write_tiny_bert_reranker, "qwen3": write_tiny_qwen3_reranker}
