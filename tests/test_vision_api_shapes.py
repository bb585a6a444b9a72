"""Images in the server's remaining API shapes, on the tiny Gemma 3 pair of tiny_vision.py: Anthropic's image
blocks (runtime/anthropic.py, mapped onto OpenAI's image_url parts as llama-server's convert_anthropic_to_oai
maps them) give the OpenAI shape's text, and llama-server's /completion with ``{"prompt_string",
"multimodal_data"}`` (runtime/llamaserver.py) gives the text `kvrun run --image` writes for the same prompt;
bad pictures are one-line 4xx answers."""

from __future__ import annotations

import base64
import http.client
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import kvrun
from kvrun.cli import main
from kvrun.runtime.server import make_server
from kvrun.runtime.vision import MARKER
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj

SAMPLE = {"max_tokens": 12, "temperature": 0, "repeat_penalty": 3.0}  # (test_vision_chat.py says why the penalty)
RUN_FLAGS = ["-n", "12", "--temp", "0", "--repeat-penalty", "3", "--no-stats"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vision_shapes")
    png, other = d / "wide.png", d / "square.png"
    Image.fromarray(sample_image(300, 180, seed=1)).save(png)
    Image.fromarray(sample_image()).save(other)
    return {"text": write_tiny_gemma3_vl(d / "text.gguf"), "mmproj": write_tiny_mmproj(d / "mmproj.gguf"), "png": png, "other": other}


@pytest.fixture(scope="module")
def model(files):
    return kvrun.load(str(files["text"]), n_ctx=256, n_batch=64, threads=1, mmproj=str(files["mmproj"]))


def serve(model):
    httpd = make_server(model, "127.0.0.1", 0, "tiny-vl")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def server(model):
    httpd = serve(model)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def call(port: int, path: str, body: object) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, json.loads(text)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def image_block(path: Path) -> dict[str, object]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(path)}}


def kvrun_run(files: dict[str, Path], prompt: str, *images: Path) -> str:
    """What `kvrun run --mmproj --image` writes after the prompt it echoes."""
    args = ["run", str(files["text"]), "--mmproj", str(files["mmproj"]), "-p", prompt, "-c", "256", *RUN_FLAGS]
    r = CliRunner().invoke(main, args + [a for p in images for a in ("--image", str(p))])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(prompt) and r.stdout.endswith("\n")
    return r.stdout[len(prompt) : -1]


# ---------------------------------------------------------------- Anthropic's Messages API


