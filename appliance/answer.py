"""The answer object every front end (CLI, voice, TUI, socket API) receives."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


MAX_SPOKEN_SENTENCE_WORDS = 30


@dataclass(frozen=True)
class Source:
    document: str  # document title
    file: str  # path relative to the knowledge-base root
    section: tuple[str, ...]  # heading path: the citation

    @property
    def citation(self) -> str:
        return " > ".join((self.document, *self.section))


@dataclass(frozen=True)
class Answer:
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
        )

    def spoken(self) -> str:
        """What the box says aloud: the answer and where it comes from, or an honest abstention.
        The evidence sentence (it holds the span) stands alone where a bare span may not ("500 mg"
        of what?), and on the KB test questions it was right more often (README, Results); a long
        sentence gives way to the span."""
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
