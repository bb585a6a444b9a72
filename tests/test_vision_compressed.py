"""Images and audio on the compressed KV cache (``--kv-bits``, ``--kv-preset``, eviction): cache/picture_block.py.

Causal media rows (SmolVLM, Qwen2-VL / Qwen3-VL with their M-RoPE positions, LFM2-VL, InternVL, Pixtral, Ultravox's
audio) are prefill rows as any prompt's; Gemma 3's and Gemma 4's pictures, whose rows see each other both ways,
attend from their own float K/V before the cache compresses them.  Held to kvrun's own fp16 cache, which
tests/test_vision*.py hold to llama.cpp's libmtmd: at 8 bits the logits after pictures and text are the fp16 cache's
within quantization noise, at 4 and 2 bits they run and stay near, a lossless compressed cache (16-bit pools behind an
eviction policy that evicts nothing) gives the fp16 cache's logits exactly, pictures fed in pieces included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.kvconfig import KVConfig
from kvrun.loaders.errors import KvrunError
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj
from tiny_vision_gemma4 import IMAGE_TOKENS as G4_TOKENS, write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj
from tiny_vision_qwen2vl import write_tiny_qwen2vl_mmproj, write_tiny_qwen2vl_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

PROMPT = "the the the in in a <__media__>the cat sat on<__media__> and then what?"
PICTURES = [sample_image(), sample_image(300, 180, seed=1)]
#: 16-bit pools behind an eviction policy whose budget is the whole context: compressed, lossless, nothing evicted
LOSSLESS = "16,policy=h2o,budget=1024"


def _gemma4_moe(path: Path, chat_template: str | None = None) -> Path:
    """tiny_gemma4's 26B-like layout (no layers sharing K/V, so a compressed cache takes it) with the image markers."""
    from tiny_gemma4 import write_tiny_gemma4

    return write_tiny_gemma4(path, variant="moe", image_tokens=G4_TOKENS, chat_template=chat_template)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("vision_compressed")
    return {
        "gemma3": (write_tiny_gemma3_vl(d / "g3.gguf"), write_tiny_mmproj(d / "g3-mmproj.gguf")),
        "qwen2vl": (write_tiny_qwen2vl_text(d / "q2.gguf"), write_tiny_qwen2vl_mmproj(d / "q2-mmproj.gguf")),
        "gemma4": (_gemma4_moe(d / "g4.gguf"), write_tiny_gemma4v_mmproj(d / "g4-mmproj.gguf")),
    }


def _vision(pair: tuple[Path, Path], kv: str | None, n_batch: int = 64):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair[0], n_ctx=1024, n_batch=n_batch, threads=1, kv=KVConfig.parse(kv) if kv else None), pair[1])


def _logits(v, prompt: str = PROMPT, media: list | None = None) -> tuple[np.ndarray, object]:
    """The logits after ``prompt`` laid out with its media, and the cache."""
    segs = v.segments(prompt, media if media is not None else PICTURES[: prompt.count("<__media__>")])
    cache = v.engine.new_cache()
    return v.engine.eval(cache, v.prefill(cache, segs))[-1].astype(np.float64), cache


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp = p_logits - p_logits.max() - np.log(np.exp(p_logits - p_logits.max()).sum())
    lq = q_logits - q_logits.max() - np.log(np.exp(q_logits - q_logits.max()).sum())
    return float((np.exp(lp) * (lp - lq)).sum())


_fp16: dict[tuple[str, int], np.ndarray] = {}


def _reference(pairs, kind: str, n_batch: int = 64) -> np.ndarray:
    if (kind, n_batch) not in _fp16:
        _fp16[kind, n_batch] = _logits(_vision(pairs[kind], None, n_batch))[0]
    return _fp16[kind, n_batch]


# ---------------------------------------------------------------- the logits against the fp16 cache


