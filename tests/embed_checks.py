"""What the tests of encoders held to llama.cpp's ``embed_<name>.npz`` fixtures share (test_bert_family.py,
test_embed_models2.py): the tiny model written again and checked against the fixture's digest, the per-token state
error, and the checks each file makes of its models."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import GGUFError, KvrunError, UnsupportedModelError
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine

FIX = Path(__file__).parent / "fixtures"
STATE_TOL = 1e-3  # per-token states, of their largest magnitude
POOLED_TOL = 1e-4  # pooled unit vectors, absolute


def load(tmp_path_factory, write: Callable[[Path, str], Path], name: str):
    """The model ``write(path, name)`` writes, and its fixture (made from the same bytes)."""
    path = write(tmp_path_factory.mktemp(name) / "m.gguf", name)
    fx = np.load(FIX / f"embed_{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "the fixture was made from another model file"
    return Model(Engine(path)), fx


def state_error(m: Model, fx, texts: list[str]) -> float:
    """The worst per-token state error over the texts, of the largest state."""
    errs = []
    for k in range(len(texts)):
        h, want = m.engine.embed(fx[f"ids_{k}"].tolist()), fx[f"embd_{k}"]
        errs.append(np.abs(h - want).max() / np.abs(want).max())
    return float(max(errs))


def check_ids_states_and_embeddings(m: Model, fx, texts: list[str], arch: str, pooling: str) -> None:
    """llama.cpp's token ids, every token's state within STATE_TOL and the pooled embeddings within POOLED_TOL."""
    assert m.config.arch == arch and m.engine.model.encoder
    assert m.engine.model.pooling == pooling
    for k, text in enumerate(texts):
        assert m.tokenize(text) == fx[f"ids_{k}"].tolist(), text
    assert state_error(m, fx, texts) < STATE_TOL
    vecs = m.embed(texts)
    for k, text in enumerate(texts):
        want = fx[f"pooled_{k}"].astype(np.float64)
        np.testing.assert_allclose(vecs[k], want / np.linalg.norm(want), atol=POOLED_TOL, err_msg=text)


def check_missing_tensor(path: Path, missing: str) -> None:
    with pytest.raises(GGUFError, match=f"tensor '{missing}' is missing") as e:
        Engine(path)
    assert "\n" not in str(e.value)


def check_unknown_device_text_and_overlong_refused(path: Path, arch: str) -> None:
    """A backend neither the CPU's nor the GPU's refused, text generation refused, more than the context refused: each in one line."""
    from kvrun.loaders.config import load_config
    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.models import model_class

    g = GGUFFile(path)

    class Device:
        name = "cuda"
        zeros = staticmethod(np.zeros)

    with pytest.raises(UnsupportedModelError, match=f"{arch} embedding models run on the CPU or the GPU; drop --device cuda$"):
        model_class(arch)(g, load_config(g), Device(), 128, 128)
    m = Model(Engine(path))
    with pytest.raises(KvrunError, match=rf"is an embedding model \({arch}\): it makes embeddings"):
        m.complete("the cat", max_tokens=4)
    with pytest.raises(KvrunError, match="more than the 128 this encoder reads at once"):
        m.embed([5] * 129)


def check_quantized_close(f32: Path, q8: Path, texts: list[str]) -> None:
    m32, m8 = Model(Engine(f32)), Model(Engine(q8))
    assert np.all(np.sum(m32.embed(texts) * m8.embed(texts), axis=1) > 0.99)  # cosine similarity of unit vectors


def check_cli(path: Path, texts: list[str], arch: str, n_embd: int, pooling: str) -> None:
    """``kvrun embed`` embeds, ``kvrun info`` tells the pooling, ``kvrun run`` refuses in one line."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["embed", str(path), "-p", texts[0], "-p", texts[1], "--json"])
    assert r.exit_code == 0, r.output
    vecs = np.array(json.loads(r.output.splitlines()[-1])["embeddings"])
    assert vecs.shape == (2, n_embd) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0 and f"embeddings only (kvrun embed, /v1/embeddings), {pooling} pooling" in r.output, r.output
    r = CliRunner().invoke(main, ["run", str(path), "-p", "hi", "-n", "4"])
    assert r.exit_code != 0 and r.output.splitlines()[-1].startswith(f"kvrun: error: tiny-{arch} is an embedding model ({arch})"), r.output
