"""What the tests of projectors held to libmtmd's ``vision_<name>.npz`` fixtures share (test_vision_<name>.py): the
fixture and its pictures (tools/make_vision_<name>_fixtures.py), the tiny files written again and checked against
its digests, the logits after pictures and text, ``kvrun run`` with a picture, a chat keeping a picture's rows, and
``kvrun serve`` in a thread (test_vision_chat.py's and test_audio.py's too)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import mtmd_oracle  # noqa: E402

pictures = mtmd_oracle.pictures  # (the tests' pictures, as the tools make them)

FIX = Path(__file__).parent / "fixtures"
#: a ChatML template (the tests' chats)
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
SAMPLE = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}


def fixture(name: str):
    """``tests/fixtures/vision_<name>.npz``."""
    return np.load(FIX / f"vision_{name}.npz")


def check_files(files: dict[str, Path], fx) -> dict[str, Path]:
    """``files``, each the very bytes the fixture ``fx`` was made from (its ``sha256_<k>``)."""
    for k, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(fx[f"sha256_{k}"]), f"{k}: not the fixture's file"
    return files


def tiny_pair(tmp_path_factory, name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[..., Path], fx,
              projectors: dict[str, str | tuple] | None = None, option: str | None = None) -> dict[str, Path]:  # fmt: skip
    """The tiny text model and its projectors (``projectors``: mtmd_oracle.write_files' spec; F32 and F16 unless told),
    written into a new folder ``vision_<name>`` as the fixture tools write them: the very bytes ``fx`` was made from."""
    files = mtmd_oracle.write_files(tmp_path_factory.mktemp(f"vision_{name}"), write_text, write_mmproj,
                                    projectors or {"f32": "F32", "f16": "F16"}, option)  # fmt: skip
    return check_files(files, fx)


def row_ids(segs: list, imgs: list) -> list[int]:
    """A prompt's ids as mtmd's chunks give them: text ids as they are, -1 for each image row."""
    return [i for s in segs for i in (s if isinstance(s, list) else [-1] * len(s))]


def check_between(vision, fx, img: np.ndarray, key: str, start: str, end: str) -> int:
    """The picture ``img`` laid out as libmtmd's ``ids_<key>``: its rows (-1 each) between the tokens ``start`` ("":
    none) and ``end``, and as many positions taken as rows; returns how many rows."""
    tok = vision.engine.tokenizer
    a, b = (tok.encode(t, add_bos=False, parse_special=True) if t else [] for t in (start, end))
    ids = fx[f"ids_{key}"].tolist()
    assert a + vision.idefics3.ids(img) + b == ids
    assert vision.image_positions(img) == len(ids) - len(a) - len(b)
    return len(ids) - len(a) - len(b)


def check_logits(vision, fx, pics: dict[str, np.ndarray], prompt: str, key: str, tol: float,
                 ids: Callable[[list, list], list[int]] = row_ids):  # fmt: skip
    """``prompt`` with ``pics`` taken in turn at its media markers: its ids (``ids(segments, pictures)``) are
    ``pids_<key>``, and the logits after it all within ``tol`` of ``logits_<key>``, the same argmax. The cache."""
    return prompt_logits(vision, fx, pics, prompt, key, tol, ids)[0]


def prompt_logits(vision, fx, pics: dict[str, np.ndarray], prompt: str, key: str, tol: float,
                  ids: Callable[[list, list], list[int]] = row_ids):  # fmt: skip
    """:func:`check_logits`' checks; the cache and the logits after the prompt."""
    imgs = [pics[n] for n in list(pics)[: prompt.count("<__media__>")]]
    segs = vision.segments(prompt, imgs)
    assert ids(segs, list(imgs)) == fx[f"pids_{key}"].tolist()
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    np.testing.assert_allclose(logits, fx[f"logits_{key}"], atol=tol)
    assert logits.argmax() == fx[f"logits_{key}"].argmax()
    return cache, logits


@contextmanager
def one_line_error(match: str) -> Iterator[None]:
    """The block raises a KvrunError whose message matches ``match`` and is one line (never a traceback's many)."""
    from kvrun.loaders.errors import KvrunError

    with pytest.raises(KvrunError, match=match) as e:
        yield
    assert "\n" not in str(e.value)


