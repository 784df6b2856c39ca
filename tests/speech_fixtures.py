"""Audio made at test time: espeak-ng (formant, via pyttsx3) and Piper (neural) renderings."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.speech.audio import SAMPLE_RATE, Audio, joined, write_wav

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def render(synth, text: str, lead_s: float = 0.3, tail_s: float = 0.8) -> np.ndarray:
    """``text`` spoken at 16 kHz with silence around it, as a microphone would hear it."""
    speech = joined(synth.synthesize(text), SAMPLE_RATE)
    return np.concatenate([silence(lead_s), speech, silence(tail_s)])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def save(path: Path, samples: np.ndarray) -> Path:
    write_wav(path, Audio(samples, SAMPLE_RATE))
    return path