@pytest.mark.parametrize("kind", ["gemma3", "qwen2vl", "gemma4"])
@pytest.mark.parametrize("bits, kl_max, diff_max", [(8, 1e-5, 0.05), (4, 1e-3, 0.5), (2, 1e-2, 1.5)])
def test_logits_after_pictures_and_text_stay_near_the_fp16_caches(pairs, kind, bits, kl_max, diff_max):
    """Two pictures and text, past the fp16 window (the pictures' rows quantized): at 8 bits the fp16 cache's logits
    within quantization noise, at 4 and 2 bits near them, the same top token throughout."""
    ref = _reference(pairs, kind)
    got, cache = _logits(_vision(pairs[kind], str(bits)))
    assert type(cache.layers[0]).__name__ == "CompressedLayerCache"
    assert _kl(ref, got) < kl_max and np.abs(got - ref).max() < diff_max
    assert got.argmax() == ref.argmax()


@pytest.mark.parametrize("kind", ["gemma3", "qwen2vl", "gemma4"])
@pytest.mark.parametrize("n_batch", [64, 4])
def test_a_lossless_compressed_cache_gives_the_fp16_caches_logits_pictures_fed_in_pieces_too(pairs, kind, n_batch):
    """With nothing lost to quantization or eviction the compressed cache is the fp16 one: a picture's rows see each
    other both ways (Gemma 3, 4), fed whole or in n_batch pieces (each later piece reading the earlier ones whole), and
    Qwen2-VL's rows turn by their M-RoPE positions."""
    ref = _reference(pairs, kind, n_batch)
    got, _ = _logits(_vision(pairs[kind], LOSSLESS, n_batch))
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["smolvlm", "lfm2", "internvl", "pixtral", "qwen3vl", "ultravox"])
def test_the_other_kinds_causal_media_rows_go_through_the_compressed_cache(tmp_path, kind):
    """SmolVLM's, LFM2-VL's, InternVL's, Pixtral's, Qwen3-VL's pictures and Ultravox's audio are causal prefill rows:
    at 8 bits (a 4-token fp16 window, so the media's rows are quantized) the fp16 cache's logits within noise."""
    import tiny_audio as ta
    import tiny_vision_idefics3 as ti
    import tiny_vision_internvl as tin
    import tiny_vision_lfm2 as tl
    import tiny_vision_pixtral as tp
    import tiny_vision_qwen3vl as tq3

    pair = {
        "smolvlm": lambda: (ti.write_tiny_smolvlm(tmp_path / "t.gguf"), ti.write_tiny_idefics3_mmproj(tmp_path / "m.gguf")),
        "lfm2": lambda: (tl.write_tiny_lfm2vl(tmp_path / "t.gguf"), tl.write_tiny_lfm2_mmproj(tmp_path / "m.gguf")),
        "internvl": lambda: (tin.write_tiny_internvl_text(tmp_path / "t.gguf"), tin.write_tiny_internvl_mmproj(tmp_path / "m.gguf")),
        "pixtral": lambda: (tp.write_tiny_pixtral_text(tmp_path / "t.gguf"), tp.write_tiny_pixtral_mmproj(tmp_path / "m.gguf")),
        "qwen3vl": lambda: (tq3.write_tiny_qwen3vl_text(tmp_path / "t.gguf"), tq3.write_tiny_qwen3vl_mmproj(tmp_path / "m.gguf")),
        "ultravox": lambda: (ta.write_tiny_ultravox_text(tmp_path / "t.gguf"), ta.write_tiny_ultravox_mmproj(tmp_path / "m.gguf")),
    }[kind]()
    media = [ta.sample_audio()] if kind == "ultravox" else [PICTURES[0]]
    prompt = "Look: <__media__> what is it? tell me"
    ref, _ = _logits(_vision(pair, None), prompt, media)
    got, cache = _logits(_vision(pair, "8,residual=4"), prompt, media)
    assert any(type(L).__name__ == "CompressedLayerCache" for L in cache.layers)
    assert _kl(ref, got) < 1e-4 and np.abs(got - ref).max() < 0.05


