"""The composition root: the one place that turns a ``Config`` into the question-answering pipeline
and the speech stack. The CLI, the daemon, the Wyoming server, the TUI, the benchmarks and the
build tools' evaluators all build through here, so every front end runs the same settings.

Components take their config section and nothing else (``Retriever(encoder, index,
config.retriever)``); the defaults live only in ``appliance.config``. Speech modules are imported
when a speech part is asked for, so ``appliance ask`` never loads them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.bm25 import TOKENS_VERSION
from appliance.calibrator import Calibrator
from appliance.config import Config
from appliance.encoder import SentenceEncoder
from appliance.errors import ApplianceError, IndexMissingError, StorageError
from appliance.index import (PASSAGES_VERSION, SPEECH_ADAPTATION, IndexStep, IndexSummary, IndexVersion, index_exists,
                             load_index)
from appliance.index import build_index as build_index_version
from appliance.model_dir import ModelDir
from appliance.pipeline import QAPipeline
from appliance.reader import Reader
from appliance.retriever import Retriever

if TYPE_CHECKING:
    from appliance.speech.adapt import Adaptation
    from appliance.speech.asr import Recognizer
    from appliance.speech.tts import Synthesizer
    from appliance.voice import VoiceParts
    from appliance.wyoming_server import WyomingService

log = logging.getLogger(__name__)


# --- the text pipeline ----------------------------------------------------------------------

def kb_dir(config: Config, kb: Path | None = None) -> Path:
    return kb or config.resolve(config.paths.kb)


def index_dir(config: Config, index: Path | None = None) -> Path:
    return index or config.resolve(config.paths.index)


def open_encoder(config: Config, model: Path | None = None, onnx_name: str | None = None) -> SentenceEncoder:
    """The configured retriever model, or another one with the same settings (evaluations)."""
    return SentenceEncoder(ModelDir.open(model or config.resolve(config.paths.retriever_model)), config.retriever,
                           onnx_name)


def open_reader(config: Config, model: Path | None = None, onnx_name: str | None = None) -> Reader:
    """The configured reader, or another model with the same windowing and threads (evaluations)."""
    return Reader(ModelDir.open(model or config.resolve(config.paths.reader_model)), config.reader, onnx_name)


def index_steps() -> dict[str, IndexStep]:
    """What every index version holds besides passages and vectors: the KB speech adaptation."""
    from appliance.speech.adapt import adapt_index_version

    return {SPEECH_ADAPTATION: adapt_index_version}


def build_index(config: Config, kb: Path | None = None, index: Path | None = None,
                encoder: SentenceEncoder | None = None, progress: bool = False) -> IndexSummary:
    """`appliance index`: passages, vectors and BM25, then the KB speech adaptation, as one version."""
    return build_index_version(kb_dir(config, kb), index_dir(config, index), encoder or open_encoder(config),
                               config.ingest, progress, index_steps(), config.retriever.sentence_vectors)


def open_index(config: Config, encoder: SentenceEncoder, kb: Path | None = None, index: Path | None = None,
               build_if_missing: bool = True) -> IndexVersion:
    """The current index version, built first when missing (``build_if_missing``), when its vectors
    came from another retriever model (their similarities to this encoder's would be meaningless) or
    when an older release's document readers made its passages (stale section names, citations)."""
    where = index_dir(config, index)
    if build_if_missing and not index_exists(where):
        build_index(config, kb, where, encoder)
    version = load_index(where)
    why = outdated(version, encoder)
    if why is not None:
        if not build_if_missing:
            raise IndexMissingError(f"index at {where} was built {why}; "
                                    f"rebuild it with: appliance index --index {where}")
        log.warning("index at %s was built %s: rebuilding it", where, why)
        build_index(config, kb, where, encoder)
        return load_index(where)
    if config.retriever.sentence_vectors and "sentence_vectors" not in version.manifest:
        return with_sentence_vectors(config, kb, where, encoder, version, build_if_missing)
    return version


def with_sentence_vectors(config: Config, kb: Path | None, where: Path, encoder: SentenceEncoder,
                          version: IndexVersion, build_if_missing: bool) -> IndexVersion:
    """An index built before sentence vectors (or without them) is rebuilt with them when it can be;
    when it cannot (read-only or full disk, or building is off) it still answers as it is: they only
    refine the dense ranking, so their absence must not leave the box mute."""
    missing = "index at %s has no sentence vectors ([retriever] sentence_vectors)"
    if not build_if_missing:
        log.warning(missing + "; answering without them until it is rebuilt: appliance index --index %s", where, where)
        return version
    log.warning(missing + ": rebuilding it", where)
    try:
        build_index(config, kb, where, encoder)
    except StorageError as exc:
        log.warning("%s; answering from the index as it is, without sentence vectors", exc)
        return version
    return load_index(where)


def outdated(version: IndexVersion, encoder: SentenceEncoder) -> str | None:
    """Why this index version must not be searched as it is, or None."""
    if version.manifest.get("encoder_sha256") != encoder.sha256:
        return "with a different retriever model"
    if version.manifest.get("passages_version", 1) != PASSAGES_VERSION:
        return "by an older release's document readers"
    if version.manifest.get("bm25_tokens", 1) != TOKENS_VERSION:
        return "by an older release's word matching (BM25 terms)"
    return None


def load_calibrator(reader: Reader) -> Calibrator | None:
    """The reader's calibrator, when its manifest names one (without one the box abstains on the
    choice score itself)."""
    return Calibrator.load(reader.files.file("calibrator")) if reader.files.has("calibrator") else None


def load_pipeline(config: Config, kb: Path | None = None, index: Path | None = None,
                  build_if_missing: bool = True) -> QAPipeline:
    """Encoder, index, retriever, reader and calibrator, each from its config section."""
    encoder = open_encoder(config)
    version = open_index(config, encoder, kb, index, build_if_missing)
    reader = open_reader(config)
    return QAPipeline(version, Retriever(encoder, version, config.retriever), reader, load_calibrator(reader),
                      config.ask, config.reader)


# --- the speech stack -----------------------------------------------------------------------

def preload_speech(config: Config) -> None:
    """Load the Whisper model the config asks for before anything else big: converting its fp16
    weights to int8 needs ~100 MB more for a moment, which then lands on a small process rather
    than on top of the QA models (daemon peak RSS). Errors are left to the voice thread to report."""
    from appliance.speech.asr import choose_engine
    from appliance.speech.whisper import resolve_model_dir, shared_model

    sc = config.speech
    configured = config.resolve(Path(sc.whisper_model)) if sc.whisper_model else None
    try:
        if sc.enabled and choose_engine(sc.asr, sc.vosk_model or None, configured) == "whisper":
            shared_model(resolve_model_dir(configured))
    except ApplianceError:
        pass


def speech_adaptation(config: Config, index: IndexVersion | None) -> Adaptation | None:
    """The KB adaptation of this index version, when ``speech.adapt`` asks for it and one was built."""
    from appliance.speech.adapt import Adaptation

    folder = index.speech_adaptation if index is not None and config.speech.adapt else None
    return Adaptation(folder) if folder is not None else None


def recognizer(config: Config, adaptation: Adaptation | None, kws_threshold: float | None = None,
               partials: Recognizer | None = None) -> Recognizer:
    """The recogniser ``speech.asr`` names (paths resolved against the project root)."""
    from appliance.speech.asr import create_recognizer

    sc = config.speech
    vosk = config.resolve(Path(sc.vosk_model)) if sc.vosk_model else None
    whisper = config.resolve(Path(sc.whisper_model)) if sc.whisper_model else None
    return create_recognizer(vosk, adaptation, kws_threshold, sc.asr, whisper, sc.whisper_bias, partials)


def synthesizer(config: Config) -> Synthesizer:
    from appliance.speech.tts import create_synthesizer

    sc = config.speech
    return create_synthesizer(sc.tts, config.resolve(Path(sc.piper_voice)) if sc.piper_voice else None)


def voice_parts(config: Config, index: IndexVersion | None) -> VoiceParts:
    """Everything the voice loop needs, models loaded once: VAD, wake phrase, recogniser (adapted
    to ``index``'s KB), synthesizer and end-pointing settings."""
    from appliance.speech.asr import PocketsphinxRecognizer, choose_engine
    from appliance.speech.vad import EndpointSettings, SileroVad
    from appliance.speech.wake import WakePhraseSpotter
    from appliance.voice import VoiceParts

    sc = config.speech
    adaptation = speech_adaptation(config, index)
    # Whisper gets live partials from pocketsphinx, whose decoder the wake phrase spotter shares
    partials = PocketsphinxRecognizer(adaptation, kws_threshold=sc.wake_threshold) \
        if choose_engine(sc.asr, sc.vosk_model or None, sc.whisper_model or None) == "whisper" else None
    heard = recognizer(config, adaptation, sc.wake_threshold, partials)
    endpoint = EndpointSettings.of(sc)
    shared = partials or (heard if isinstance(heard, PocketsphinxRecognizer) else None)
    wake = WakePhraseSpotter(sc.wake_phrase, sc.wake_threshold, shared) if sc.listen == "wake" else None
    return VoiceParts(heard, SileroVad(ModelDir.open(config.resolve(sc.vad_model))), synthesizer(config),
                      endpoint, wake, sc.speculate_silence_ms)


def wyoming_service(config: Config, pipeline: QAPipeline) -> WyomingService:
    """The Wyoming server's shared parts; the first recogniser is built now, so a broken model fails
    at start, not mid-call (Whisper: one model per process)."""
    from appliance.wyoming_server import WyomingService

    adaptation = speech_adaptation(config, pipeline.index)
    service = WyomingService(config, pipeline, synthesizer(config), lambda: recognizer(config, adaptation))
    first = service.make_recognizer()
    service.asr_name = first.name
    service.give_back(first)
    return service
