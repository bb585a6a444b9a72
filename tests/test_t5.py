"""T5 text generation (models/t5.py): the encoder-decoder against llama.cpp on tiny random F32 models (tests/tiny_t5.py:
Flan-T5's gated GELU with its own output head, and the original T5's ReLU with a tied one).

The fixtures (tests/fixtures/t5_<name>.npz, tools/make_t5_fixture.py) are llama.cpp's decoder logits after it encoded a
prompt: [start] + 24 forced tokens fed in one batch and a token a llama_decode, and its greedy continuation.  kvrun's
logits are held within LOGIT_TOL of the row's largest logit (measured: 2.3e-3 t5, 6.1e-4 t5-relu; ggml's float16
GELU table makes the gated one noisier, as in tests/test_embed_models2.py; llama.cpp's own batch and step logits
differ by 3.8e-5 and 1.7e-4 of it).  A wrong bucket or a missing bias moves them by tenths.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from tiny_t5 import DEC_START, N_REL_BUCKETS, VARIANTS, write_tiny_t5

from kvrun.cache.kvconfig import KVConfig
from kvrun.loaders.errors import KvrunError
from kvrun.models.t5 import causal_position_bucket
from kvrun.runtime.api import Model
from kvrun.runtime.engine import Engine, GenRequest
from kvrun.runtime.sampling import SamplerConfig

FIX = __import__("pathlib").Path(__file__).parent / "fixtures"
LOGIT_TOL = 4e-3  # of the row's largest logit
PROMPTS = ["translate English to German: Hello", "the cat sat on the mat. the cat sat on the mat again, and then the cat ran."]


@pytest.fixture(scope="module", params=list(VARIANTS))
def t5(request, tmp_path_factory):
    name = request.param
    path = write_tiny_t5(tmp_path_factory.mktemp(name) / "m.gguf", name)
    fx = np.load(FIX / f"t5_{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "the fixture was made from another model file"
    return name, path, Model(Engine(path, n_ctx=64)), fx


def _row_error(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())


def _greedy() -> GenRequest:
    return GenRequest(max_tokens=12, sampler=SamplerConfig(temperature=0.0))


def test_prompt_ids_and_start_token_are_llama_cpps(t5):
    _, _, m, fx = t5
    assert m.config.arch == "t5" and m.engine.model.encoder_decoder and not m.engine.model.encoder
    assert m.engine.model.dec_start == int(fx["start"]) == DEC_START
    for k, p in enumerate(PROMPTS):
        assert m.tokenize(p) == fx[f"ids_{k}"].tolist()  # (T5's </s> appended, no BOS)


def test_decoder_logits_fed_in_one_batch_are_llama_cpps(t5):
    """The prompt encoded on an empty cache gives the start token's logits; the forced tokens then go in one forward."""
    _, _, m, fx = t5
    for k in range(len(PROMPTS)):
        cache = m.new_cache()
        first = m.engine.eval(cache, fx[f"ids_{k}"].tolist())
        assert first.shape == (1, m.config.n_vocab) and cache.offset == 1  # (the cache holds the decoder's tokens)
        rest = m.engine.eval(cache, fx[f"forced_{k}"].tolist(), logits_all=True)
        assert _row_error(np.concatenate([first, rest]), fx[f"prefill_{k}"]) < LOGIT_TOL


def test_decoder_logits_fed_a_token_at_a_time_are_llama_cpps(t5):
    _, _, m, fx = t5
    for k in range(len(PROMPTS)):
        cache = m.new_cache()
        rows = [m.engine.eval(cache, fx[f"ids_{k}"].tolist())] + [m.engine.eval(cache, [t]) for t in fx[f"forced_{k}"].tolist()]
        assert _row_error(np.concatenate(rows), fx[f"steps_{k}"]) < LOGIT_TOL


def test_greedy_generation_is_llama_cpps(t5):
    _, _, m, fx = t5
    for k in range(len(PROMPTS)):
        got = list(m.engine.generate_tokens(m.new_cache(), fx[f"ids_{k}"].tolist(), _greedy()))
        assert got == fx[f"greedy_{k}"].tolist()


def test_a_reused_cache_encodes_each_new_prompt_afresh(t5):
    """A chat's or a server slot's cache (Engine.generate_reusing) holds decoder tokens, not the prompt: a second prompt,
    even one that starts as the first did, is encoded whole and decodes as on a fresh cache."""
    _, _, m, fx = t5
    cache, held = m.new_cache(), []
    for k in (0, 1, 0):
        got = list(m.engine.generate_reusing(cache, held, fx[f"ids_{k}"].tolist(), _greedy()))
        assert got == fx[f"greedy_{k}"].tolist()


