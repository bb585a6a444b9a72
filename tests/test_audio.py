"""Audio in, for Ultravox (llama.cpp's audio projector type "ultravox"): WAV files read (models/whisper_audio.py's
load_wav), the log-mel spectrogram, the Whisper encoder and Ultravox's stacked SwiGLU projector (models/whisper_audio.py),
clips laid out in the prompt (runtime/audio.py), held to llama.cpp's libmtmd on the tiny pair of tiny_audio.py
(fixture: tools/make_audio_fixtures.py); and clips where users put them: `kvrun run --audio`, `kvrun chat`'s /audio,
the Python API and the server's OpenAI ``input_audio`` parts."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from audio_checks import check_logits
from click.testing import CliRunner

import kvrun
from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models.audio_towers import audio_tower
from kvrun.models.whisper_audio import WhisperAudioEncoder, load_audio_config, load_wav, log_mel, mel_filters
from kvrun.ops import get_backend
from kvrun.runtime.audio import Audio
from kvrun.runtime.vision import MARKER, Vision
from tiny_audio import A_EMBD, N_MEL, STACK, audio_mmproj_writer, sample_audio, wav_bytes, write_tiny_ultravox_mmproj, write_tiny_ultravox_text
from tiny_vision import write_tiny_mmproj
from vision_checks import call, serving

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_audio_fixtures import PROMPTS as ALL_PROMPTS, clips  # noqa: E402

FIX = np.load(Path(__file__).parent / "fixtures" / "audio_ultravox.npz")
PROMPTS = ALL_PROMPTS["ultravox"]
CLIPS = clips()  # name: WAV bytes (short: 1.3 s, one 30 s chunk; long: 31.5 s, two)
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
SAMPLE = {"max_tokens": 8, "temperature": 0, "repeat_penalty": 3.0}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector, the very bytes the fixture was made from, the clips as WAV files and a
    chat-template copy of the text model (for the chat, the API and the server)."""
    d = tmp_path_factory.mktemp("audio")
    files = {"text": write_tiny_ultravox_text(d / "text.gguf"), "mmproj": write_tiny_ultravox_mmproj(d / "mmproj.gguf")}
    for k, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[f"sha256_{k}"]), f"{k}: not the fixture's file"
    for k, b in CLIPS.items():
        (d / f"{k}.wav").write_bytes(b)
        files[k] = d / f"{k}.wav"
    files["chat"] = write_tiny_ultravox_text(d / "chat.gguf", chat_template=TEMPLATE)
    return files


@pytest.fixture(scope="module")
def audio(pair) -> Audio:
    from kvrun.runtime.engine import Engine

    return Vision(Engine(pair["text"], n_ctx=2048, n_batch=64, threads=1), pair["mmproj"])


# ---------------------------------------------------------------- WAV files


def test_wav_files_decode_as_miniaudio_converts_them():
    x = sample_audio(0.2)
    s16 = load_wav(wav_bytes(x))
    np.testing.assert_array_equal(s16, np.round(x * 32767).astype(np.int16) / np.float32(32768))  # (x / 32768)
    stereo = load_wav(wav_bytes(x, channels=2))  # channels averaged into mono
    np.testing.assert_array_equal(stereo, s16)
    np.testing.assert_allclose(load_wav(wav_bytes(x, width=1)), x, atol=1 / 64)  # 8-bit: (x - 128) / 128
    np.testing.assert_allclose(load_wav(wav_bytes(x, width=4)), x, atol=1e-6)


@pytest.mark.parametrize("data, says", [
    (wav_bytes(np.zeros(100, np.float32), rate=44100), "sampled at 44100 Hz; kvrun takes 16000 Hz WAV"),
    (b"ID3\x03 an mp3", "not a PCM WAV file"),
])  # fmt: skip
def test_other_audio_is_refused_in_one_line(data, says):
    with pytest.raises(KvrunError, match=says) as e:
        load_wav(data)
    assert "\n" not in str(e.value)
    with pytest.raises(KvrunError, match="no such file"):
        load_wav("nowhere.wav")


