"""Chat templates render like Hugging Face's / llama.cpp's built-ins, and fail in one line."""

from __future__ import annotations

import pytest

from kvrun.loaders.chat_template import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    LLAMA3_TEMPLATE,
    ChatTemplateError,
    builtin_template,
    render_chat,
)
from kvrun.loaders.gguf_file import GGUFFile

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.real_model
def test_smollm2_template_renders_a_three_turn_conversation(smollm2_path):
    tpl = GGUFFile(smollm2_path).metadata["tokenizer.chat_template"]
    assert render_chat(tpl, MSGS) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(tpl, MSGS, add_generation_prompt=False).endswith("Bye<|im_end|>\n")
    # without a system message SmolLM2's template inserts its own
    assert render_chat(tpl, MSGS[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gemma_builtin_merges_system_into_first_user_turn_like_llamacpp():
    assert render_chat(GEMMA_TEMPLATE, MSGS) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # contents are trimmed; no system message, no generation prompt
    msgs = [{"role": "user", "content": "  Hi \n"}, {"role": "assistant", "content": "Yo"}]
    assert render_chat(GEMMA_TEMPLATE, msgs, add_generation_prompt=False) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"


@pytest.mark.parametrize(
    "conv, want",
    [  # outputs of llama.cpp's llama_chat_apply_template("gemma", ...)
        (
            [("user", "  Hi \n\x0b"), ("assistant", " Yo "), ("system", "S1 "), ("system", " S2"), ("user", "x"), ("assistant", "y")],
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n<start_of_turn>user\nS1S2\n\nx<end_of_turn>\n"
            "<start_of_turn>model\ny<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            [("assistant", "starts with model"), ("system", "sys"), ("assistant", "m2"), ("user", "u")],
            "<start_of_turn>model\nstarts with model<end_of_turn>\n<start_of_turn>model\nm2<end_of_turn>\n"
            "<start_of_turn>user\nsys\n\nu<end_of_turn>\n<start_of_turn>model\n",
        ),
    ],
)
def test_gemma_builtin_equals_llamacpp_on_odd_conversations(conv, want):
    """Later system messages join and wait for the next user turn; contents trimmed as C isspace."""
    assert render_chat(GEMMA_TEMPLATE, [{"role": r, "content": c} for r, c in conv]) == want


def test_builtin_template_is_chosen_by_architecture_and_vocabulary():
    assert builtin_template("gemma3") is GEMMA_TEMPLATE
    assert builtin_template("llama", ["<unk>", "<start_of_turn>", "<end_of_turn>"]) is GEMMA_TEMPLATE
    assert builtin_template("llama", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]) is LLAMA3_TEMPLATE
    assert builtin_template("qwen2", ["<|im_start|>", "<|im_end|>"]) is CHATML_TEMPLATE
    assert builtin_template("llama") is CHATML_TEMPLATE


def test_chatml_and_llama3_builtins():
    assert render_chat(None, MSGS[1:2]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(LLAMA3_TEMPLATE, MSGS[:2]) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_environment_offers_what_hf_templates_use():
    tpl = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ tools | tojson }}{{ eos_token }}"
    )
    out = render_chat(tpl, MSGS, bos_token="<s>", eos_token="</s>", tools=[{"name": "f<x>"}])
    assert out == '<s>{"role": "system", "content": "Be brief."}4[{"name": "f<x>"}]</s>'


def test_trim_and_lstrip_blocks_as_hf():
    tpl = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}"
    assert render_chat(tpl, MSGS) == "[Hi]\n[Bye]\n"


def test_sandbox_forbids_mutation():
    with pytest.raises(ChatTemplateError, match="failed to render"):
        render_chat("{% set x = [] %}{{ x.append(1) }}", MSGS)


def test_syntax_error_is_one_line():
    with pytest.raises(ChatTemplateError, match="does not compile") as e:
        render_chat("{% for x in %}", MSGS)
    assert "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat("{% if x %}never closed", MSGS)


def test_raise_exception_is_reported():
    tpl = "{% if messages[1]['role'] != 'user' %}{{ raise_exception('roles must\nalternate') }}{% endif %}ok"
    assert render_chat(tpl, MSGS) == "ok"
    with pytest.raises(ChatTemplateError, match="raised: roles must alternate$"):
        render_chat(tpl, MSGS[::-1][:2])


def test_render_error_is_one_line():
    with pytest.raises(ChatTemplateError, match="failed to render") as e:
        render_chat("{{ messages[0]['content'] + 1 }}", MSGS)
    assert "\n" not in str(e.value)
