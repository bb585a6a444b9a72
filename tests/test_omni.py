"""Qwen2.5-Omni's combined projector (one mmproj with a vision and an audio encoder, projector type "qwen2.5o"):
pictures go to the Qwen2.5-VL encoder and clips to the Qwen2-Audio one, told apart by what they are, the markers of a
prompt taking both in order, held to llama.cpp's libmtmd on the tiny pair of tiny_omni.py (fixture:
tools/make_omni_fixtures.py): the same ids, the picture's M-RoPE rows, the clip's one position a row, the same
logits; and the ways in (``kvrun run --image --audio``, the server's image_url and input_audio parts in one message)."""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kvrun
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.omni import Omni, is_clip
from kvrun.runtime.vision import MARKER, Vision
from tiny_omni import write_tiny_omni_mmproj, write_tiny_omni_text
from vision_checks import call, serving

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_fixtures import clips  # noqa: E402
from make_omni_fixtures import CLIP_STRIDE, MEDIA, N_CTX, PROMPTS, picture  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "omni_qwen25o.npz")
WAV = clips(("short",))["short"]  # (1.3 s: one 30 s chunk, 750 rows)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
SAMPLE = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The tiny pair, the very bytes the fixture was made from, with the picture as a PNG and the clip as a WAV."""
    from PIL import Image

    d = tmp_path_factory.mktemp("omni")
    out = {"text": write_tiny_omni_text(d / "text.gguf"), "mmproj": write_tiny_omni_mmproj(d / "mmproj.gguf")}
    for k, p in out.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[f"sha256_{k}"]), f"{k}: not the fixture's file"
    Image.fromarray(picture()).save(d / "picture.png")
    (d / "clip.wav").write_bytes(WAV)
    chat = write_tiny_omni_text(d / "chat.gguf", chat_template=TEMPLATE)
    return {**out, "png": d / "picture.png", "wav": d / "clip.wav", "chat": chat}


@pytest.fixture(scope="module")
def omni(files) -> Omni:
    from kvrun.runtime.engine import Engine

    return Vision(Engine(files["text"], n_ctx=N_CTX, n_batch=64, threads=1), files["mmproj"])


def media(kinds: tuple[str, ...]) -> list:
    return [picture() if k == "picture" else WAV for k in kinds]


def test_one_file_opens_both_encoders(omni):
    """clip.cpp reads "qwen2.5o" as qwen2.5vl_merger for pictures and qwen2a for clips."""
    assert isinstance(omni, Omni) and omni.takes_audio and omni.takes_images
    assert omni.pictures.encoder.cfg.projector_type == "qwen2.5vl_merger"
    assert omni.audio.cfg.projector_type == "qwen2a"
    assert (omni.pictures.begin, omni.pictures.end) == ("<|vision_start|>", "<|vision_end|>")
    assert (omni.audio.begin, omni.audio.end) == ("<|audio_bos|>", "<|audio_eos|>")


def test_media_are_told_apart_by_what_they_are(files):
    assert is_clip(WAV) and is_clip(files["wav"]) and is_clip(np.zeros(16000, np.float32))
    assert not is_clip(files["png"].read_bytes()) and not is_clip(files["png"]) and not is_clip(picture())


@pytest.mark.parametrize("kind, atol", [("picture", 5e-4), ("clip", 1e-4)])
def test_each_encoders_rows_are_libmtmds(omni, kind, atol):
    rows = omni.image_rows(media((kind,))[0])
    np.testing.assert_allclose(rows if kind == "picture" else rows[::CLIP_STRIDE], FIX[f"embd_{kind}"], atol=atol)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_a_prompt_with_a_picture_and_a_clip_matches_llama_cpp(omni, k):
    """mtmd_tokenize's ids (each medium between its own markers), mtmd_helper_eval_chunks' positions (the picture's
    rows M-RoPE, taking max(nx, ny) positions; the clip's one each), logits within 2e-3 of llama.cpp's."""
    segs = omni.segments(PROMPTS[k], media(MEDIA[k]))
    assert [t for s in segs for t in (s if isinstance(s, list) else [-1] * len(s))] == FIX[f"pids_{k}"].tolist()
    cache = omni.engine.new_cache()
    logits = omni.engine.eval(cache, omni.prefill(cache, segs))[-1]
    nx, ny = next(s for s in segs if getattr(s, "grid", None) is not None and s.grid != (0, 0)).grid
    assert nx * ny == len(FIX[f"dpos_{k}"])
    assert cache.offset == len(FIX[f"pids_{k}"])  # (slots: a row each; positions: npast below)
    assert int(FIX[f"npast_{k}"]) == len(FIX[f"pids_{k}"]) - nx * ny + max(nx, ny)
    np.testing.assert_allclose(logits, FIX[f"logits_{k}"], atol=2e-3)
    assert logits.argmax() == FIX[f"logits_{k}"].argmax()


def test_kvrun_run_takes_an_image_and_a_clip_with_one_mmproj(files):
    """Pictures take the markers first, then clips (click keeps no order across --image and --audio)."""
    prompt = f"Look: {MARKER} and hear: {MARKER} what?"
    args = ["run", str(files["text"]), "--mmproj", str(files["mmproj"]), "-p", prompt, "--image", str(files["png"]),
            "--audio", str(files["wav"]), "-n", "3", "--temp", "0", "--no-stats", "-c", str(N_CTX)]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.stdout.startswith(prompt), r.output


def parts(files: dict[str, Path]) -> list[dict]:
    """One user message: a picture (image_url, a data URL), a clip (input_audio) and the question."""
    png = base64.b64encode(files["png"].read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                                         {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}},
                                         {"type": "text", "text": "what?"}]}]  # fmt: skip


def test_image_url_and_input_audio_parts_of_one_message_take_its_markers_in_order(omni, files):
    from kvrun.runtime.vision_chat import take_images

    out, got = take_images(parts(files), omni, allow_paths=False)
    assert [g.ndim for g in got] == [3, 1] and out[0]["content"] == f"{MARKER}\n{MARKER}\nwhat?"
    segs = omni.segments(out[0]["content"], got, encode=False)
    assert [omni.image_positions(got[s]) for s in segs if not isinstance(s, list)] == [len(FIX["dpos_0"]), 750]


@pytest.fixture(scope="module")
def model(files):
    return kvrun.load(str(files["chat"]), n_ctx=N_CTX, n_batch=64, threads=1, mmproj=str(files["mmproj"]))


def test_the_server_answers_a_message_with_a_picture_and_a_clip_as_the_python_api(model, files):
    want = model.chat(parts(files), **SAMPLE)
    assert model.last_stats.n_prompt > 750 + len(FIX["dpos_0"])  # (both media's rows counted)
    with serving(model, "tiny-omni") as port:
        status, r = call(port, "/v1/chat/completions", {"messages": parts(files), **SAMPLE})
        assert status == 200 and r["choices"][0]["message"]["content"] == want
        assert call(port, "/props", method="GET")[1]["modalities"] == {"vision": True, "audio": True}


def test_a_chat_session_takes_a_picture_and_a_clip_and_keeps_their_rows(model, files):
    s = model.session()
    first = s.send("what?", images=[files["png"], files["wav"]], **SAMPLE)
    assert s.messages[0] == {"role": "user", "content": f"{MARKER}{MARKER}what?"} and first
    assert [a.ndim for a in s.images] == [3, 1]  # (the picture decoded as RGB, the clip as samples)
    s.send("and?", **SAMPLE)
    assert s.last_stats.n_prompt < 750  # (both media's rows stayed in the cache)


def test_cli_chat_attaches_an_image_and_a_clip(files):
    r = CliRunner().invoke(main, ["chat", str(files["chat"]), "--mmproj", str(files["mmproj"]), "-n", "3", "--temp", "0", "-c", str(N_CTX)],
                           input=f"/image {files['png']}\n/audio {files['wav']}\nwhat?\n/exit\n")  # fmt: skip
    assert r.exit_code == 0 and r.output.count("attached to the next message") == 2 and "Traceback" not in r.output, r.output


def test_a_picture_where_the_text_model_has_no_m_rope_is_a_one_line_error(tmp_path, files):
    from kvrun.runtime.engine import Engine
    from tiny_audio2 import write_tiny_audio2_text

    eng = Engine(write_tiny_audio2_text(tmp_path / "llama.gguf", "qwen2a"), n_ctx=256, threads=1)
    with pytest.raises(KvrunError) as e:
        Vision(eng, files["mmproj"])
    assert "\n" not in str(e.value)
