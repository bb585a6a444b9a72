"""Images where users put them (runtime/vision_chat.py), on the tiny Gemma 3 pair of tiny_vision.py: chat messages
with image parts through the Python API, `kvrun chat`'s /image, and the server's OpenAI and Ollama shapes all give
the text `kvrun run --image` writes for the same prompt layout (runtime/vision.py, itself held to libmtmd by
test_vision.py); a conversation keeps its cache across turns; bad pictures are one-line errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import kvrun
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.vision import MARKER
from kvrun.runtime.vision_chat import take_images
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj
from vision_checks import call, serving

# the tiny random model writes newlines greedily whatever it is shown; a strong repeat penalty makes it write a
# different byte each step, so the texts compared below depend on every logit's ranking (the picture's included)
SAMPLE = {"max_tokens": 12, "temperature": 0, "repeat_penalty": 3.0}
# a next turn longer than the penalty's window (repeat_last_n, 64): the penalty sees the same tokens whether the
# turn's prefix came from the cache (only the rest is the sampler's history then) or was fed afresh
FOLLOW = "and what else is there in that picture, at the left of it and at the right of it?"
RUN_FLAGS = ["-n", "12", "--temp", "0", "--repeat-penalty", "3", "--no-stats"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vision_chat")
    png, other = d / "wide.png", d / "square.png"
    Image.fromarray(sample_image(300, 180, seed=1)).save(png)
    Image.fromarray(sample_image()).save(other)
    return {"text": write_tiny_gemma3_vl(d / "text.gguf"), "mmproj": write_tiny_mmproj(d / "mmproj.gguf"), "png": png, "other": other}


@pytest.fixture(scope="module")
def model(files):
    return kvrun.load(str(files["text"]), n_ctx=256, n_batch=64, threads=1, mmproj=str(files["mmproj"]))


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def kvrun_run(files: dict[str, Path], prompt: str, *images: Path) -> str:
    """What `kvrun run --mmproj --image` writes after the prompt it echoes."""
    args = ["run", str(files["text"]), "--mmproj", str(files["mmproj"]), "-p", prompt, "-c", "256", *RUN_FLAGS]
    r = CliRunner().invoke(main, args + [a for p in images for a in ("--image", str(p))])
    assert r.exit_code == 0, r.output
    out = r.stdout  # (stderr, mixed into r.output, may say the kernels are compiling on a first run)
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt) : -1]


def user(*parts: object) -> list[dict[str, object]]:
    return [{"role": "user", "content": list(parts)}]


# ---------------------------------------------------------------- messages


def test_image_parts_become_llama_servers_marker_text_and_ollama_images_go_first(model, files):
    """OpenAI parts: each image a <__media__> text part, the parts joined with a newline (llama-server's
    oaicompat_chat_params_parse and common_chat_msgs_to_json_oaicompat); Ollama's images: markers before the text."""
    picture = {"type": "image_url", "image_url": {"url": data_url(files["png"])}}
    msgs, imgs = take_images(user({"type": "text", "text": "describe"}, picture), model.vision)
    assert msgs == [{"role": "user", "content": f"describe\n{MARKER}"}] and imgs[0].shape == (180, 300, 3)
    assert model.render(msgs) == f"<start_of_turn>user\ndescribe\n{MARKER}<end_of_turn>\n<start_of_turn>model\n"
    b64 = base64.b64encode(files["png"].read_bytes()).decode()
    msgs2, imgs2 = take_images([{"role": "user", "content": "describe", "images": [b64, b64]}], model.vision, allow_paths=False)
    assert msgs2 == [{"role": "user", "content": f"{MARKER}{MARKER}describe"}] and (imgs2[1] == imgs[0]).all()
    text_only = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert take_images(text_only, None) == (text_only, [])  # (left as it is, for check_messages)


