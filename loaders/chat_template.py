"""Chat templates: the GGUF's ``tokenizer.chat_template`` rendered with jinja2, sandboxed.

The environment offers what real (Hugging Face style) templates use:
``raise_exception``, ``strftime_now``, the ``tojson`` filter and loop controls.
A model without a template gets a built-in one chosen by architecture
(Gemma's turn format, else ChatML), as llama.cpp's built-in templates do.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if loop.first and system -%}{{ system + '\n\n' }}{%- endif -%}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


class ChatTemplateError(ValueError):
    """A chat template that does not compile or render; the message is one line."""


def builtin_template(arch: str, tokenizer: Any = None) -> str:
    """The template to use when the GGUF has none."""
    if arch.startswith("gemma"):
        return GEMMA_TEMPLATE
    return CHATML_TEMPLATE


def _raise(msg: str) -> None:
    raise ChatTemplateError(f"chat template raised: {msg}")


def _tojson(x: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: {e.message} (line {e.lineno}); pass another template") from None


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` ([{"role", "content"}, ...]) with ``template`` (None: ChatML)."""
    tpl = _compile(template or CHATML_TEMPLATE)
    try:
        return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token, **extra)
    except ChatTemplateError:
        raise
    except Exception as e:  # jinja2 raises many kinds; the user needs one line
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
