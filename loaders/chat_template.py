"""Chat templates: the GGUF's ``tokenizer.chat_template`` rendered with jinja2, sandboxed.

The environment is the one Hugging Face's ``apply_chat_template`` builds: an
``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, loop
controls, ``raise_exception``, ``strftime_now`` and a ``tojson`` filter that
does not HTML-escape.  A model without a template gets a built-in one chosen by
architecture and vocabulary (:func:`builtin_template`), written to produce
exactly what llama.cpp's built-in templates of the same name produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

# llama.cpp's "gemma" built-in (llama-chat.cpp): system messages are trimmed, joined and
# put at the top of the next user turn; "assistant" is "model"; contents are trimmed.
# No BOS: the tokenizer adds it.
GEMMA_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + (message['content'] | trim(' \\t\\n\\x0b\\x0c\\r')) -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' -}}"
    "{%- if ns.system and role != 'model' -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}"
    "{{- message['content'] | trim(' \\t\\n\\x0b\\x0c\\r') -}}{{- '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

# llama.cpp's "chatml" built-in
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# llama.cpp's "llama3" built-in
LLAMA3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- (message['content'] | trim(' \\t\\n\\x0b\\x0c\\r')) + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# Gemma 4's turns (<|turn>role ... <turn|>), for a Gemma 4 file without its own template: llama.cpp has no built-in
# for it, so this is its own template (tests/fixtures/chat_template_gemma4.jinja) cut down to text: the system
# message a turn of its own (<|think|> at its top with enable_thinking), the reply's thinking stripped from history,
# an empty thought channel after the generation prompt unless enable_thinking; no tools.  No BOS: the tokenizer adds it.
GEMMA4_TEMPLATE = (
    "{%- set ns = namespace(msgs=messages) -%}"
    "{%- set think = enable_thinking is defined and enable_thinking -%}"
    "{%- if think or (messages and messages[0]['role'] in ['system', 'developer']) -%}"
    "{{- '<|turn>system\\n' + ('<|think|>' if think else '') -}}"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- messages[0]['content'] | trim -}}{%- set ns.msgs = messages[1:] -%}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in ns.msgs -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- set texts = [message['content']] if message['content'] is string else [] -%}"
    "{%- if message['content'] is not string and message['content'] is sequence -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- endif -%}"
    "{{- '<|turn>' + role + '\\n' -}}"
    "{%- for text in texts -%}"
    "{%- set kept = namespace(text=text) -%}"
    "{%- if role == 'model' -%}"
    "{%- set kept.text = '' -%}"
    "{%- for part in text.split('<channel|>') -%}{%- set kept.text = kept.text + part.split('<|channel>')[0] -%}{%- endfor -%}"
    "{%- endif -%}"
    "{{- kept.text | trim -}}"
    "{%- endfor -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' + ('' if think else '<|channel>thought\\n<channel|>') -}}{%- endif -%}"
)

BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma4": GEMMA4_TEMPLATE, "chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}


class ChatTemplateError(ValueError):
    """A chat template that does not compile or render; the message is one line."""


def file_template(meta: Any) -> str | None:
    """The GGUF's own ``tokenizer.chat_template`` (``meta``: its key-value mapping), None when it has none."""
    t = meta.get("tokenizer.chat_template")
    return t if isinstance(t, str) else None


def builtin_template_name(arch: str, tokens: Any = None) -> str:
    """Which built-in fits: ``gemma4`` (gemma4, or a vocabulary with ``<|turn>``), ``gemma`` (other gemma
    architectures, or a vocabulary with ``<start_of_turn>``), ``llama3`` (``<|start_header_id|>``), else ``chatml``."""
    vocab = _vocab_lookup(tokens)
    if arch.lower() == "gemma4" or (vocab("<|turn>") and vocab("<turn|>")):  # (Gemma 4's own turns: GEMMA4_TEMPLATE)
        return "gemma4"
    if arch.lower().startswith("gemma") or vocab("<start_of_turn>"):
        return "gemma"
    if vocab("<|start_header_id|>") and vocab("<|eot_id|>"):
        return "llama3"
    return "chatml"


def builtin_template(arch: str, tokens: Any = None) -> str:
    """The template to use when the GGUF has none.

    ``tokens``: a :class:`~kvrun.loaders.tokenizer.Tokenizer`, the token texts,
    or None (then the architecture alone decides).
    """
    return BUILTIN_TEMPLATES[builtin_template_name(arch, tokens)]


def _vocab_lookup(tokens: Any):
    if tokens is None:
        return lambda t: False
    if hasattr(tokens, "token_id"):  # a Tokenizer
        return lambda t: tokens.token_id(t) is not None
    if isinstance(tokens, (set, frozenset, dict)):
        return tokens.__contains__
    texts = set(tokens) if isinstance(tokens, Iterable) else set()
    return texts.__contains__


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def _raise(msg: Any) -> None:
    raise ChatTemplateError(f"chat template raised: {_one_line(msg)}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    """Hugging Face's ``tojson`` (jinja2's own one HTML-escapes)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys, default=_listed)


def _listed(x: Any) -> list[Any]:
    """A filter's generator (``tools | map(attribute='function')``) as the list it stands for, as minja writes it."""
    if hasattr(x, "__next__"):
        return list(x)
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: {_one_line(e.message or e)} (line {e.lineno}); pass another template") from None
    except Exception as e:  # noqa: BLE001 - anything else jinja2 raises while compiling
        raise ChatTemplateError(f"chat template does not compile: {type(e).__name__}: {_one_line(e)}") from None


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with ``template``.

    ``template`` None renders ChatML.  ``extra`` keywords (``tools``,
    ``date_string``...) are passed to the template as variables.  A template
    that does not compile, fails while rendering or calls ``raise_exception``
    raises :class:`ChatTemplateError` with a one-line message.

    A template that starts with ``{{ bos_token }}`` puts the BOS text in the
    prompt; tokenize such a prompt without adding another BOS (llama.cpp strips
    the leading BOS text when its tokenizer adds one).
    """
    tpl = _compile(CHATML_TEMPLATE if template is None else template)
    try:
        return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token, **extra)
    except ChatTemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - jinja2 raises many kinds; the user needs one line
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {_one_line(e)}") from None