# ---------------------------------------------------------------- the spectrogram


def test_the_log_mel_spectrogram_is_libmtmds():
    """1.3 s padded with 30 s of silence: one chunk of 3000 frames, within the 6 decimals libmtmd's dump prints."""
    mel = log_mel(load_wav(CLIPS["short"]), N_MEL)
    assert mel.shape == FIX["mel_short"].shape == (1, N_MEL, 3000)
    np.testing.assert_allclose(mel, FIX["mel_short"], atol=2e-6)
    assert mel.min() == pytest.approx(mel.max() - 2.0, abs=1e-6)  # (the silence clamped at max - 8, then (x + 4) / 4)


def test_long_clips_are_cut_into_30_second_chunks_the_padded_last_one_dropped():
    assert log_mel(load_wav(CLIPS["long"]), N_MEL).shape == (2, N_MEL, 3000)  # 31.5 s + 30 s of padding
    assert log_mel(np.zeros(16000 * 29, np.float32) + 0.1, N_MEL).shape[0] == 1
    with pytest.raises(KvrunError, match="at least 201"):
        log_mel(np.zeros(200, np.float32), N_MEL)


def test_the_mel_filters_are_slaneys_area_normalised_triangles():
    f = mel_filters(80)
    assert f.shape == (80, 201) and (f >= 0).all()
    assert (np.count_nonzero(f, axis=1) > 0).all()  # (every bin sees some frequencies at 80 bins over 201)
    lo = f[:, :5].sum(axis=0)
    assert lo[0] == 0.0 and lo[1] > 0  # (0 Hz is every filter's edge)


# ---------------------------------------------------------------- the projector file and the encoder


def test_the_audio_mmproj_config_and_what_the_image_loader_says_of_it(pair):
    g = GGUFFile(pair["mmproj"])
    cfg = load_audio_config(g)
    assert (cfg.projector_type, cfg.n_mel, cfg.n_embd, cfg.stack_factor, cfg.n_text_embd) == ("ultravox", N_MEL, A_EMBD, STACK, 64)
    assert cfg.rows_per_chunk == 1500 // STACK
    g.close()
    with pytest.raises(KvrunError, match="no vision encoder"):
        open_mmproj(pair["mmproj"])


def test_an_image_projector_is_not_read_as_audio(tmp_path):
    g = GGUFFile(write_tiny_mmproj(tmp_path / "gemma3.gguf"))
    with pytest.raises(KvrunError, match="has no audio encoder"):
        load_audio_config(g)
    g.close()