def test_the_fixtures_reach_the_log_spaced_buckets():
    """Decoder distances past the exact buckets (half of them, causal), through 16 where llama.cpp's rounding decides."""
    fx = np.load(FIX / "t5_t5.npz")
    assert len(fx["forced_0"]) > 16 > N_REL_BUCKETS // 2
    assert max(len(fx[f"ids_{k}"]) for k in range(len(PROMPTS))) > N_REL_BUCKETS // 4  # (the encoder's, both ways)


def test_causal_position_buckets_are_llama_cpps():
    """llama_relative_position_bucket(key, query, n, bidirectional=false), printed from its C source: keys after the
    query in bucket 0; distances below n/2 exact, then log-spaced to 128, then the last bucket."""
    d = np.array([-3, 0, 1, 7, 8, 9, 11, 12, 15, 16, 17, 22, 23, 31, 32, 33, 45, 46, 63, 64, 65, 90, 91, 127, 128, 129, 1000])
    want16 = [0, 0, 1, 7, 8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 12, 12, 12, 13, 13, 14, 14, 14, 15, 15, 15, 15, 15]
    want32 = [0, 0, 1, 7, 8, 9, 11, 12, 15, 16, 16, 18, 18, 21, 21, 21, 23, 24, 26, 26, 26, 29, 29, 31, 31, 31, 31]
    np.testing.assert_array_equal(causal_position_bucket(-d, 16), want16)
    np.testing.assert_array_equal(causal_position_bucket(-d, 32), want32)


def test_run_writes_the_greedy_continuation(t5):
    """``kvrun run model.gguf -p PROMPT``: llama-cli's encoder-decoder path (the prompt encoded, decoding from the start token)."""
    from click.testing import CliRunner

    from kvrun.cli import main

    _, path, m, fx = t5
    r = CliRunner().invoke(main, ["run", str(path), "-p", PROMPTS[1], "-n", "12", "--temp", "0", "--no-stats"])
    assert r.exit_code == 0, r.output
    # (llama.cpp's greedy ids, as the stream prints them: T5's <unk>, a control token, prints nothing)
    assert PROMPTS[1] + m.complete(fx["ids_1"].tolist(), max_tokens=12, temperature=0.0) + "\n" in r.output
    assert PROMPTS[1] + m.detokenize(fx["greedy_1"][:1].tolist()) in r.output


def test_info_says_the_decoder_takes_relative_position_buckets_not_rope(t5):
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(t5[1])])
    rope = [ln for ln in r.output.splitlines() if ln.startswith("rope ")]
    assert r.exit_code == 0 and len(rope) == 1 and rope[0].endswith("none (relative position buckets: a learned bias per distance)"), r.output

def test_what_t5_cannot_do_is_refused_in_one_line(t5):
    _, path, m, _ = t5
    with pytest.raises(KvrunError) as e:  # (the decoder attends on the host over the plain fp16 rows)
        list(Model(Engine(path, n_ctx=64, kv=KVConfig(bits=4))).generate(PROMPTS[0], max_tokens=2))
    assert "--kv" in str(e.value) and "\n" not in str(e.value)
    from kvrun.runtime.sessionfile import prompt_cache

    with pytest.raises(KvrunError) as e:  # (the encoded prompt lives in the model, not the cache a file keeps)
        prompt_cache(path.parent / "p.bin", m.engine, m.tokenize(PROMPTS[0]))
    assert "--prompt-cache" in str(e.value) and not (path.parent / "p.bin").exists()
    with pytest.raises(KvrunError) as e:  # (the prompt's tokens are the encoder's: no logits of their own, no perplexity)
        m.logits(m.tokenize(PROMPTS[0]))
    assert "no logits" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KvrunError) as e:  # (a decoder forward with no encoded prompt: its states are not embeddings)
        m.engine.model.forward(np.zeros(1, np.int32), np.zeros(1, np.int32), m.new_cache(), np.zeros(1, np.int64), np.empty((1, 1), np.float32))
    assert "\n" not in str(e.value)


def test_the_server_completes_with_t5_again_and_again(t5):
    """`kvrun serve`: a slot's cache encodes each request's prompt afresh, so repeated and overlapping prompts answer
    as a fresh cache does (the Python API's text, token for token)."""
    import http.client
    import json
    import threading

    from kvrun.runtime.server import make_server

    _, _, m, fx = t5
    httpd = make_server(m, "127.0.0.1", 0, "tiny-t5")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for k in (1, 0, 1):
            conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=120)
            body = {"model": "tiny-t5", "prompt": PROMPTS[k], "max_tokens": 12, "temperature": 0}
            conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read().decode()
            conn.close()
            assert r.status == 200, text
            assert json.loads(text)["choices"][0]["text"] == m.complete(fx[f"ids_{k}"].tolist(), max_tokens=12, temperature=0.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
