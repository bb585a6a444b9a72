"""The fast GGUF reader agrees with gguf.GGUFReader and refuses bad files in one line."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFReader

from kvrun.cli import main
from kvrun.loaders.config import load_config
from kvrun.loaders.errors import GGUFError, UnsupportedModelError
from kvrun.loaders.gguf_file import GGUFFile

from reference import shared_reader
from tinymodel import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "llama")


def _same_value(ours, field) -> bool:
    ref = field.contents()
    if isinstance(ours, np.ndarray):
        return np.array_equal(ours, np.asarray(ref, dtype=ours.dtype))
    if isinstance(ours, float):
        return np.float32(ours) == np.float32(ref) or ours == ref
    return ours == ref


def check_against_reader(path, ref: GGUFReader | None = None) -> None:
    ours = GGUFFile(path)
    ref = ref if ref is not None else GGUFReader(str(path))
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for k in ref_keys:
        assert _same_value(ours.metadata[k], ref.fields[k]), k
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        o = ours.tensors[t.name]
        assert o.qtype == int(t.tensor_type), t.name
        assert o.shape == tuple(int(x) for x in reversed(t.shape.tolist())), t.name
        assert np.array_equal(o.data, np.asarray(t.data).view(np.uint8).reshape(-1)), t.name


def test_reader_matches_gguf_on_tiny_model(tiny):
    check_against_reader(tiny)


@pytest.mark.real_model
def test_reader_matches_gguf_on_smollm2(smollm2_path):
    check_against_reader(smollm2_path, shared_reader(smollm2_path))


@pytest.mark.real_model
def test_reader_matches_gguf_on_gemma3(gemma3_path):
    check_against_reader(gemma3_path, shared_reader(gemma3_path))


@pytest.mark.real_model
def test_config_of_real_models(smollm2_path, gemma3_path):
    s = load_config(GGUFFile(smollm2_path))
    assert (s.arch, s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_ff, s.n_vocab) == ("llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert s.rope_theta == 100000.0 and not s.rope_neox and s.sliding_window == 0
    g = load_config(GGUFFile(gemma3_path))
    assert (g.arch, g.n_layer, g.n_embd, g.n_head, g.n_head_kv, g.head_dim, g.n_ff, g.n_vocab) == ("gemma3", 18, 640, 4, 1, 256, 2048, 262144)
    assert g.sliding_window == 512 and g.rope_theta_swa == 10000.0 and g.rope_neox
    # five local layers, then one global
    assert [il for il in range(18) if not g.is_swa(il)] == [5, 11, 17]


def _one_line_error(path, expect: str = "") -> None:
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvrun: error: "), r.output
    assert "Traceback" not in r.output
    assert str(path) in lines[0]
    assert expect in lines[0]


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.gguf", "no such file")


def test_foreign_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    _one_line_error(p, "not a GGUF")


def test_unknown_architecture(tmp_path):
    p = write_tiny_model(tmp_path / "t.gguf", "llama")
    raw = bytearray(p.read_bytes())
    i = raw.index(b"llama")  # general.architecture value
    raw[i : i + 5] = b"llamb"
    p.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedModelError, match="llamb"):
        load_config(GGUFFile(p))
    _one_line_error(p, "not supported")


def test_unknown_tensor_type(tmp_path):
    p = write_tiny_model(tmp_path / "t.gguf", "llama")
    raw = bytearray(p.read_bytes())
    name = b"token_embd.weight"
    i = raw.index(name) + len(name)
    n_dims = int.from_bytes(raw[i : i + 4], "little")
    t = i + 4 + 8 * n_dims
    raw[t : t + 4] = (250).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    with pytest.raises(GGUFError, match="unknown ggml type 250"):
        GGUFFile(p)
    _one_line_error(p, "unknown ggml type")


def _truncation_offsets(size: int, header_end: int) -> list[int]:
    head = np.unique(np.geomspace(1, header_end, 28).astype(int)).tolist()
    data = np.linspace(header_end + 1, size - 1, 6).astype(int).tolist()
    return [0, 3, 4, 7, 8, 23, *head, *data]


def _cut_and_check(path, tmp_path) -> int:
    g = GGUFFile(path)
    size, header_end = g.file_size, g.data_offset
    g.close()
    src = path.read_bytes()
    offsets = _truncation_offsets(size, header_end)
    for off in offsets:
        p = tmp_path / "cut.gguf"
        p.write_bytes(src[:off])
        with pytest.raises(GGUFError):
            GGUFFile(p)
        _one_line_error(p)
    return len(offsets)


def test_truncated_tiny_model(tiny, tmp_path):
    assert _cut_and_check(tiny, tmp_path) >= 30


@pytest.mark.real_model
def test_truncated_real_model(smollm2_path, tmp_path):
    assert _cut_and_check(smollm2_path, tmp_path) >= 30