def test_an_image_through_chat_is_the_text_kvrun_run_writes_for_the_same_layout(model, files):
    want = kvrun_run(files, model.render([{"role": "user", "content": f"describe\n{MARKER}"}]), files["png"])
    assert want.strip("\n")  # (a text, not the newlines greedy decoding writes here)
    pil = Image.open(files["png"])
    for picture in ({"type": "image_url", "image_url": {"url": data_url(files["png"])}}, {"type": "image_url", "image_url": {"url": str(files["png"])}},
                    {"type": "image", "image": pil}, {"type": "image", "image": files["png"].read_bytes()}):  # fmt: skip
        assert model.chat(user({"type": "text", "text": "describe"}, picture), **SAMPLE) == want
    pieces = model.vision.segments(model.render([{"role": "user", "content": f"describe\n{MARKER}"}]), [None], encode=False)
    assert model.last_stats.n_prompt == sum(len(p) if isinstance(p, list) else model.vision.n_tokens for p in pieces)  # (rows counted)
    other = model.chat(user({"type": "text", "text": "describe"}, {"type": "image", "image": str(files["other"])}), **SAMPLE)
    assert other != want  # the picture is read


def test_a_conversation_keeps_its_cache_and_encodes_no_picture_twice(model, files, monkeypatch):
    """The second turn feeds only what follows the shared prefix: the picture's rows stay in the cache, it is not
    encoded again, and the reply is the one a fresh chat of the whole conversation gives."""
    encoded = []
    real = model.vision.image_rows
    monkeypatch.setattr(model.vision, "image_rows", lambda img: encoded.append(1) or real(img))
    s = model.session()
    first = s.send("describe", images=[files["png"]], **SAMPLE)
    assert s.messages[0] == {"role": "user", "content": f"{MARKER}describe"} and len(encoded) == 1
    assert first == kvrun_run(files, model.render(s.messages[:1]), files["png"])
    follow = FOLLOW
    second = s.send(follow, **SAMPLE)
    assert len(encoded) == 1
    n_image_end = len("<start_of_turn>user\n") + 1 + 16 + 1  # (byte tokens, <start_of_image>, rows, <end_of_image>: kept)
    assert s.last_stats.n_prompt <= s.n_prompt_tokens - n_image_end
    convo = [{"role": "user", "content": "describe", "images": [files["png"]]}, s.messages[1], {"role": "user", "content": follow}]
    fresh = model.chat(convo, **SAMPLE)
    assert second == fresh and len(encoded) == 2


def test_bad_pictures_and_pictures_without_a_projector_are_one_line_errors(model, files, tiny_llama_path):
    text_model = kvrun.load(tiny_llama_path, n_ctx=64)
    cases = [
        (text_model, user({"type": "image", "image": str(files["png"])}), "images are not supported without the model's projector"),
        (model, user({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}), "image URLs are not fetched"),
        (model, user({"type": "image", "image": b"not a picture"}), "cannot read it as an image"),
        (model, user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}), "not valid base64"),
        (model, user({"type": "input_audio", "input_audio": {}}, {"type": "image", "image": str(files["png"])}), "'input_audio' is not supported"),
        (model, user({"type": "text", "text": f"{MARKER} and"}, {"type": "image", "image": str(files["png"])}), "2 image markers"),
    ]  # fmt: skip
    for m, msgs, says in cases:
        with pytest.raises((ValueError, KvrunError), match=says) as e:
            m.chat(msgs, max_tokens=2)
        assert "\n" not in str(e.value)
    with pytest.raises(KvrunError, match="without the model's projector"):
        text_model.session().send("x", images=[files["png"]])
    small = kvrun.load(str(files["text"]), n_ctx=48, mmproj=str(files["mmproj"]))  # (no context shift with pictures, as llama-server)
    with pytest.raises(KvrunError, match=r"with its images is \d+ positions; the context of 48 leaves 40 .* not shifted") as e:
        small.session().send("describe " * 3, images=[files["png"]], max_tokens=8)
    assert "\n" not in str(e.value)


def test_a_chat_with_images_is_saved_and_resumed_with_them(model, files, tmp_path):
    s = model.session()
    s.send("describe", images=[files["png"]], max_tokens=2, temperature=0)
    s.save(tmp_path / "c.kvs")
    r = model.load_session(tmp_path / "c.kvs")
    assert len(r.images) == 1 and (r.images[0] == s.images[0]).all()
    assert r.send("more", max_tokens=3, temperature=0) == s.send("more", max_tokens=3, temperature=0)


# ---------------------------------------------------------------- kvrun chat /image


