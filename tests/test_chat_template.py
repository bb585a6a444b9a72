"""Chat templates render like Hugging Face's, and fail in one line."""

from __future__ import annotations

import pytest

from kvrun.loaders.chat_template import GEMMA_TEMPLATE, ChatTemplateError, render_chat
from kvrun.loaders.gguf_file import GGUFFile

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.real_model
def test_smollm2_template(smollm2_path):
    tpl = GGUFFile(smollm2_path).metadata["tokenizer.chat_template"]
    out = render_chat(tpl, MSGS)
    assert out == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    # without a system message SmolLM2's template inserts its own
    assert render_chat(tpl, MSGS[1:2]).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_gemma_builtin_merges_system_into_first_turn():
    out = render_chat(GEMMA_TEMPLATE, MSGS, bos_token="<bos>")
    assert out == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_template_functions():
    tpl = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}{{ strftime_now('%Y') | length }}"
    assert render_chat(tpl, MSGS) == '{"role": "system", "content": "Be brief."}4'


def test_syntax_error_is_one_line():
    with pytest.raises(ChatTemplateError, match="does not compile") as e:
        render_chat("{% for x in %}", MSGS)
    assert "\n" not in str(e.value)


def test_raise_exception_is_reported():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", MSGS)
