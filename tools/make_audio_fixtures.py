"""Regenerate tests/fixtures/audio_ultravox.npz: llama.cpp's libmtmd on the tiny Ultravox pair of ``tests/tiny_audio.py``
(developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_audio_fixtures.py --oracle /work/llvenv/bin/python

For each clip a fixture takes (``VARIANTS``, of ``CLIPS``: name: seconds, seed; 16 kHz mono 16-bit WAV bytes as
tiny_audio.wav_bytes writes them), libmtmd decodes the WAV (mtmd_helper_bitmap_init_from_buf, miniaudio) and lays it
out (mtmd_tokenize on a lone marker): ``ids_<name>`` the chunks' token ids (-1 for an audio row) and ``embd_<name>``
the audio chunk's rows (mtmd_encode_chunk; the encoder's flash attention off).  Ultravox's ``mel_short``: the short
clip's log-mel spectrogram, each 30 s chunk's [n_chunks, n_mel, 3000], read from the log of libmtmd's debug entry
mtmd_debug_preprocess_audio (printed with 6 decimals), on the samples the WAV decodes to (int16 / 32768).  For each
prompt of ``PROMPTS`` (its media markers take the clips in turn): ``pids_<k>`` its chunks' ids, ``logits_<k>`` the
logits after them all (the text model's context without flash attention, whose F16 accumulation puts llama.cpp 6e-2
off its own logits after a thousand positions) and ``npast_<k>``.  ``sha256_*``: the files' digests (the test
writes the same bytes again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import wave
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from tiny_audio import sample_audio, wav_bytes, write_tiny_ultravox_mmproj, write_tiny_ultravox_text

#: clips (seconds, seed): short (padded to one 30 s chunk), and past 30 s
CLIPS = {"short": (1.3, 0), "long": (31.5, 1)}
#: each fixture's projector and the clips it takes
VARIANTS = {"ultravox": ("short", "long")}
#: prompts with mtmd's media marker, the clips taken in the fixture's order
PROMPTS = {"ultravox": ["Hear: <__media__> what?", "<__media__>a<__media__> two"]}
#: a tower's fixture (tools/make_audio_<tower>_fixtures.py, :func:`run_tower`): both clips, and these prompts taking
#: them in turn
TOWER_CLIPS, TOWER_PROMPTS = ("short", "long"), ["Hear: <__media__> what?", "<__media__>a<__media__> two"]

_ORACLE = r"""
import ctypes, json, re, sys, numpy as np
import llama_cpp, llama_cpp.mtmd_cpp as m
a = json.loads(sys.argv[1])
lines = []
@llama_cpp.llama_log_callback
def log_cb(level, text, user):
    lines.append(text.decode(errors="replace"))
    if level >= 3:  # (warnings and errors still shown)
        sys.stderr.write(lines[-1])
m.mtmd_log_set(log_cb, None)
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(a["model"].encode(), llama_cpp.llama_model_default_params())
n_embd = llama_cpp.llama_model_n_embd(model)
p = m.mtmd_context_params_default()
p.use_gpu, p.n_threads, p.print_timings, p.warmup, p.flash_attn_type = False, 1, False, False, 0
ctx = m.mtmd_init_from_file(a["mmproj"].encode(), model, p)
assert ctx and m.mtmd_support_audio(ctx)
lib = m._libmtmd if hasattr(m, "_libmtmd") else ctypes.CDLL(m.__file__.rsplit("/", 1)[0] + "/lib/libmtmd.so")
pre = getattr(lib, "_Z27mtmd_debug_preprocess_audioP12mtmd_contextRKSt6vectorIfSaIfEE")
pre.argtypes, pre.restype = [ctypes.c_void_p, ctypes.c_void_p], None
res = {}
wavs = {k: open(f, "rb").read() for k, f in a["wavs"].items()}

def bitmap(name):
    b = wavs[name]
    buf = (ctypes.c_uint8 * len(b)).from_buffer_copy(b)
    bm = m.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(b), False)
    assert bm
    return bm

def chunks_of(text, bitmaps):
    t = m.mtmd_input_text(text.encode(), len(text.encode()), True, True)
    chunks = m.mtmd_input_chunks_init()
    arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
    assert m.mtmd_tokenize(ctx, chunks, ctypes.byref(t), arr, len(bitmaps)) == 0
    return chunks

def layout(chunks, encode):
    ids, rows = [], []
    for i in range(m.mtmd_input_chunks_size(chunks)):
        c = m.mtmd_input_chunks_get(chunks, i)
        n = m.mtmd_input_chunk_get_n_tokens(c)
        if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            nt = ctypes.c_size_t()
            tp = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(nt))
            ids += [tp[j] for j in range(nt.value)]
            continue
        ids += [-1] * n
        if encode:
            assert m.mtmd_encode_chunk(ctx, c) == 0
            rows.append(np.ctypeslib.as_array(m.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, -1).copy())
    return np.asarray(ids, np.int32), rows

