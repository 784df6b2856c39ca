"""The messages that cross the appliance's boundaries: answers, sources, passages, the KB outline,
and the events of the voice loop and the socket API.

Plain dataclasses with ``to_json``/``from_json`` and nothing but the standard library, so a
client, the TUI or another program can import them without numpy, faiss or onnxruntime. Events
follow rhasspy/wyoming's style: one class per event type, its wire name in ``type``, ``is_type``
to match a received name, and ``event_from_json`` to read any of them back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

MAX_SPOKEN_SENTENCE_WORDS = 30


# --- knowledge base -------------------------------------------------------------------------

@dataclass(frozen=True)
class Passage:
    doc_title: str
    source: str  # path relative to the knowledge-base root
    section: tuple[str, ...]  # heading path
    text: str

    @property
    def citation(self) -> str:
        return " > ".join((self.doc_title, *self.section))

    def search_text(self) -> str:
        """What the retrievers see: headings carry much of a passage's topic."""
        return f"{self.citation}. {self.text}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Passage:
        return cls(data["doc_title"], data["source"], tuple(data["section"]), data["text"])


@dataclass(frozen=True)
class OutlineSection:
    path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class OutlineDocument:
    title: str
    source: str
    sections: list[OutlineSection]

    def to_json(self) -> dict:
        return {"title": self.title, "source": self.source,
                "sections": [{"path": list(s.path), "text": s.text} for s in self.sections]}

    @classmethod
    def from_json(cls, data: dict) -> OutlineDocument:
        return cls(data["title"], data["source"],
                   [OutlineSection(tuple(s["path"]), s["text"]) for s in data["sections"]])


def kb_outline(passages: list[Passage]) -> list[OutlineDocument]:
    """Documents → sections → text, rebuilt from the indexed passages (what the TUI browses)."""
    docs: dict[str, tuple[str, dict[tuple[str, ...], list[str]]]] = {}
    for p in passages:
        _, sections = docs.setdefault(p.source, (p.doc_title, {}))
        sections.setdefault(p.section, []).append(p.text)
    return [OutlineDocument(title, source, [OutlineSection(path, "\n".join(texts)) for path, texts in sections.items()])
            for source, (title, sections) in sorted(docs.items(), key=lambda item: item[1][0].lower())]


# --- answers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    document: str  # document title
    file: str  # path relative to the knowledge-base root
    section: tuple[str, ...]  # heading path: the citation

    @property
    def citation(self) -> str:
        return " > ".join((self.document, *self.section))

    @classmethod
    def of(cls, passage: Passage) -> Source:
        return cls(passage.doc_title, passage.source, passage.section)


@dataclass(frozen=True)
class Answer:
    """What every front end (CLI, voice, TUI, socket API, Wyoming) receives for a question."""

    question: str
    text: str  # "" when the reader abstained
    confidence: float
    abstained: bool
    source: Source | None  # where the answer (or, on abstention, the best passage) comes from
    evidence: str  # the sentence that contains the answer
    passage: str  # the whole passage the answer was read from
    start: int  # character offsets of the answer in ``passage``
    end: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    candidates: list[Source] = field(default_factory=list)  # the passages the reader looked at
    unknown_codes: list[str] = field(default_factory=list)  # codes the question names that no passage mentions

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("source",):
            if data[key] is not None:
                data[key]["section"] = list(data[key]["section"])
                data[key]["citation"] = self.source.citation
        data["candidates"] = [{"document": c.document, "file": c.file, "section": list(c.section),
                               "citation": c.citation} for c in self.candidates]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Answer:
        """Inverse of to_json (what the socket API sends)."""
        def source(d: dict | None) -> Source | None:
            return Source(d["document"], d["file"], tuple(d["section"])) if d else None

        return cls(
            question=data["question"], text=data["text"], confidence=float(data["confidence"]),
            abstained=bool(data["abstained"]), source=source(data.get("source")), evidence=data["evidence"],
            passage=data["passage"], start=int(data["start"]), end=int(data["end"]),
            timings_ms=dict(data.get("timings_ms", {})), candidates=[source(c) for c in data.get("candidates", [])],
            unknown_codes=[str(c) for c in data.get("unknown_codes", [])],
        )

    def spoken(self) -> str:
        """What the box says aloud: the answer and where it comes from, or an honest abstention.
        The evidence sentence (it holds the span) stands alone where a bare span may not ("500 mg"
        of what?), and on the KB test questions it was right more often (docs/RESULTS.md); a long
        sentence gives way to the span."""
        if self.unknown_codes:
            return f"I don't know: the documents never mention {' or '.join(self.unknown_codes)}."
        if self.abstained or self.source is None:
            hint = f" The closest section I found is {self.source.citation}." if self.source else ""
            return f"I don't know.{hint}"
        section = f", section {self.source.section[-1]}" if self.source.section else ""
        return f"{self.said_answer()} From {self.source.document}{section}."

    def said_answer(self) -> str:
        sentence = " ".join(self.evidence.split())
        if self.text and self.text in sentence and len(sentence.split()) <= MAX_SPOKEN_SENTENCE_WORDS:
            return sentence if sentence[-1:] in ".!?" else sentence + "."
        return f"{self.text}."