def test_anthropic_image_blocks_give_the_openai_shapes_prompt_and_text(server, model, files):
    """An image block is the OpenAI image_url part of a data URL; text and image blocks keep their order and
    are joined as OpenAI's parts are (a newline).  The Messages API has no repeat penalty, so its greedy text is
    the tiny model's newlines; that the prompt is the OpenAI shape's, picture included, shows in the cache: the
    OpenAI request that follows finds all of it there (the picture's rows keyed by its pixels; the OpenAI
    shape's text is `kvrun run --image`'s: test_vision_chat.py)."""
    openai = [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                           {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(files["png"])}}]}]  # fmt: skip
    greedy = model.chat(openai, max_tokens=12, temperature=0)
    n_prompt = model.last_stats.n_prompt
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, image_block(files["png"])]}],
            "max_tokens": 12, "temperature": 0}  # fmt: skip
    status, r = call(server, "/v1/messages", body)
    assert status == 200 and r["content"] == [{"type": "text", "text": greedy}], r
    assert r["usage"]["input_tokens"] == n_prompt  # (every position: the picture's rows counted)
    status, n = call(server, "/v1/messages/count_tokens", body)
    assert status == 200 and n["input_tokens"] == n_prompt
    status, o = call(server, "/v1/chat/completions", {"messages": openai, **SAMPLE})
    assert status == 200 and o["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1  # (all but the last, fed again)


def test_a_block_without_media_type_is_taken_as_jpeg_as_llama_server_does(server, files):
    block = image_block(files["png"])
    del block["source"]["media_type"]  # (the data URL says image/jpeg; Pillow reads the bytes whatever it says)
    status, r = call(server, "/v1/messages", {"messages": [{"role": "user", "content": [block]}], "max_tokens": 2})
    assert status == 200, r


# ---------------------------------------------------------------- llama-server's /completion


def test_completion_multimodal_data_gives_the_text_kvrun_run_writes(server, model, files):
    prompt = f"look: {MARKER} and then {MARKER} so"
    want = kvrun_run(files, prompt, files["png"], files["other"])
    assert want.strip("\n")
    body = {"prompt": {"prompt_string": prompt, "multimodal_data": [b64(files["png"]), b64(files["other"])]},
            "n_predict": 12, "temperature": 0, "repeat_penalty": 3.0}  # fmt: skip
    status, r = call(server, "/completion", body)
    assert status == 200 and r["content"] == want, r
    pieces = model.vision.segments(prompt, [None, None], encode=False)
    assert r["tokens_evaluated"] == sum(len(p) if isinstance(p, list) else model.vision.n_tokens for p in pieces)  # (rows counted)
    assert r["prompt"] == model.detokenize([t for p in pieces if isinstance(p, list) for t in p])  # (the text: rows left out, as llama-server's)
    call(server, "/slots/0?action=erase", {})
    status, r2 = call(server, "/completion", {**body, "prompt": [body["prompt"]]})  # ([{...}]: one prompt)
    assert status == 200 and r2["content"] == want
    status, r3 = call(server, "/completion", {**body, "prompt": {"prompt_string": "plain text"}})  # (no pictures: a text prompt)
    assert status == 200 and r3["tokens_evaluated"] == len(model.tokenize("plain text"))


def bad(prompt: object) -> dict[str, object]:
    return {"prompt": prompt, "n_predict": 2}


@pytest.mark.parametrize("path, body, says", [
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://a.example/x.png"}}]}],
                      "max_tokens": 2}, "image URLs are not fetched"),
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "%%%"}}]}],
                      "max_tokens": 2}, "not valid base64"),
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "aGVsbG8="}}]}],
                      "max_tokens": 2}, "cannot read it as an image"),
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}],
                      "max_tokens": 2}, "source must be"),
    ("/v1/messages", {"messages": [{"role": "assistant", "content": [{"type": "image", "source": {"type": "base64", "data": "aGk="}}]}],
                      "max_tokens": 2}, "'image' blocks are not supported"),
    ("/completion", bad({"prompt_string": f"{MARKER}{MARKER} x", "multimodal_data": ["aGk="]}), "has 2 <__media__> markers and multimodal_data 1"),
    ("/completion", bad({"prompt_string": f"{MARKER} x", "multimodal_data": ["%%%"]}), "multimodal_data[0]: the image is not valid base64"),
    ("/completion", bad({"prompt_string": f"{MARKER} x", "multimodal_data": ["aGVsbG8="]}), "cannot read it as an image"),
    ("/completion", bad({"prompt_string": f"{MARKER} x", "multimodal_data": [3]}), "must be a list of base64 images"),
    ("/completion", bad({"multimodal_data": ["aGk="]}), "prompt_string must be a string"),
])  # fmt: skip
def test_bad_images_are_a_4xx_in_one_line(server, path, body, says):
    status, r = call(server, path, body)
    err = r["error"]["message"]
    assert status == 400 and says in err and "\n" not in err, r


def test_a_server_without_a_projector_refuses_both_shapes_in_one_line(tiny_llama_path, files):
    httpd = serve(kvrun.load(tiny_llama_path, n_ctx=64))
    port = httpd.server_address[1]
    try:
        for path, body in [("/v1/messages", {"messages": [{"role": "user", "content": [image_block(files["png"])]}], "max_tokens": 2}),
                           ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": [image_block(files["png"])]}]}),
                           ("/completion", bad({"prompt_string": f"{MARKER} x", "multimodal_data": [b64(files["png"])]}))]:  # fmt: skip
            status, r = call(port, path, body)
            assert status == 400 and "images are not supported without the model's projector" in r["error"]["message"], (path, r)
    finally:
        httpd.shutdown()
        httpd.server_close()
