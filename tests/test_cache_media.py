"""What pictures leave on a sequence's KV cache beside the layers' K/V: ``KVCache.media`` (cache/base.py).

Qwen2-VL's, Qwen3-VL's and GLM-4V's images' M-RoPE grids (cache/mrope.py, models/mrope_images.py), Hunyuan-VL's
pictures' XD-RoPE record (cache/xdrope.py) and a picture's float K/V while its pieces are fed (cache/picture_block.py)
live in one declared map that every operation forgetting positions cuts: truncate, reset, copy_prefix.  So a server
slot's prefix copy takes the images' positions with their rows, a truncation forgets them with their rows, a saved
chat resumes with them, and a text-only chat pays one dict look-up a forward.  The pictures' rows are stored without
the causal attention the bidirectional one overwrote, bit for bit as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.mrope import MropeImage, MropeImages
from kvrun.cache.picture_block import PictureRows
from kvrun.cache.plain import PlainLayerCache
from kvrun.models import mrope_images
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj
from tiny_vision_qwen2vl import write_tiny_qwen2vl_mmproj, write_tiny_qwen2vl_text

PROMPT = "the the in a <__media__>the cat sat on"
PICTURE = sample_image(300, 180, seed=1)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cache_media")
    return write_tiny_qwen2vl_text(d / "q2.gguf", chat_template=TEMPLATE), write_tiny_qwen2vl_mmproj(d / "q2-mmproj.gguf")


def _vision(pair: tuple[Path, Path], kv: str | None = None, n_batch: int = 64):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair[0], n_ctx=512, n_batch=n_batch, threads=1, kv=KVConfig.parse(kv) if kv else None), pair[1])


def _images(*spans: tuple[int, int, int]) -> KVCache:
    """A cache (no layers) holding images at (slot, nx, ny), offset past the last."""
    cache = KVCache([])
    cache.media[MropeImages] = MropeImages(tuple(MropeImage(s, nx, ny, s) for s, nx, ny in spans))
    cache.offset = max(s + nx * ny for s, nx, ny in spans) + 4
    return cache


# ---------------------------------------------------------------- the map and the operations that forget positions


def test_truncate_keeps_the_images_wholly_before_the_cut_and_reset_forgets_all():
    cache = _images((2, 3, 2), (10, 2, 2))  # rows [2, 8) and [10, 14)
    cache.truncate(12)
    assert [im.slot for im in mrope_images.images_of(cache)] == [2]
    cache.truncate(5)  # (through the first: fed again whole, so forgotten)
    assert MropeImages not in cache.media
    cache = _images((2, 3, 2))
    cache.reset()
    assert cache.media == {} and cache.offset == 0


def test_a_prefix_copy_takes_the_images_before_its_end_in_a_map_of_its_own():
    src = _images((2, 3, 2), (10, 2, 2))
    dst = KVCache([])
    assert dst.copy_prefix(src, 9) and [im.slot for im in mrope_images.images_of(dst)] == [2]
    assert dst.copy_prefix(src, src.offset) and mrope_images.images_of(dst) == mrope_images.images_of(src)
    dst.truncate(0)
    assert len(mrope_images.images_of(src)) == 2  # (the source's map untouched)


def test_a_pictures_rows_fed_in_pieces_end_with_any_cut_or_copy():
    cache = KVCache([])
    cache.media[PictureRows] = PictureRows()
    cache.offset = 4
    other = KVCache([])
    assert other.copy_prefix(cache, 4) and PictureRows not in other.media
    cache.truncate(4)
    assert PictureRows not in cache.media


def test_text_fed_over_an_image_recorded_but_never_fed_drops_it():
    """add_image records the grid before the rows go in; were the feed refused, the text after goes on as plain text."""
    cache = KVCache([])
    cache.offset = 3
    mrope_images.add_image(cache, 4, 2)
    assert mrope_images.section_positions(cache, np.arange(3, 6), image=False) is None
    assert MropeImages not in cache.media


# ---------------------------------------------------------------- a Qwen2-VL picture's positions, kept and carried


def test_a_prefix_copy_over_a_picture_keeps_its_positions_and_a_cut_through_it_forgets_them(pair):
    v = _vision(pair)
    eng = v.engine
    a = eng.new_cache()
    last = v.prefill(a, v.segments(PROMPT, [PICTURE]))
    want = eng.eval(a, last)[-1]
    (im,) = mrope_images.images_of(a)
    b = eng.new_cache()
    assert b.copy_prefix(a, a.offset - len(last)) and mrope_images.images_of(b) == [im]
    np.testing.assert_array_equal(eng.eval(b, last)[-1], want)
    c = eng.new_cache()
    assert c.copy_prefix(a, im.end - 1) and mrope_images.images_of(c) == []


def test_a_saved_chat_with_a_picture_resumes_as_the_one_that_never_stopped(pair, tmp_path):
    """Its images' grids are kvrun.cache's classes, which a session file may hold: the resumed chat feeds only the new
    text, at the positions the picture left, and replies as the chat that went on."""
    import kvrun

    m = kvrun.load(str(pair[0]), n_ctx=512, n_batch=64, threads=1, mmproj=str(pair[1]))
    sample = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}
    s = m.session()
    s.send("describe", images=[PICTURE], **sample)
    s.save(tmp_path / "chat.kvs")
    resumed = m.load_session(tmp_path / "chat.kvs")
    assert mrope_images.images_of(resumed.cache) == mrope_images.images_of(s.cache) != []
    assert resumed.send("and more", **sample) == s.send("and more", **sample)
    assert resumed.last_stats.n_prompt == s.last_stats.n_prompt <= s.n_prompt_tokens - m.vision.image_positions(PICTURE)


def test_a_saved_hunyuan_vl_chat_with_a_picture_resumes_as_the_one_that_never_stopped(tmp_path):
    """Hunyuan-VL's pictures' record (cache/xdrope.py: slot, grid, index) is kvrun.cache's too: the resumed chat has
    the pictures the saved one had, feeds only the new text and replies as the chat that went on."""
    import kvrun
    from kvrun.models import hunyuan_vl
    from tiny_vision_hunyuanvl import write_tiny_hunyuanvl_mmproj, write_tiny_hunyuanvl_text

    text = write_tiny_hunyuanvl_text(tmp_path / "hv.gguf", chat_template=TEMPLATE)
    m = kvrun.load(str(text), n_ctx=512, n_batch=64, threads=1, mmproj=str(write_tiny_hunyuanvl_mmproj(tmp_path / "hv-mmproj.gguf")))
    sample = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 3.0}
    s = m.session()
    s.send("describe", images=[PICTURE], **sample)
    s.save(tmp_path / "chat.kvs")
    resumed = m.load_session(tmp_path / "chat.kvs")
    assert hunyuan_vl.pictures_of(resumed.cache) == hunyuan_vl.pictures_of(s.cache) != ()
    assert resumed.send("and more", **sample) == s.send("and more", **sample)
    assert resumed.last_stats.n_prompt == s.last_stats.n_prompt <= s.n_prompt_tokens - m.vision.image_positions(PICTURE)


def test_a_text_only_forward_computes_no_positions(pair, monkeypatch):
    """No image on the cache: the forward turns by the plain tables without looking for any."""
    v = _vision(pair)

    def refuse(*a, **k):
        raise AssertionError("a text-only forward looked for images")

    monkeypatch.setattr(mrope_images, "section_positions", refuse)
    ids = v.engine.tokenizer.encode("the cat sat on the", add_bos=True)
    assert np.isfinite(v.engine.eval(v.engine.new_cache(), ids)[-1]).all()


# ---------------------------------------------------------------- the rows stored without a wasted causal pass


@pytest.mark.parametrize("T", [3, 9])
def test_the_plain_caches_store_is_update_and_attends_bit_for_bit(T):
    """A decode step's kernel (T <= 4) and a prefill chunk's scatter round alike: store() holds what they held."""
    from kvrun.cache.base import LayerSpec

    spec = LayerSpec(n_head=4, n_head_kv=2, head_dim=8, head_dim_v=8, scale=0.35)
    rng = np.random.default_rng(T)
    q, k, v = (rng.standard_normal((T, n, 8)).astype(np.float32) * 3 for n in (4, 2, 2))
    pos = np.arange(5, 5 + T, dtype=np.int32)
    a, b = PlainLayerCache(spec, 32), PlainLayerCache(spec, 32)
    a.update_and_attend(q, k, v, pos, np.empty((T, 4, 8), np.float32))
    b.store(k, v, pos)
    assert np.array_equal(a.k, b.k) and np.array_equal(a.v, b.v) and np.array_equal(a.pos, b.pos) and a.used == b.used


def _gemma3_logits(tmp_path: Path, kv: str | None, n_batch: int) -> np.ndarray:
    pair = (write_tiny_gemma3_vl(tmp_path / "g3.gguf"), write_tiny_mmproj(tmp_path / "g3-mmproj.gguf"))
    v = _vision(pair, kv, n_batch)
    cache = v.engine.new_cache()
    return v.engine.eval(cache, v.prefill(cache, v.segments("the the in a <__media__>the cat", [sample_image()])))[-1]


@pytest.mark.parametrize("kv", ["8,residual=4", "4,policy=keydiff,budget=40,residual=4", "16,policy=h2o,budget=40,residual=4"])
def test_a_compressed_caches_store_of_a_picture_is_the_causal_feeds_bit_for_bit(tmp_path, monkeypatch, kv):
    """Gemma 3's picture in pieces of 8 into a compressed cache (quantized, or evicting by a policy that scores by
    attention or not): the logits are those of the store through update_and_attend, exactly."""
    from kvrun.cache.compressed import CompressedLayerCache

    got = _gemma3_logits(tmp_path, kv, 8)
    monkeypatch.setattr(CompressedLayerCache, "store",
                        lambda self, q, k, v, pos: self.update_and_attend(q, k, v, pos, np.empty((len(pos), *q.shape[1:2], self.spec.head_dim_v), np.float32)))  # fmt: skip
    assert np.array_equal(got, _gemma3_logits(tmp_path, kv, 8))
