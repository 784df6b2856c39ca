"""The streaming recogniser interface every engine implements (pocketsphinx, vosk, Whisper).

Its own module so that engines depend on the interface, and the factory (``speech.asr``) on the
engines, never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool
    engine: str


class Recognizer(Protocol):
    name: str

    def start(self) -> None: ...

    def feed(self, frame: np.ndarray) -> Transcript | None: ...

    def finish(self) -> Transcript: ...


def transcribe(recognizer: Recognizer, samples: np.ndarray, frame: int = 1600) -> Transcript:
    """Whole-utterance convenience for files and benchmarks: same streaming path, fed in 100 ms steps."""
    recognizer.start()
    for i in range(0, len(samples), frame):
        recognizer.feed(samples[i:i + frame])
    return recognizer.finish()
