"""PCM audio as the speech stages pass it around: mono float32 in [-1, 1] at a known rate."""
from __future__ import annotations

import wave
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.errors import ApplianceError

SAMPLE_RATE = 16_000  # what the recognisers and the VAD expect
CHUNK_SAMPLES = 512  # 32 ms at 16 kHz: silero-vad's frame, and the loop's tick


class AudioError(ApplianceError):
    """Unreadable audio input, or an audio device that is missing or failed."""


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, mono, [-1, 1]
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def at_rate(self, rate: int) -> Audio:
        return Audio(resample(self.samples, self.rate, rate), rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr): linear interpolation aliases and costs recognisers accuracy."""
    if from_rate == to_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples.astype(np.float32, copy=False), from_rate, to_rate).astype(np.float32)


class StreamResampler:
    """Resamples the pieces of one stream as they come (a synthesizer's sentences or windows) to a
    sink's rate, carrying the filter's state across pieces: each piece resampled alone would meet
    the next with a seam. soxr holds back a few samples; ``flush`` hands them over at the end."""

    def __init__(self, rate: int):
        self.rate = rate
        self._from: int | None = None
        self._stream = None

    def push(self, audio: Audio) -> np.ndarray:
        """Audio at ``rate`` for this piece (less a few samples held back when resampling)."""
        samples = audio.samples.astype(np.float32, copy=False)
        head = self.flush() if self._from not in (None, audio.rate) else samples[:0]  # a new rate: a new stream
        if audio.rate == self.rate:
            return np.concatenate([head, samples])
        if self._stream is None:
            import soxr

            self._stream, self._from = soxr.ResampleStream(audio.rate, self.rate, 1, dtype="float32"), audio.rate
        return np.concatenate([head, self._stream.resample_chunk(samples)])

    def flush(self) -> np.ndarray:
        """The stream ended: the samples still held back."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return tail.astype(np.float32, copy=False)

    def reset(self) -> None:
        """Drop the stream (an answer cut off): the next piece starts a new one."""
        self._stream, self._from = None, None


def joined(parts: Iterable[Audio], rate: int) -> np.ndarray:
    """Consecutive pieces of one stream (a synthesizer's sentences or windows) at ``rate``,
    resampled as one: resampled piece by piece they would meet with a seam at every boundary."""
    parts = list(parts)
    if not parts:
        return np.zeros(0, dtype=np.float32)
    if len({p.rate for p in parts}) > 1:
        raise AudioError(f"cannot join audio of different rates: {sorted({p.rate for p in parts})}")
    return resample(np.concatenate([p.samples for p in parts]), parts[0].rate, rate)


def to_int16_bytes(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def from_int16_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def read_wav(path: Path) -> Audio:
    """16-bit PCM WAV of any rate; channels are averaged. AudioError names the file otherwise."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioError(f"cannot read {path} as a WAV file: {exc}") from None
    if width != 2:
        raise AudioError(f"{path}: only 16-bit PCM WAV is supported (this one has {8 * width}-bit samples)")
    samples = from_int16_bytes(frames[: len(frames) - len(frames) % (2 * channels)])
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return Audio(samples, rate)


def write_wav(path: Path, audio: Audio) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.rate)
        wav.writeframes(to_int16_bytes(audio.samples))


def chunks(samples: np.ndarray, size: int = CHUNK_SAMPLES) -> list[np.ndarray]:
    """Fixed-size frames; the last one is zero-padded so every frame has ``size`` samples."""
    out = []
    for start in range(0, len(samples), size):
        frame = samples[start:start + size]
        if len(frame) < size:
            frame = np.concatenate([frame, np.zeros(size - len(frame), dtype=np.float32)])
        out.append(frame.astype(np.float32, copy=False))
    return out
