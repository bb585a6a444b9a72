"""Chat template variables (llama-server's --chat-template-kwargs; Qwen3's ``enable_thinking``) reach the
template through every door: ``kvrun.load``, ``Model.chat``, ``kvrun chat``, ``kvrun serve`` and a
request's own ``chat_template_kwargs``; a bad value is a one-line error."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from test_server import call
from tinymodel import write_tiny_model

import kvrun
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.server import make_server

# as Qwen3's: an empty reasoning block after the generation prompt when thinking is off
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and enable_thinking is false %}"
    "<think></think>{% endif %}{% endif %}"
)
CHAT = [{"role": "user", "content": "the cat sat"}]
NO_THINK = {"enable_thinking": False}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("tk") / "thinking.gguf", "llama", chat_template=TEMPLATE))


def test_the_api_passes_them_to_the_template(path):
    m = kvrun.load(path, n_ctx=128)
    assert m.render(CHAT).endswith("<|assistant|>")
    assert m.render(CHAT, enable_thinking=False).endswith("<|assistant|><think></think>")
    assert kvrun.load(path, n_ctx=128, chat_template_kwargs=NO_THINK).render(CHAT).endswith("<think></think>")
    n = {}
    for kw in (None, NO_THINK):
        m.chat(CHAT, max_tokens=2, temperature=0, chat_template_kwargs=kw)
        n[bool(kw)] = m.last_stats.n_prompt
    assert n[True] == n[False] + len(m.tokenize("<think></think>", add_bos=False))


def test_a_bad_value_is_one_line(path):
    with pytest.raises(KvrunError, match="chat_template_kwargs must be a dict"):
        kvrun.load(path, n_ctx=128, chat_template_kwargs="enable_thinking=false")
    m = kvrun.load(path, n_ctx=128)
    with pytest.raises(ValueError, match="chat_template_kwargs must be a dict"):
        m.chat(CHAT, max_tokens=2, chat_template_kwargs=["x"])
    with pytest.raises(KvrunError, match="'bos_token' is kvrun's to set"):
        kvrun.load(path, n_ctx=128, chat_template_kwargs={"bos_token": "<s>"}).render(CHAT)
    for cmd in ("chat", "serve"):
        for bad, says in (("{enable_thinking: false}", "is not JSON"), ("[1]", "must be a JSON object")):
            r = CliRunner().invoke(main, [cmd, path, "--chat-template-kwargs", bad], input="")
            assert r.exit_code == 2 and f"kvrun: error: --chat-template-kwargs {says}" in r.output and r.output.count("\n") == 1, r.output


def test_kvrun_chat_renders_with_them(path):
    r = CliRunner().invoke(main, ["chat", path, "-c", "128", "-n", "2", "--temp", "0", "--chat-template-kwargs", '{"enable_thinking": false}'], input="the cat sat\n")
    assert r.exit_code == 0, r.output
    plain = CliRunner().invoke(main, ["chat", path, "-c", "128", "-n", "2", "--temp", "0"], input="the cat sat\n")
    extra = len(kvrun.load(path, n_ctx=128).tokenize("<think></think>", add_bos=False))
    n = [int(x.split("prompt ")[1].split(" tok")[0]) for x in (r.output, plain.output) if "prompt " in x]
    assert len(n) == 2 and n[0] == n[1] + extra, (r.output, plain.output)


def test_a_request_sets_them_over_the_servers(path):
    m = kvrun.load(path, n_ctx=128, chat_template_kwargs={"enable_thinking": True})
    httpd = make_server(m, "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        usage = {}
        for kw in (None, NO_THINK):
            body = {"messages": CHAT, "max_tokens": 2, "temperature": 0} | ({"chat_template_kwargs": kw} if kw else {})
            status, text = call(port, "POST", "/v1/chat/completions", body)
            assert status == 200, text
            usage[bool(kw)] = json.loads(text)["usage"]["prompt_tokens"]
        assert usage[True] == len(m.tokenize(m.render(CHAT, enable_thinking=False), add_bos=None))
        assert usage[False] == len(m.tokenize(m.render(CHAT), add_bos=None)) < usage[True]
        for bad, says in ((["x"], "must be an object"), ({"messages": []}, "may not set messages")):
            status, text = call(port, "POST", "/v1/chat/completions", {"messages": CHAT, "chat_template_kwargs": bad})
            assert status == 400 and says in json.loads(text)["error"]["message"], text
    finally:
        httpd.shutdown()
        httpd.server_close()