def check_refused_beside(text: Path, mmproj: Path, match: str) -> None:
    """The projector ``mmproj`` beside the text model ``text`` (not the one it goes with) is refused in one line
    matching ``match``."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(match):
        Vision(Engine(text, n_ctx=64), mmproj)


def check_newline_after(vision, fx, picture: np.ndarray, name: str) -> None:
    """No token before the picture ``name``'s image chunk and ``"\\n"`` (id 10) after it: ``ids_f32_<name>`` of ``fx``,
    every id (:func:`check_between`)."""
    n = check_between(vision, fx, picture, f"f32_{name}", "", "")
    assert fx[f"ids_f32_{name}"][-1] == 10 and n == len(fx[f"ids_f32_{name}"])


def check_cli_run(text: Path, mmproj: Path, picture: np.ndarray, tmp_path: Path, n_rows: int, *args: str) -> None:
    """``kvrun run`` with ``picture``: it runs, the prompt ``n_rows`` (the picture's) and the 8 bytes of "describe"."""
    from click.testing import CliRunner
    from PIL import Image

    from kvrun.cli import main

    png = tmp_path / "picture.png"
    Image.fromarray(picture).save(png)
    r = CliRunner().invoke(main, ["run", str(text), "--mmproj", str(mmproj), "--image", str(png),
                                  "-p", "describe", "-n", "4", "--temp", "0", *args])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"prompt {n_rows + len('describe')} tok" in r.output


def check_chat_keeps_picture(text: Path, mmproj: Path, picture: np.ndarray, monkeypatch, n_ctx: int = 1024,
                             block: int | None = None, prefix: str = "<|im_start|>user\n"):  # fmt: skip
    """A chat with ``picture``: the next turn feeds only its new text (``block``, the picture's positions, and the
    turn's ``prefix`` not fed again), the picture is not encoded again, the reply is a fresh chat's. The session."""
    import kvrun

    m = kvrun.load(str(text), n_ctx=n_ctx, n_batch=64, threads=1, mmproj=str(mmproj))
    encoded = []
    real = m.vision.image_rows
    monkeypatch.setattr(m.vision, "image_rows", lambda img: encoded.append(1) or real(img))
    s = m.session()
    s.send("describe", images=[picture], **SAMPLE)
    second = s.send("and more", **SAMPLE)
    assert len(encoded) == 1
    if block is not None:
        assert s.last_stats.n_prompt <= s.n_prompt_tokens - len(prefix) - block
    convo = [{"role": "user", "content": "describe", "images": [picture]}, s.messages[1], {"role": "user", "content": "and more"}]
    assert m.chat(convo, **SAMPLE) == second and len(encoded) == 2
    return s


def block_ids(vision) -> Callable[[list, list], list[int]]:
    """``check_logits``' ids where each picture's block is given by its ids (``vision.idefics3.ids``: its rows and
    the tokens around them)."""
    return lambda segs, imgs: [i for s in segs for i in (s if isinstance(s, list) else vision.idefics3.ids(imgs.pop(0)))]


@contextmanager
def serving(model, name: str = "tiny") -> Iterator[int]:
    """``kvrun serve``'s HTTP server on ``model`` (as ``name``) in a thread, on a free port: that port."""
    from kvrun.runtime.server import make_server

    httpd = make_server(model, "127.0.0.1", 0, name)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def call(port: int, path: str, body: object = None, method: str = "POST") -> tuple[int, dict]:
    """The server's status and its (last line's) JSON for ``body`` sent to ``path``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, json.loads(text.strip().split("\n")[-1])


def png_url(picture: np.ndarray) -> str:
    """``picture`` as a PNG data URL (an OpenAI image_url part's)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_vision(text: Path, mmproj: Path, n_ctx: int):
    """``runtime.vision.Vision`` on the text model ``text`` (a context of ``n_ctx``, batches of 64, one thread) with
    the projector ``mmproj``."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(text, n_ctx=n_ctx, n_batch=64, threads=1), mmproj)


def mmproj_config(path: Path):
    """The projector file's ``MmprojConfig``."""
    from kvrun.loaders.mmproj import open_mmproj

    g, cfg = open_mmproj(path)
    g.close()
    return cfg


def without_tensor(src: Path, dst: Path, name: str) -> Path:
    """A copy of the GGUF file ``src`` at ``dst`` without its tensor ``name`` (every key kept as its type was written):
    the tests of a missing tensor's one-line error."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst), arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        if t.name != name:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return dst
