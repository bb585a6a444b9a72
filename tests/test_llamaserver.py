"""`kvrun serve`'s llama-server endpoints (runtime/llamaserver.py): /completion answers with the Python API's
text and llama-server's fields, streamed pieces join to the whole, /tokenize gives llama.cpp's ids, /infill
builds llama-server's fill-in-the-middle prompt token for token (tests/fixtures/llamaserver_fim.json,
tools/make_llamaserver_fixtures.py), and a bad request is a 4xx with one line."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from test_server import CHAT, call, events
from tiny_fim import FIM_VOCABS, write_tiny_fim

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.tokenizer import Tokenizer
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine
from kvrun.runtime.llamaserver import fim_prompt
from kvrun.runtime.server import make_server

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llamaserver_fim.json").read_text())
PROMPT = "the cat sat on the mat and"


def _serve(model: Model):
    httpd = make_server(model, "127.0.0.1", 0, "tiny")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def model(tiny_llama_path):
    return Model(Engine(tiny_llama_path, n_ctx=256, n_batch=64))


@pytest.fixture(scope="module")
def server(model):
    httpd = _serve(model)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def fim_paths(tmp_path_factory) -> dict[str, Path]:
    """The tiny FIM models, byte for byte those the fixture was made from."""
    d = tmp_path_factory.mktemp("fim")
    paths = {v: write_tiny_fim(d / f"{v}.gguf", v) for v in FIM_VOCABS}
    for v, p in paths.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == FIXTURE[v]["sha256"], "tiny_fim.py changed: run tools/make_llamaserver_fixtures.py"
    return paths


@pytest.fixture(scope="module")
def fim_model(fim_paths):
    return Model(Engine(fim_paths["qwen"], n_ctx=512, n_batch=64))


@pytest.fixture(scope="module")
def fim_server(fim_model):
    httpd = _serve(fim_model)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def post(port: int, path: str, body: object) -> dict:
    status, text = call(port, "POST", path, body)
    assert status == 200, text
    return json.loads(text)


# ---------------------------------------------------------------- /completion
def test_completion_is_the_python_apis_greedy_text_with_llama_servers_fields(server, model):
    want = model.complete(PROMPT, max_tokens=8, temperature=0)
    r = post(server, "/completion", {"prompt": PROMPT, "n_predict": 8, "temperature": 0})
    n_prompt = len(model.tokenize(PROMPT))
    assert r["content"] == want and r["stop"] is True and r["model"] == "tiny"
    assert r["tokens_predicted"] == 8 and r["tokens_evaluated"] == n_prompt and r["stop_type"] == "limit" and r["stopping_word"] == ""
    assert r["truncated"] is False and r["prompt"] == PROMPT and r["tokens_cached"] == n_prompt + 8 - 1
    gs = r["generation_settings"]
    assert gs["n_predict"] == 8 and gs["temperature"] == 0 and gs["n_ctx"] == 256 and gs["stream"] is False
    t = r["timings"]
    assert t["prompt_n"] + t["cache_n"] == n_prompt and t["predicted_n"] == 8 and t["predicted_ms"] > 0
    assert {"prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_per_token_ms", "predicted_per_second"} <= set(t)
    assert "completion_probabilities" not in r


def test_completion_reuses_the_slots_cache_unless_cache_prompt_is_false(server, model):
    n_prompt = len(model.tokenize(PROMPT))
    body = {"prompt": PROMPT, "n_predict": 4, "temperature": 0}
    first = post(server, "/completion", body)
    again = post(server, "/completion", body)  # the whole prompt is cached: its last token is evaluated for its logits
    assert again["content"] == first["content"] and again["timings"]["cache_n"] == n_prompt - 1 and again["timings"]["prompt_n"] == 1
    fresh = post(server, "/completion", dict(body, cache_prompt=False))
    assert fresh["content"] == first["content"] and fresh["timings"]["cache_n"] == 0 and fresh["timings"]["prompt_n"] == n_prompt


def test_streamed_pieces_join_to_the_whole_and_the_last_event_is_the_final_object(server):
    body = {"prompt": PROMPT, "n_predict": 10, "temperature": 0}
    whole = post(server, "/completion", body)["content"]
    status, text = call(server, "POST", "/completion", dict(body, stream=True))
    ev = events(text)
    assert status == 200 and "[DONE]" not in ev  # (llama-server's native stream ends with its final object)
    *pieces, last = ev
    assert all(p["stop"] is False for p in pieces) and "".join(p["content"] for p in pieces) == whole
    assert last["stop"] is True and last["content"] == "" and last["tokens_predicted"] == 10 and "timings" in last


def test_a_prompt_of_token_ids_or_mixed_ids_and_text_is_completed_as_those_tokens(server, model):
    ids = model.tokenize(PROMPT)
    want = model.complete(ids, max_tokens=6, temperature=0)
    assert post(server, "/completion", {"prompt": ids, "n_predict": 6, "temperature": 0})["content"] == want
    head, tail = ids[:3], " on the mat"
    mixed = head + model.tokenize(tail, add_bos=False)  # (a text after ids: no BOS of its own)
    r = post(server, "/completion", {"prompt": [*head, tail], "n_predict": 6, "temperature": 0})
    assert r["content"] == model.complete(mixed, max_tokens=6, temperature=0) and r["tokens_evaluated"] == len(mixed)


def test_a_stop_string_ends_the_text_and_is_reported_as_the_stopping_word(server, model):
    sampling = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 3}  # (the tiny model's greedy text is one letter)
    whole = model.complete(PROMPT, max_tokens=24, **sampling)
    word = next(whole[i : i + 2] for i in range(len(whole) - 1) if whole[i] != whole[i + 1])  # (where the text changes)
    r = post(server, "/completion", {"prompt": PROMPT, "n_predict": 24, "stop": ["\x00never", word], **sampling})
    assert r["content"] == whole[: whole.find(word)] != "" and r["stop_type"] == "word" and r["stopping_word"] == word


def test_n_probs_gives_each_tokens_likeliest_alternatives(server, model):
    r = post(server, "/completion", {"prompt": PROMPT, "n_predict": 5, "temperature": 0, "n_probs": 3})
    probs = r["completion_probabilities"]
    assert len(probs) == r["tokens_predicted"] == 5
    for p in probs:  # greedy: the chosen token is the likeliest
        assert len(p["top_logprobs"]) == 3 and p["top_logprobs"][0]["id"] == p["id"] and p["logprob"] <= 0
        assert bytes(p["bytes"]) == model.tokenizer.token_bytes(p["id"])
    assert "".join(bytes(p["bytes"]).decode("utf-8", "replace") for p in probs) == r["content"]


# ---------------------------------------------------------------- tokens, template, props
@pytest.mark.parametrize("variant", list(FIM_VOCABS))
def test_tokenize_gives_llama_cpps_ids(fim_paths, variant):
    tk = Tokenizer.from_metadata(GGUFFile(fim_paths[variant]).metadata)
    for case in FIXTURE[variant]["tokenize"]:
        for flags, want in case["ids"].items():
            add_special, parse_special = (c == "1" for c in flags)
            assert tk.encode(case["text"], add_bos=None if add_special else False, parse_special=parse_special) == want, (case["text"], flags)


def test_tokenize_and_detokenize_over_http(fim_server, fim_model):
    for case in FIXTURE["qwen"]["tokenize"]:
        for flags, want in case["ids"].items():
            body = {"content": case["text"], "add_special": flags[0] == "1", "parse_special": flags[1] == "1"}
            assert post(fim_server, "/tokenize", body) == {"tokens": want}, (case["text"], flags)
        ids = case["ids"]["01"]
        assert post(fim_server, "/detokenize", {"tokens": ids}) == {"content": case["text"]}  # the round trip
    pieces = post(fim_server, "/tokenize", {"content": "h\u00e9<|fim_pad|>", "with_pieces": True})["tokens"]
    # a byte of a character cut in two is no text: its bytes
    assert pieces == [{"id": 104, "piece": "h"}, {"id": 195, "piece": [0xC3]}, {"id": 169, "piece": [0xA9]}, {"id": 265, "piece": "<|fim_pad|>"}]


def test_apply_template_is_the_chat_templates_prompt(server, model):
    assert post(server, "/apply-template", {"messages": CHAT}) == {"prompt": model.render(CHAT)}


def test_props_describe_the_server_and_cannot_be_set(server, tiny_llama_path):
    r = json.loads(call(server, "GET", "/props")[1])
    assert r["total_slots"] == 1 and r["model_path"] == str(tiny_llama_path) and r["build_info"].startswith("kvrun ")
    assert r["modalities"] == {"vision": False, "audio": False} and isinstance(r["chat_template"], str)
    d = r["default_generation_settings"]
    assert d["n_ctx"] == 256 and d["params"]["temperature"] == 0.8 and d["params"]["n_predict"] == -1
    status, text = call(server, "POST", "/props", {"n_ctx": 8})
    err = json.loads(text)["error"]
    assert status == 501 and "--props" in err["message"] and "\n" not in err["message"]


# ---------------------------------------------------------------- /infill
@pytest.mark.parametrize("variant", list(FIM_VOCABS))
def test_infill_prompt_is_llama_servers_token_for_token(fim_paths, variant):
    tk = Tokenizer.from_metadata(GGUFFile(fim_paths[variant]).metadata)
    fx = FIXTURE[variant]
    assert tk.fim_ids == {k: (None if v == -1 else v) for k, v in fx["fim"].items()}  # stated, or found by their text
    for c in fx["infill"]:
        prompt = tk.encode(c["prompt"], add_bos=False)
        got = fim_prompt(tk, c["input_prefix"], c["input_suffix"], c["input_extra"], prompt, c["n_ctx"], c["n_batch"])
        assert got == c["ids"], c


def test_infill_completes_the_fim_prompt_as_the_python_api_does(fim_server, fim_model):
    body = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "prompt": "return", "n_predict": 6, "temperature": 0,
            "input_extra": [{"filename": "x.py", "text": "X = 1\n"}]}  # fmt: skip
    tk = fim_model.tokenizer
    ids = fim_prompt(tk, body["input_prefix"], body["input_suffix"], body["input_extra"], tk.encode("return", add_bos=False), 512)
    assert ids[0] == tk.fim_ids["fim_pre"] and ids[-1] == tk.fim_ids["fim_mid"]  # (n_ctx 512 leaves the extra file no room)
    r = post(fim_server, "/infill", body)
    assert r["tokens_evaluated"] == len(ids) and r["content"] == fim_model.complete(ids, max_tokens=6, temperature=0)


# ---------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    "path, body, status, says",
    [
        ("/completion", {}, 400, "prompt must be a text"),
        ("/completion", {"prompt": ["one", "two"]}, 400, "several prompts"),
        ("/completion", {"prompt": ""}, 400, "prompt is empty"),
        ("/completion", {"prompt": [1, 10**9]}, 400, "token id 1000000000 is not in"),
        ("/completion", {"prompt": "x", "n_predict": "8"}, 400, "n_predict must be an integer"),
        ("/completion", {"prompt": "x", "n_probs": 99}, 400, "n_probs must be an integer in 0..20"),
        ("/completion", {"prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
        ("/completion", {"prompt": "x", "cache_prompt": 1}, 400, "cache_prompt must be true or false"),
        ("/completion", {"prompt": "x", "temperature": -1}, 400, "temperature must be >= 0"),
        ("/completion", {"prompt": "x", "grammar": "root ::= ("}, 400, "grammar line 1"),
        ("/completion", {"prompt": "the " * 400}, 400, "the prompt is"),
        ("/completion", {"prompt": "the " * 400, "stream": True}, 400, "the prompt is"),  # (before the stream starts)
        ("/tokenize", {}, 400, "content is required"),
        ("/tokenize", {"content": 5}, 400, "content must be a text"),
        ("/tokenize", {"content": "x", "with_pieces": "no"}, 400, "with_pieces must be true or false"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens must be a list of token ids"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens must be token ids in"),
        ("/apply-template", {"messages": []}, 400, "messages must be a non-empty list"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b"}, 501, "has no fill-in-the-middle"),
    ],
)
def test_a_bad_request_is_a_4xx_with_one_line_and_the_server_goes_on(server, path, body, status, says):
    got, text = call(server, "POST", path, body)
    err = json.loads(text)["error"]
    assert got == status and says in err["message"] and "\n" not in err["message"], text
    assert call(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize(
    "body, says",
    [
        ({"input_suffix": "b"}, "input_prefix is required"),
        ({"input_prefix": "a"}, "input_suffix is required"),
        ({"input_prefix": "a", "input_suffix": "b", "prompt": 5}, "prompt must be a string"),
        ({"input_prefix": "a", "input_suffix": "b", "input_extra": "c"}, "input_extra must be a list"),
        ({"input_prefix": "a", "input_suffix": "b", "input_extra": [{"filename": "f"}]}, "input_extra[0] must have a text"),
        ({"input_prefix": 7, "input_suffix": "b"}, "input_prefix / input_suffix: must be a text"),
    ],
)
def test_a_bad_infill_request_is_a_400(fim_server, body, says):
    got, text = call(fim_server, "POST", "/infill", body)
    err = json.loads(text)["error"]
    assert got == 400 and says in err["message"] and "\n" not in err["message"], text