def test_qwen2vl_positions_survive_truncation_and_a_prefix_copy_on_a_compressed_cache(pairs):
    """The images' M-RoPE grids live on the KVCache beside any layer caches: text fed where a truncation dropped a
    picture turns as plain text; a compressed cache that takes another's prefix (KVCache.copy_prefix) takes its grids
    with it, and the prompt's last tokens fed after it give the same logits."""
    from kvrun.models import mrope_images

    v = _vision(pairs["qwen2vl"], LOSSLESS)
    eng = v.engine
    segs = v.segments(PROMPT, PICTURES)
    a = eng.new_cache()
    last = v.prefill(a, segs)
    want = eng.eval(a, last)[-1]
    ids = eng.tokenizer.encode("the the", add_bos=True)
    a.truncate(len(ids))
    np.testing.assert_allclose(eng.eval(a, [119, 104, 97])[-1], eng.eval(eng.new_cache(), ids + [119, 104, 97])[-1], atol=1e-4)
    assert mrope_images.images_of(a) == []
    b, c = eng.new_cache(), eng.new_cache()
    last = v.prefill(b, segs)
    assert c.copy_prefix(b, b.offset) and c.offset == b.offset
    assert mrope_images.images_of(c) == mrope_images.images_of(b) != []
    np.testing.assert_allclose(eng.eval(c, last)[-1], want, atol=1e-4)


def test_a_chat_keeps_a_picture_in_its_compressed_cache(tmp_path):
    """The next turn feeds only its new text, the picture's rows and grid kept in the compressed cache, and its reply is
    a fresh chat's."""
    import kvrun

    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    text = write_tiny_qwen2vl_text(tmp_path / "chat.gguf", chat_template=template)
    m = kvrun.load(str(text), n_ctx=512, n_batch=64, threads=1, kv=LOSSLESS.replace("1024", "512"),
                   mmproj=str(write_tiny_qwen2vl_mmproj(tmp_path / "mm.gguf")))  # fmt: skip
    sample = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}
    s = m.session()
    s.send("describe", images=[PICTURES[1]], **sample)
    second = s.send("and more", **sample)
    assert s.last_stats.n_prompt <= s.n_prompt_tokens - m.vision.image_positions(PICTURES[1])  # (the picture not fed again)
    convo = [{"role": "user", "content": "describe", "images": [PICTURES[1]]}, s.messages[1], {"role": "user", "content": "and more"}]
    assert m.chat(convo, **sample) == second


# ---------------------------------------------------------------- eviction


def test_eviction_never_takes_a_pictures_rows_from_its_own_feed(pairs, monkeypatch):
    """A budget of 12 and a picture of 16 rows fed in pieces of 4: the cache evicts, yet every piece's rows attend to
    the picture whole (their attention is the non-evicting cache's, exactly), and the reply goes on from what is kept."""
    import kvrun.cache.picture_block as pb
    import kvrun.models.gemma3 as g3

    seen: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    real = pb.update_and_attend_block

    def spy(cache, il, q, k, v, pos, out):
        real(cache, il, q, k, v, pos, out)
        seen[run][il, int(pos[0])] = out.copy()

    monkeypatch.setattr(g3, "update_and_attend_block", spy)
    logits = {}
    for run in ("16,policy=h2o,budget=12,residual=4", LOSSLESS):
        seen[run] = {}
        logits[run], cache = _logits(_vision(pairs["gemma3"], run, n_batch=4), "<__media__>what?")
        if run != LOSSLESS:
            held = [L.n_tokens() for L in cache.layers if L.spec.window == 0]
            assert max(held) <= 12 < cache.offset
    evicting, whole = seen.values()
    assert evicting.keys() == whole.keys() and len(evicting) == 6 * 4
    for key in whole:
        np.testing.assert_allclose(evicting[key], whole[key], atol=1e-5, err_msg=str(key))
    assert np.isfinite(logits["16,policy=h2o,budget=12,residual=4"]).all()