# --- voice events (published to socket subscribers as {"type": "event", "event": NAME, ...}) ---

_EVENTS: dict[str, type[VoiceEvent]] = {}


@dataclass(frozen=True)
class VoiceEvent:
    """One thing the voice loop or the daemon announces; fields set to None are left out."""

    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _EVENTS[cls.type] = cls

    @classmethod
    def is_type(cls, name: str) -> bool:
        return name == cls.type

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"event": self.type, **{k: _plain(v) for k, v in values.items() if v is not None}}


def _plain(value: Any) -> Any:
    return value.to_json() if hasattr(value, "to_json") else value


def event_from_json(data: dict) -> VoiceEvent:
    """The event a published line holds (``Answered.answer`` back as an Answer)."""
    cls = _EVENTS.get(data.get("event", ""))
    if cls is None:
        raise ValueError(f"unknown event {data.get('event')!r}")
    values = {f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name in data}
    if cls is Answered:
        values["answer"] = Answer.from_json(values["answer"])
    return cls(**values)


@dataclass(frozen=True)
class Ready(VoiceEvent):
    type: ClassVar[str] = "ready"
    listen: str = "wake"


@dataclass(frozen=True)
class Wake(VoiceEvent):
    type: ClassVar[str] = "wake"


@dataclass(frozen=True)
class Listening(VoiceEvent):
    type: ClassVar[str] = "listening"


@dataclass(frozen=True)
class Partial(VoiceEvent):
    type: ClassVar[str] = "partial"
    text: str = ""


@dataclass(frozen=True)
class Heard(VoiceEvent):
    type: ClassVar[str] = "heard"
    text: str = ""


@dataclass(frozen=True)
class Answered(VoiceEvent):
    type: ClassVar[str] = "answered"
    answer: Answer | None = None
    via: str | None = None  # "api" for a typed question; absent for a spoken one


@dataclass(frozen=True)
class Speaking(VoiceEvent):
    type: ClassVar[str] = "speaking"
    text: str = ""


@dataclass(frozen=True)
class BargeIn(VoiceEvent):
    type: ClassVar[str] = "barge-in"


@dataclass(frozen=True)
class Done(VoiceEvent):
    type: ClassVar[str] = "done"
    barged_in: bool = False


@dataclass(frozen=True)
class AudioError(VoiceEvent):
    type: ClassVar[str] = "audio-error"
    error: str = ""
    retry_in_s: float = 0.0


# --- socket API requests (one JSON line each; see appliance.api) -----------------------------

REQUEST_TYPES = ("ask", "outline", "ping", "subscribe", "listen")


@dataclass(frozen=True)
class Request:
    """A request line; ``id`` is echoed in the reply."""

    type: ClassVar[str] = ""
    id: Any = None

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.type, **{k: v for k, v in values.items() if v is not None}}


@dataclass(frozen=True)
class Ask(Request):
    type: ClassVar[str] = "ask"
    question: str = ""
    top_k: int | None = None


@dataclass(frozen=True)
class GetOutline(Request):
    type: ClassVar[str] = "outline"


@dataclass(frozen=True)
class Ping(Request):
    type: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Subscribe(Request):
    type: ClassVar[str] = "subscribe"


@dataclass(frozen=True)
class Listen(Request):
    type: ClassVar[str] = "listen"


def error_reply(message: str, code: str, request_id: Any = None) -> dict:
    """The one shape of every error the API sends."""
    return {"type": "error", "id": request_id, "code": code, "error": message}
