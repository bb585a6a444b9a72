"""Which audio encoder reads an audio projector file (``clip.audio.projector_type``).

Most audio projectors (Ultravox, Qwen2-Audio, Qwen2.5-Omni, Voxtral, GLM-ASR, Music Flamingo) put a Whisper encoder
before their own projector (models/whisper_audio.py); a tower of another shape is one module of its own plus a line
in :data:`_TOWERS`.  Modules are imported when a file asks for them, so `kvrun info` imports only the one it reads.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from ..loaders.gguf_file import GGUFFile


class AudioTower(NamedTuple):
    load_config: Any  # (g) -> its config, or a one-line error
    encoder: type  # (g, cfg, backend) -> the encoder; ``n_rows(n_samples)`` where its frames are its own (no 30 s chunks)
    name: str  # what `kvrun info` calls it


#: projector type -> (module of this package, config loader, encoder class, name); any other: the Whisper encoder's
_TOWERS = {
    "qwen3a": ("qwen3a_audio", "load_qwen3a_config", "Qwen3AudioEncoder", "Qwen3-Omni audio encoder"),
    "lfm2a": ("lfm2a_audio", "load_lfm2a_config", "Lfm2AudioEncoder", "FastConformer (LFM2-Audio)"),
    "granite_speech": ("granite_speech_audio", "load_granite_speech_config", "GraniteSpeechEncoder", "conformer and Q-Former (Granite Speech)"),
    "gemma4a": ("gemma4a_audio", "load_gemma4a_config", "Gemma4AudioEncoder", "Gemma 4 audio conformer"),
    "gemma4ua": ("gemma4ua_audio", "load_gemma4ua_config", "Gemma4UAudioEncoder", "Gemma 4 12B raw-waveform embedder"),
    "parakeet": ("parakeet_audio", "load_parakeet_config", "ParakeetEncoder", "FastConformer (Parakeet)"),
    "mimo_audio": ("mimo_audio", "load_mimo_audio_config", "MimoAudioEncoder", "audio tokenizer and local transformer (MiMo-V2.5)"),
    "dots3note_a": ("dots3note_audio", "load_dots3note_audio_config", "Dots3NoteAudioEncoder", "conv stem and rotary ViT (dots.note)"),
}
#: the projector types of the towers other than Whisper's (whose own are models/whisper_audio.py AUDIO_PROJECTORS)
OTHER_TOWERS = tuple(_TOWERS)
_WHISPER = ("whisper_audio", "load_audio_config", "WhisperAudioEncoder", "Whisper encoder")


def audio_tower(g: GGUFFile) -> AudioTower:
    """The tower that reads the opened audio projector ``g``."""
    kind = g.get("clip.audio.projector_type") or g.get("clip.projector_type")
    module, load, enc, name = _TOWERS.get(kind, _WHISPER)
    m = importlib.import_module(f".{module}", __package__)
    return AudioTower(getattr(m, load), getattr(m, enc), name)