def test_cli_chat_attaches_an_image_to_the_next_message(model, files):
    r = CliRunner().invoke(main, ["chat", str(files["text"]), "--mmproj", str(files["mmproj"]), "-c", "256", *RUN_FLAGS[:-1]],
                       input=f"/image {files['png']}\ndescribe\n/image nowhere.png\n/exit\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "attached to the next message" in r.output and "nowhere.png: no such image file" in r.output
    assert model.session().send("describe", images=[files["png"]], **SAMPLE) in r.output
    r = CliRunner().invoke(main, ["chat", str(files["text"]), "-c", "256"], input=f"/image {files['png']}\n/exit\n")
    assert "/image needs a chat started with --mmproj FILE" in r.output


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(model):
    with serving(model, "tiny-vl") as port:
        yield port


def test_openai_image_url_parts_give_the_python_apis_text_and_a_resend_reuses_the_cache(server, model, files):
    msgs = user({"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": data_url(files["png"])}})
    want = model.chat(msgs, **SAMPLE)
    status, r = call(server, "/v1/chat/completions", {"messages": msgs, **SAMPLE})
    assert status == 200 and r["choices"][0]["message"]["content"] == want
    assert r["usage"]["prompt_tokens"] == model.last_stats.n_prompt  # (every position: the picture's 16 rows counted)
    convo = msgs + [{"role": "assistant", "content": want}, {"role": "user", "content": FOLLOW}]
    status, r = call(server, "/v1/chat/completions", {"messages": convo, **SAMPLE})
    assert status == 200 and r["choices"][0]["message"]["content"] == model.chat(convo, **SAMPLE)
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] > 16  # the slot kept the picture's rows


def test_ollama_images_give_the_python_apis_text(server, model, files):
    b64 = base64.b64encode(files["png"].read_bytes()).decode()
    want = model.chat([{"role": "user", "content": "describe", "images": [files["png"]]}], **SAMPLE)
    opts = {"num_predict": 12, "temperature": 0, "repeat_penalty": 3.0}
    status, r = call(server, "/api/chat", {"messages": [{"role": "user", "content": "describe", "images": [b64]}], "options": opts, "stream": False})
    assert status == 200 and r["message"]["content"] == want
    call(server, "/slots/0?action=erase", {})  # (the same prompt again: see FOLLOW)
    status, r = call(server, "/api/generate", {"prompt": "describe", "images": [b64], "options": opts, "stream": False})
    assert status == 200 and r["response"] == want


def test_the_server_says_it_takes_images(server):
    assert call(server, "/props", method="GET")[1]["modalities"] == {"vision": True, "audio": False}
    assert "vision" in call(server, "/api/show", {"model": "tiny-vl"})[1]["capabilities"]


@pytest.mark.parametrize("path, body, says", [
    ("/v1/chat/completions", user({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}), "image URLs are not fetched"),
    ("/v1/chat/completions", user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}), "cannot read it as an image"),
    ("/v1/chat/completions", user({"type": "image_url", "image_url": {"url": "/etc/passwd"}}), "give the picture as a data URL"),
    ("/api/chat", [{"role": "user", "content": "x", "images": ["%%%"]}], "not valid base64"),
    ("/api/generate", None, "a raw prompt takes no images"),
])  # fmt: skip
def test_bad_images_are_a_4xx_in_one_line(server, path, body, says):
    payload = {"prompt": "x", "raw": True, "images": ["aGk="]} if body is None else {"messages": body, "max_tokens": 2, "stream": False}
    status, r = call(server, path, payload)
    err = r["error"] if path.startswith("/api/") else r["error"]["message"]
    assert status == 400 and says in err and "\n" not in err, r


def test_a_server_without_a_projector_refuses_images_in_one_line(tiny_llama_path, files):
    with serving(kvrun.load(tiny_llama_path, n_ctx=64)) as port:
        picture = {"type": "image_url", "image_url": {"url": data_url(files["png"])}}
        status, r = call(port, "/v1/chat/completions", {"messages": user(picture)})
        assert status == 400 and "images are not supported without the model's projector" in r["error"]["message"]
        assert call(port, "/props", method="GET")[1]["modalities"]["vision"] is False
