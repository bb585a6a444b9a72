"""Speculative decoding with a draft model (runtime/speculative.py, llama.cpp's -md): the draft's
tokens are checked by the target in one forward and kept where its greedy choice agrees, so the text
is greedy decoding's; a draft of another vocabulary is refused in one line."""

from __future__ import annotations

import pytest
from tinybert import write_tiny_bert
from tinymodel import write_tiny_model

from kvrun.cache.kvconfig import KVConfig
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.engine import Engine, GenRequest, GenStats
from kvrun.runtime.sampling import SamplerConfig

GREEDY = GenRequest(max_tokens=40, sampler=SamplerConfig(temperature=0), ignore_eos=True)


def _gen(engine: Engine, prompt: list[int], req: GenRequest = GREEDY) -> tuple[list[int], GenStats]:
    st = GenStats()
    return list(engine.generate_tokens(engine.new_cache(), prompt, req, st)), st


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    return write_tiny_model(d / "target.gguf", "llama"), write_tiny_model(d / "draft.gguf", "llama", seed=5)


def test_the_text_is_greedy_decodings_whatever_the_draft(pair):
    target, draft = pair
    prompt = [5, 17, 3, 200, 41, 9]
    plain, _ = _gen(Engine(target, n_ctx=128), prompt)
    for d in (target, draft):  # the target itself (every draft kept) and another model
        out, st = _gen(Engine(target, n_ctx=128, draft=d, draft_max=5), prompt)
        assert out == plain and st.n_drafted > 0 and st.n_accepted <= st.n_drafted


def test_only_greedy_requests_are_drafted(pair):
    target, draft = pair
    e = Engine(target, n_ctx=128, draft=draft)
    _, st = _gen(e, [5, 17, 3], GenRequest(max_tokens=10, sampler=SamplerConfig(temperature=0.8, seed=1)))
    assert st.n_drafted == 0


def test_a_draft_that_cannot_serve_is_refused_in_one_line(pair, tmp_path):
    target, draft = pair
    with pytest.raises(KvrunError, match="vocabulary .* is not the target's"):
        Engine(target, draft=write_tiny_bert(tmp_path / "bert.gguf"))
    with pytest.raises(KvrunError, match="needs the fp16 KV cache"):
        Engine(target, draft=draft, kv=KVConfig.parse("4"))
    with pytest.raises(KvrunError, match="--draft-max must be in 1..16"):
        Engine(target, draft=draft, draft_max=0)
    with pytest.raises(KvrunError, match="--draft-p-min must be in"):
        Engine(target, draft=draft, draft_p_min=1.5)


def test_kvrun_run_takes_a_draft_model(pair):
    from click.testing import CliRunner

    from kvrun.cli import main

    target, draft = pair
    args = ["run", str(target), "-p", "the cat", "-n", "12", "--temp", "0", "--ignore-eos"]
    plain = CliRunner().invoke(main, [*args, "--no-stats"])
    fast = CliRunner().invoke(main, [*args, "-md", str(draft), "--draft-max", "4"])
    assert fast.exit_code == 0 and "drafts: kept" in fast.output, fast.output
    assert fast.stdout.startswith(plain.stdout.rstrip("\n")), (plain.output, fast.output)  # (stdout: a cold cache's notice is on stderr)


@pytest.mark.real_model
def test_smollm2_drafting_for_itself_keeps_its_drafts_and_its_text(smollm2_path):
    import kvrun

    prompt = [{"role": "user", "content": "List the first ten prime numbers."}]
    plain = kvrun.load(str(smollm2_path), n_ctx=512)
    want = plain.chat(prompt, max_tokens=40, temperature=0)
    m = kvrun.load(str(smollm2_path), n_ctx=512)
    m.engine.draft = __import__("kvrun.runtime.speculative", fromlist=["DraftModel"]).DraftModel(plain.engine, m.config.n_vocab)
    got = m.chat(prompt, max_tokens=40, temperature=0)
    st = m.last_stats
    assert got == want and st.n_drafted >= 20 and st.n_accepted >= 0.9 * st.n_drafted, (got, st)
