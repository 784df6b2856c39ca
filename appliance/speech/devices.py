"""Where audio comes from and goes to: a microphone and speaker (sounddevice), or WAV files.

The voice loop is driven by input frames. A sink is told how much time passed (``advance``) so a
file sink "plays" in step with the input, which makes barge-in testable on files exactly as it
happens live: speech in the input while the answer is still playing stops it.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.speech.audio import (CHUNK_SAMPLES, SAMPLE_RATE, Audio, AudioError, StreamResampler, chunks, read_wav,
                                    write_wav)

log = logging.getLogger(__name__)


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise AudioError(f"no audio support: {exc} (install libportaudio2)") from None
    return sounddevice


class WavFileSource:
    """Frames of a WAV file at 16 kHz, followed by enough silence for the end-pointer to decide."""

    def __init__(self, path: Path, trailing_silence_s: float = 1.5):
        self.path = path
        self.audio = read_wav(path).at_rate(SAMPLE_RATE)
        self.trailing = np.zeros(int(trailing_silence_s * SAMPLE_RATE), dtype=np.float32)

    def frames(self) -> Iterator[np.ndarray]:
        yield from chunks(np.concatenate([self.audio.samples, self.trailing]))

    def close(self) -> None:
        pass


class MicrophoneSource:
    """16 kHz mono frames from the default (or named) input device; AudioError when there is none
    or it disappears mid-stream, so the caller can log, back off and retry."""

    def __init__(self, device: str | None = None, stall_timeout_s: float = 2.0):
        sd = _sounddevice()
        self._queue: queue.Queue = queue.Queue(maxsize=500)
        self._stall = stall_timeout_s
        self._status_error: str | None = None

        def callback(indata, _frames, _time, status) -> None:
            if status.input_overflow:
                log.warning("microphone overflow: the loop fell behind")
            try:
                self._queue.put_nowait(indata[:, 0].copy())
            except queue.Full:
                pass

        try:
            self._stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                          blocksize=CHUNK_SAMPLES, device=device or None, callback=callback)
            self._stream.start()
        except Exception as exc:  # PortAudioError, ValueError for unknown device names
            raise AudioError(f"cannot open microphone {device or '(default)'}: {exc}") from None

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            try:
                frame = self._queue.get(timeout=self._stall)
            except queue.Empty:
                active = getattr(self._stream, "active", False)
                raise AudioError(f"microphone stopped delivering audio (stream active: {active})") from None
            yield frame

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # a device that vanished cannot be closed cleanly; nothing to keep
            pass


class Sink(Protocol):
    """Where the voice loop sends an answer's audio, piece by piece as it is synthesized."""

    def play(self, audio: Audio) -> None: ...
    def flush(self) -> None: ...  # the answer's last piece was played: queue what resampling held back
    def buffered_seconds(self) -> float: ...
    def advance(self, seconds: float) -> None: ...
    def playing(self) -> bool: ...
    def stop(self) -> None: ...
    def finish(self) -> Path | None: ...


class WavSink:
    """Collects what was played of each answer and writes ``answer-NNN.wav`` when it ends."""

    def __init__(self, directory: Path, rate: int = 22050):
        self.directory = directory
        self.rate = rate
        self.count = 0
        self._pending: list[np.ndarray] = []  # queued, not yet played
        self._played: list[np.ndarray] = []
        self.written: list[Path] = []
        self._resampler = StreamResampler(rate)

    def play(self, audio: Audio) -> None:
        self._pending.append(self._resampler.push(audio))

    def flush(self) -> None:
        self._pending.append(self._resampler.flush())

    def buffered_seconds(self) -> float:
        return sum(len(a) for a in self._pending) / self.rate

    def advance(self, seconds: float) -> None:
        need = int(seconds * self.rate)
        while need > 0 and self._pending:
            head = self._pending[0]
            self._played.append(head[:need])
            if len(head) <= need:
                self._pending.pop(0)
            else:
                self._pending[0] = head[need:]
            need -= len(self._played[-1])

    def playing(self) -> bool:
        return bool(self._pending)

    def stop(self) -> None:
        self._pending.clear()
        self._resampler.reset()

    def finish(self) -> Path | None:
        """End of one answer: write what was played."""
        self._pending.clear()
        self._resampler.reset()
        if not self._played:
            return None
        self.count += 1
        path = self.directory / f"answer-{self.count:03d}.wav"
        write_wav(path, Audio(np.concatenate(self._played), self.rate))
        self._played = []
        self.written.append(path)
        return path


class SpeakerSink:
    """The default output device, fed from a buffer by PortAudio's callback; ``stop`` empties it."""

    def __init__(self, device: str | None = None, rate: int = 22050):
        sd = _sounddevice()
        self.rate = rate
        self._lock = threading.Lock()
        self._buffer = np.zeros(0, dtype=np.float32)
        self._resampler = StreamResampler(rate)

        def callback(outdata, frames, _time, _status) -> None:
            with self._lock:
                n = min(frames, len(self._buffer))
                outdata[:n, 0] = self._buffer[:n]
                outdata[n:, 0] = 0.0
                self._buffer = self._buffer[n:]

        try:
            self._stream = sd.OutputStream(samplerate=rate, channels=1, dtype="float32", device=device or None,
                                           callback=callback)
            self._stream.start()
        except Exception as exc:
            raise AudioError(f"cannot open speaker {device or '(default)'}: {exc}") from None

    def play(self, audio: Audio) -> None:
        self._queue(self._resampler.push(audio))

    def flush(self) -> None:
        self._queue(self._resampler.flush())

    def _queue(self, samples: np.ndarray) -> None:
        with self._lock:
            self._buffer = np.concatenate([self._buffer, samples])

    def buffered_seconds(self) -> float:
        with self._lock:
            return len(self._buffer) / self.rate

    def advance(self, seconds: float) -> None:
        pass  # the device plays in real time by itself

    def playing(self) -> bool:
        return self.buffered_seconds() > 0

    def stop(self) -> None:
        with self._lock:
            self._buffer = np.zeros(0, dtype=np.float32)
        self._resampler.reset()

    def finish(self) -> None:
        self._resampler.reset()

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:
            pass
