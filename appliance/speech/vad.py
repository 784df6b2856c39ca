"""Voice activity: silero-vad's ONNX model through onnxruntime, and end-pointing on top of it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config import SpeechConfig
from appliance.model_dir import ModelDir
from appliance.speech.audio import CHUNK_SAMPLES, SAMPLE_RATE

CONTEXT_SAMPLES = 64  # silero v5+ sees the previous frame's last 64 samples with each 512-sample frame



class SileroVad:
    """Speech probability per 32 ms frame; keeps the recurrent state between frames."""

    def __init__(self, model: ModelDir | Path):
        self._session = ModelDir.open(model).session(threads=1)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def probability(self, frame: np.ndarray) -> float:
        if len(frame) != CHUNK_SAMPLES:
            raise ValueError(f"VAD frames are {CHUNK_SAMPLES} samples at 16 kHz, got {len(frame)}")
        x = np.concatenate([self._context, frame.astype(np.float32)])[None, :]
        prob, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[0, -CONTEXT_SAMPLES:]
        return float(prob[0, 0])


@dataclass
class EndpointSettings:
    """The end-pointer's settings; defaults are SpeechConfig's (the one place they are set)."""

    threshold: float = SpeechConfig.vad_threshold  # speech probability above which a frame is speech
    start_frames: int = 3  # this many speech frames in a row start an utterance (96 ms)
    end_silence_ms: int = SpeechConfig.end_silence_ms  # this much non-speech after speech ends it
    max_utterance_s: float = SpeechConfig.max_utterance_s  # a question longer than this is cut off
    no_speech_timeout_s: float = SpeechConfig.no_speech_timeout_s  # after the wake phrase: nobody spoke

    @classmethod
    def of(cls, speech: SpeechConfig) -> EndpointSettings:
        return cls(threshold=speech.vad_threshold, end_silence_ms=speech.end_silence_ms,
                   max_utterance_s=speech.max_utterance_s, no_speech_timeout_s=speech.no_speech_timeout_s)


class Endpointer:
    """Turns per-frame speech probabilities into utterance start and end decisions (with hysteresis)."""

    def __init__(self, settings: EndpointSettings):
        self.settings = settings
        self.frame_ms = 1000 * CHUNK_SAMPLES / SAMPLE_RATE
        self.reset()

    def reset(self) -> None:
        self.in_speech = False
        self.heard_speech = False
        self._run = 0
        self._silence_ms = 0.0
        self._elapsed_ms = 0.0

    @property
    def silence_ms(self) -> float:
        """Non-speech heard since the last speech frame."""
        return self._silence_ms

    def update(self, probability: float) -> str | None:
        """'start' when speech begins, 'end' when it has ended, 'timeout' on silence or overlong speech."""
        s = self.settings
        self._elapsed_ms += self.frame_ms
        if probability >= s.threshold:
            self._run += 1
            self._silence_ms = 0.0
            if not self.in_speech and self._run >= s.start_frames:
                self.in_speech = self.heard_speech = True
                return "start"
        else:
            self._run = 0
            if probability < s.threshold - 0.15:
                self._silence_ms += self.frame_ms
            if self.in_speech and self._silence_ms >= s.end_silence_ms:
                self.in_speech = False
                return "end"
        if self.heard_speech and self._elapsed_ms >= s.max_utterance_s * 1000:
            return "timeout"
        if not self.heard_speech and self._elapsed_ms >= s.no_speech_timeout_s * 1000:
            return "timeout"
        return None