for name, samples in a["samples"].items():
    if name in a["mel"]:
        x = np.ascontiguousarray(np.load(samples), np.float32)
        vec = (ctypes.c_void_p * 3)(x.ctypes.data, x.ctypes.data + x.nbytes, x.ctypes.data + x.nbytes)
        lines.clear()
        pre(ctx, ctypes.addressof(vec))
        mel = {}
        for ln in "".join(lines).splitlines():
            r = re.match(r"mel\[(\d+)\]\[m=(\d+)\]\[t=(\d+)\] = (\S+)", ln.strip())
            if r:
                mel[tuple(int(v) for v in r.groups()[:3])] = float(r.group(4))
        nc, nm, nt = (max(k[i] for k in mel) + 1 for i in range(3))
        out = np.zeros((nc, nm, nt), np.float32)
        for (c, i, t), v in mel.items():
            out[c, i, t] = v
        res[f"mel_{name}"] = out
    ids, rows = layout(chunks_of("<__media__>", [bitmap(name)]), True)
    res[f"ids_{name}"], res[f"embd_{name}"] = ids, np.concatenate(rows)
names = list(a["samples"])
for k, prompt in enumerate(a["prompts"]):
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch, cp.flash_attn_type = a["n_ctx"], 64, 64, 1, 1, 0
    lctx = llama_cpp.llama_init_from_model(model, cp)
    bms = [bitmap(names[j % len(names)]) for j in range(prompt.count("<__media__>"))]
    chunks = chunks_of(prompt, bms)
    res[f"pids_{k}"] = layout(chunks, False)[0]
    new_past = llama_cpp.llama_pos(0)
    assert m.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 64, True, ctypes.byref(new_past)) == 0
    nv = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    res[f"logits_{k}"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,)).copy()
    res[f"npast_{k}"] = np.asarray(new_past.value, np.int64)
    llama_cpp.llama_free(lctx)
np.savez(a["out"], **res)
"""


def clips(names: tuple[str, ...] = tuple(CLIPS)) -> dict[str, bytes]:
    """The clips ``names`` as WAV files' bytes."""
    return {k: wav_bytes(sample_audio(*CLIPS[k][:1], seed=CLIPS[k][1])) for k in names}


def decoded(b: bytes) -> np.ndarray:
    """A 16-bit mono WAV's samples as float32, as miniaudio converts them (x / 32768)."""
    import io

    with wave.open(io.BytesIO(b)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0


def main() -> None:
    a = parse_args(__doc__, VARIANTS)
    for variant in a.names:
        make(a, variant)


def make(a: argparse.Namespace, variant: str) -> None:
    """``<a.out>/audio_<variant>.npz`` (see the module docstring)."""
    run_oracle(a, variant, write_tiny_ultravox_text, write_tiny_ultravox_mmproj, VARIANTS[variant], PROMPTS[variant], ["short"], 2048)


def run_variants(doc: str, variants: dict[str, tuple[str, ...]], prompts: dict[str, list[str]], n_ctx: int,
                 write_text: Callable[..., Path], write_mmproj: Callable[..., Path]) -> None:  # fmt: skip
    """A tool's command line (``doc``: its docstring), then :func:`run_oracle` for each variant it names, on the pair
    ``write_text(path, kind=variant)`` and ``write_mmproj(path, kind=variant)`` write, its clips and prompts; no
    spectrogram (the preprocessor is Ultravox's, which audio_ultravox.npz holds to)."""
    a = parse_args(doc, variants)
    for v in a.names:
        run_oracle(a, v, partial(write_text, kind=v), partial(write_mmproj, kind=v), variants[v], prompts[v], [], n_ctx)


def run_oracle(a: argparse.Namespace, name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[[Path], Path],
               names: tuple[str, ...], prompts: list[str], mel: list[str], n_ctx: int) -> None:  # fmt: skip
    """``<a.out>/audio_<name>.npz``, as every audio fixture tool makes its own: the tiny pair ``write_text`` and
    ``write_mmproj`` write, the clips ``names`` as WAV files and as the samples they decode to, :data:`_ORACLE` on them
    (``mel``: the clips whose spectrogram it reads; ``n_ctx``: the text model's context), what it saved beside the
    files' ``sha256_*``; the arrays printed."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {"text": write_text(t / "text.gguf"), "mmproj": write_mmproj(t / "mmproj.gguf")}
        wavs, samples = {}, {}
        for k, b in clips(names).items():
            (t / f"{k}.wav").write_bytes(b)
            np.save(t / f"{k}.npy", decoded(b))
            wavs[k], samples[k] = str(t / f"{k}.wav"), str(t / f"{k}.npy")
        args = dict(model=str(files["text"]), mmproj=str(files["mmproj"]), wavs=wavs, samples=samples, prompts=prompts,
                    mel=mel, n_ctx=n_ctx, out=str(t / "out.npz"))  # fmt: skip
        subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(args)], check=True)
        res = dict(np.load(t / "out.npz"))
        np.savez_compressed(a.out / f"audio_{name}.npz", **{f"sha256_{k}": sha256(p) for k, p in files.items()}, **res)
    for k, v in res.items():
        print(k, v.shape, v.tolist() if k.startswith(("ids", "pids", "npast")) and v.size < 40 else "")


def run_tower(a: argparse.Namespace, name: str, write_text: Callable[[Path], Path], write_mmproj: Callable[[Path], Path],
              n_ctx: int, mel: tuple[str, ...] = TOWER_CLIPS) -> None:  # fmt: skip
    """A tower's fixture ``<a.out>/audio_<name>.npz``: :func:`run_oracle` on :data:`TOWER_CLIPS` and
    :data:`TOWER_PROMPTS` (``mel``: the clips whose spectrogram it reads)."""
    run_oracle(a, name, write_text, write_mmproj, TOWER_CLIPS, TOWER_PROMPTS, list(mel), n_ctx)


if __name__ == "__main__":
    main()