def test_an_audio_projector_kvrun_does_not_read_is_a_one_line_error_naming_every_one_it_does(tmp_path):
    """Gemma 3n's audio side ("gemma3na") has no graph in libmtmd 0.3.36 (it refuses an audio-only file of that type
    too); the error names every audio projector type kvrun reads, the towers of models/audio_towers.py included."""
    w = audio_mmproj_writer(tmp_path / "gemma3na.gguf", "gemma3na", "gemma3na", 64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = GGUFFile(tmp_path / "gemma3na.gguf")
    with pytest.raises(KvrunError, match="audio projector type 'gemma3na' is not supported; kvrun reads ultravox, .*qwen3a.*lfm2a") as e:
        audio_tower(g).load_config(g)
    assert "\n" not in str(e.value)
    g.close()


@pytest.mark.parametrize("name, atol", [("short", 1e-4), ("long", 2e-3)])
def test_the_encoders_rows_are_libmtmds(pair, name, atol):
    """Rows ~1 in size; the long clip's first chunk (30 s of signal) 5e-4 off at worst, where ggml's F16 im2col
    rounds a convolution input the other way."""
    enc = WhisperAudioEncoder.load(pair["mmproj"], get_backend("cpu"))
    rows = enc.encode(load_wav(CLIPS[name]))
    assert rows.shape == FIX[f"embd_{name}"].shape
    np.testing.assert_allclose(rows, FIX[f"embd_{name}"], atol=atol)


# ---------------------------------------------------------------- the layout and the logits


def test_an_audio_projector_opens_as_audio_wherever_a_projector_is_opened(audio, pair):
    assert isinstance(audio, Audio) and audio.takes_audio and audio.n_tokens == 375
    assert audio.image_positions(load_wav(CLIPS["long"])) == 750


@pytest.mark.parametrize("name", ["short", "long"])
def test_a_lone_marker_is_the_clips_rows_and_nothing_else(audio, name):
    """Ultravox's layout puts no tokens around a clip (libmtmd's aud_beg is empty for it)."""
    segs = audio.segments(MARKER, [CLIPS[name]], encode=False)
    ids = [t for s in segs for t in (s if isinstance(s, list) else [-1] * audio.image_positions(load_wav(CLIPS[name])))]
    assert ids == FIX[f"ids_{name}"].tolist()


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_audio_and_text_match_llama_cpp(audio, k):
    """mtmd_helper_eval_chunks feeds the clips' rows and the text (llama.cpp's context without flash attention):
    the same ids and positions, logits within 2e-3 (~1e-3 relative) of llama_get_logits_ith(-1)'s."""
    check_logits(audio, FIX, PROMPTS[k], k, list(CLIPS))


def test_bad_layouts_are_one_line_errors(audio):
    for prompt, given, says in [
        (f"{MARKER} and {MARKER}", [CLIPS["short"]], "2 media markers .* and 1 audio clips"),
        (f"hear {MARKER}", [CLIPS["short"]], "must end in text"),
        ("hear", [np.zeros((4, 4, 3), np.uint8)], "takes audio, not images"),
    ]:
        with pytest.raises(KvrunError, match=says) as e:
            audio.prefill(audio.engine.new_cache(), audio.segments(prompt, given))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- where users put clips

RUN_FLAGS = ["-n", "8", "--temp", "0", "--repeat-penalty", "3", "--no-stats", "-c", "2048"]


@pytest.fixture(scope="module")
def model(pair):
    return kvrun.load(str(pair["chat"]), n_ctx=2048, n_batch=64, threads=1, mmproj=str(pair["mmproj"]))


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def wav_part(path: Path, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": fmt}}


def kvrun_run(pair: dict[str, Path], prompt: str, *clips: Path) -> str:
    """What `kvrun run --mmproj --audio` writes after the prompt it echoes."""
    args = ["run", str(pair["chat"]), "--mmproj", str(pair["mmproj"]), "-p", prompt, *RUN_FLAGS]
    r = CliRunner().invoke(main, args + [a for p in clips for a in ("--audio", str(p))])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(prompt)
    return r.stdout[len(prompt) : -1]


def test_kvrun_run_audio_writes_what_the_python_api_does_for_the_same_layout(model, pair):
    msgs = user(wav_part(pair["short"]), {"type": "text", "text": "what is said?"})  # (parts joined with a newline)
    want = model.chat(msgs, **SAMPLE)
    assert want == kvrun_run(pair, model.render([{"role": "user", "content": f"{MARKER}\nwhat is said?"}]), pair["short"])
    assert model.last_stats.n_prompt >= 375  # (the clip's rows counted)
    assert model.chat(user(wav_part(pair["long"]), {"type": "text", "text": "what is said?"}), **SAMPLE) != want  # the clip is heard


def test_kvrun_run_audio_mistakes_are_one_line_errors(pair):
    cases = [(["--audio", str(pair["short"])], "--audio needs --mmproj FILE"),
             (["--mmproj", str(pair["mmproj"]), "--audio", "nowhere.wav"], "--audio: no file nowhere.wav"),
             (["--mmproj", str(pair["mmproj"]), "--image", str(pair["short"])], "is an audio projector: give it --audio files")]  # fmt: skip
    for extra, says in cases:
        r = CliRunner().invoke(main, ["run", str(pair["chat"]), "-p", "x", "-n", "1", *extra])
        assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output, r.output


def test_a_conversation_keeps_the_clips_rows_and_encodes_it_once(model, pair, monkeypatch):
    encoded = []
    real = model.vision.image_rows
    monkeypatch.setattr(model.vision, "image_rows", lambda clip: encoded.append(1) or real(clip))
    s = model.session()
    first = s.send("what is said?", images=[pair["short"]], **SAMPLE)
    assert s.messages[0] == {"role": "user", "content": f"{MARKER}what is said?"} and len(encoded) == 1
    second = s.send("and then?", **SAMPLE)
    assert len(encoded) == 1 and s.last_stats.n_prompt < 375  # (the rows stayed in the cache)
    assert first and second


def test_cli_chat_attaches_a_clip_to_the_next_message(model, pair):
    r = CliRunner().invoke(main, ["chat", str(pair["chat"]), "--mmproj", str(pair["mmproj"]), *RUN_FLAGS[:-3], "-c", "2048"],
                           input=f"/audio {pair['short']}\nwhat is said?\n/audio nowhere.wav\n/exit\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "attached to the next message" in r.output and "nowhere.wav: no such file" in r.output
    assert model.session().send("what is said?", images=[pair["short"]], **SAMPLE) in r.output
    r = CliRunner().invoke(main, ["chat", str(pair["chat"]), "-c", "256"], input=f"/audio {pair['short']}\n/exit\n")
    assert "/audio needs a chat started with an audio --mmproj FILE" in r.output


@pytest.fixture(scope="module")
def server(model):
    with serving(model, "tiny-ultravox") as port:
        yield port


def test_openai_input_audio_parts_give_the_python_apis_text(server, model, pair):
    msgs = user({"type": "text", "text": "what is said?"}, wav_part(pair["short"]))
    want = model.chat(msgs, **SAMPLE)
    status, r = call(server, "/v1/chat/completions", {"messages": msgs, **SAMPLE})
    assert status == 200 and r["choices"][0]["message"]["content"] == want
    assert r["usage"]["prompt_tokens"] == model.last_stats.n_prompt  # (the clip's 375 rows counted)
    assert call(server, "/props", method="GET")[1]["modalities"] == {"vision": False, "audio": True}


@pytest.mark.parametrize("part, says", [
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}}, "audio format 'mp3' is not supported; kvrun reads wav"),
    ({"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}, "the audio is not valid base64"),
    ({"type": "input_audio", "input_audio": "x"}, 'input_audio must be {"data": "<base64>", "format": "wav"}'),
    ({"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(np.zeros(400, np.float32), rate=8000)).decode()}}, "sampled at 8000 Hz"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}, "takes audio (input_audio parts), not images"),
])  # fmt: skip
def test_bad_audio_parts_are_a_4xx_in_one_line(server, part, says):
    status, r = call(server, "/v1/chat/completions", {"messages": user(part, {"type": "text", "text": "x"}), "max_tokens": 2})
    err = r["error"]["message"]
    assert status == 400 and says in err and "\n" not in err, r


def test_kvrun_info_says_what_an_audio_projector_is(pair):
    r = CliRunner().invoke(main, ["info", str(pair["mmproj"])])
    assert r.exit_code == 0 and "audio projector" in r.output and "375 rows per 30 s" in r.output, r.output
    r = CliRunner().invoke(main, ["info", str(pair["mmproj"]), "--json"])
    assert json.loads(r.stdout)["stack_factor"] == STACK


def test_a_chat_with_audio_is_saved_and_resumed_with_its_clip(model, pair, tmp_path):
    s = model.session()
    s.send("what is said?", images=[pair["short"]], max_tokens=2, temperature=0)
    s.save(tmp_path / "c.kvs")
    r = model.load_session(tmp_path / "c.kvs")
    assert len(r.images) == 1 and (r.images[0] == s.images[0]).all() and r.images[0].dtype == np.float32
    assert r.send("more", max_tokens=3, temperature=0) == s.send("more", max_tokens=3, temperature=0)