@pytest.mark.parametrize("kind", ["gemma3", "qwen2vl", "gemma4"])
@pytest.mark.parametrize("policy", ["h2o", "snapkv", "tova"])
def test_eviction_policies_run_with_pictures_and_keep_to_their_budget(pairs, kind, policy):
    got, cache = _logits(_vision(pairs[kind], f"2,policy={policy},budget=24,residual=4", n_batch=16))
    assert np.isfinite(got).all()
    assert max(L.n_tokens() for L in cache.layers if hasattr(L, "policy") and L.policy is not None) <= 24 < cache.offset


# ---------------------------------------------------------------- where the combination stays unsupported


def test_layers_sharing_kv_take_the_compressed_cache_but_not_its_pictures_in_one_line(tmp_path):
    """Gemma 4's E2B-like layout (its last layers read earlier layers' K/V, cache/shared_compressed.py) takes a
    compressed cache for text; a picture, whose rows see each other both ways, is a one-line error there."""
    v = _vision((write_tiny_gemma4_vl(tmp_path / "g4.gguf"), write_tiny_gemma4v_mmproj(tmp_path / "g4-mmproj.gguf")), "8")
    with pytest.raises(KvrunError, match="share K/V .*drop the --kv-\\* options") as e:
        _logits(v, "a <__media__> b", PICTURES[:1])
    assert "\n" not in str(e.value)


def test_a_picture_seeing_itself_both_ways_on_another_cache_is_a_one_line_error():
    """A cache that is none of the CPU's plain and compressed ones and the GPU's (tests/test_gpu_vision.py) refuses them."""
    from kvrun.cache.base import KVCache, LayerCache, LayerSpec
    from kvrun.cache.picture_block import update_and_attend_block

    class Elsewhere(LayerCache):
        spec = LayerSpec(2, 1, 4, 4)
        update_and_attend = n_tokens = nbytes = reset = truncate = lambda *a: None

    q = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(KvrunError, match="no other than the CPU's caches and the GPU's plain one") as e:
        update_and_attend_block(KVCache([Elsewhere()]), 0, q, q[:, :1], q[:, :1], np.arange(3, dtype=np.int32), q.copy())
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the CLI and the server


@pytest.mark.parametrize("kind", ["gemma3", "qwen2vl"])
def test_cli_run_takes_pictures_with_kv_bits(pairs, kind, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from kvrun.cli import main

    png = tmp_path / "wide.png"
    Image.fromarray(PICTURES[1]).save(png)
    text, mmproj = pairs[kind]
    r = CliRunner().invoke(main, ["run", str(text), "--mmproj", str(mmproj), "--image", str(png), "--kv-bits", "4", "--kv-residual", "4",
                                  "-p", "describe", "-n", "4", "--temp", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "cache 4" in r.output


def test_the_server_takes_a_picture_on_a_compressed_cache(tmp_path):
    """POST /v1/chat/completions with an image_url part to a Gemma 4 loaded with kv="4": the Python API's reply."""
    import base64
    import http.client
    import io
    import json
    import threading

    from PIL import Image

    import kvrun
    from kvrun.runtime.server import make_server

    template = "{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}<|turn>model\n"
    text = _gemma4_moe(tmp_path / "srv.gguf", chat_template=template)
    m = kvrun.load(str(text), n_ctx=1024, n_batch=64, threads=1, kv="4,residual=4", mmproj=str(write_tiny_gemma4v_mmproj(tmp_path / "mm.gguf")))
    small = sample_image(60, 40, seed=2)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    sample = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}
    want = m.chat([{"role": "user", "content": [{"type": "image", "image": small}, {"type": "text", "text": "describe"}]}], **sample)
    httpd = make_server(m, "127.0.0.1", 0, "tiny-gemma4")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=120)
        msg = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "describe"}]}
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": [msg], **sample}).encode(),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.status == 200, body
    assert body["choices"][0]["message"]["content"] == want
