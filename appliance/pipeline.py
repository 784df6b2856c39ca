"""Question → passages → answer, with per-stage timings. Front ends call only this; it is
composed from its parts by ``appliance.runtime``."""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, replace
from functools import cached_property

from appliance.calibrator import Calibrator, candidate_features
from appliance.config import AskConfig, ReaderConfig
from appliance.errors import BadQuestionError
from appliance.index import IndexVersion
from appliance.ingest import split_sentences
from appliance.reader import Reader, SpanPrediction, shared_confidences
from appliance.retriever import Hit, Retriever
from appliance.schema import Answer, Passage, Source


def normalize_question(raw: str, max_chars: int) -> str:
    """Printable, single-spaced text; BadQuestionError for empty or over-long questions."""
    if not isinstance(raw, str):
        raise BadQuestionError("the question must be text")
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in raw)
    text = " ".join(text.split())
    if not text:
        raise BadQuestionError("the question is empty")
    if len(text) > max_chars:
        raise BadQuestionError(f"the question is {len(text)} characters long; the limit is {max_chars}")
    return text


def evidence_sentence(passage: str, start: int, end: int) -> str:
    """The sentence(s) of ``passage`` that contain the span [start, end)."""
    offset = 0
    chosen = []
    for line in passage.split("\n"):
        for sentence in split_sentences(line):
            s_start = passage.find(sentence, offset)
            s_end = s_start + len(sentence)
            offset = max(offset, s_end)
            if s_start < end and s_end > start:
                chosen.append(sentence)
    return " ".join(chosen) or passage[start:end]


_CODE = re.compile(r"\b[a-z]{1,4}-?\d{1,5}[a-z]?\b", re.IGNORECASE)  # E10, F3, ML-1440, BC-300, A1C


def code_key(code: str) -> str:
    """One spelling for a code: "ML-1440" and "ml1440" are the same model. Leading zeros count: the
    conveyor's E09 is not the dishwasher's E9."""
    return code.lower().replace("-", "")


def named_codes(question: str) -> list[str]:
    """The codes and model numbers a question names: letters, then digits ("what does E10 mean?")."""
    return _CODE.findall(question)


def text_key(text: str) -> str:
    """What two copies of one passage share: labels are often shipped twice (an original and a
    repackager's copy), and manuals repeat their disclaimers, with only case, spacing or a hyphen
    between them."""
    return re.sub(r"\W+", "", text.casefold())


def distinct_hits(hits: list[Hit], passages: list[Passage], top_k: int) -> list[Hit]:
    """The first ``top_k`` hits whose passages differ in text: a second copy of a passage tells the
    reader nothing new and would take the place of one that might hold the answer."""
    seen: set[str] = set()
    kept: list[Hit] = []
    for hit in hits:
        key = text_key(passages[hit.index].text)
        if key not in seen:
            seen.add(key)
            kept.append(hit)
            if len(kept) == top_k:
                break
    return kept


@dataclass(frozen=True)
class Reading:
    """Everything the pipeline saw for one question: what evaluation and calibration fit on."""

    question: str
    hits: list[Hit]
    passages: list[Passage]
    predictions: list[SpanPrediction | None]
    features: list[dict[str, float] | None]  # calibrator features of each passage's best span
    probabilities: list[float]  # P(right) of each passage's best span (-1: no span)
    timings_ms: dict[str, float]
    choice_scores: list[float]  # which passage to answer from (-1: no span); see choice_score
    unknown_codes: tuple[str, ...] = ()  # named by the question, mentioned by no passage: nothing was read

    def best(self) -> int | None:
        """Index of the passage whose span the box answers with."""
        scored = [i for i, p in enumerate(self.choice_scores) if p >= 0]
        return max(scored, key=lambda i: (self.choice_scores[i], -i)) if scored else None


def choice_score(confidence: float, rank: int, rank_weight: float) -> float:
    """Window probability discounted by retrieval rank: a confident span in the 5th passage should
    not beat a nearly as confident one in the 1st. Measured on the KB test questions, this picks the
    right passage more often than the raw span-minus-null logit margin (the multi-passage
    comparable score) or the window probability alone; build_tools calibrate reports all three."""
    return confidence / (rank + 1) ** rank_weight


class QAPipeline:
    """Retriever + reader (+ calibrator) over one index version. Its own settings are the question
    limits (``ask``) and the answer decision (``reader.threshold``, ``reader.rank_weight``)."""

    def __init__(self, index: IndexVersion, retriever: Retriever, reader: Reader, calibrator: Calibrator | None,
                 ask: AskConfig, decision: ReaderConfig):
        self.index, self.retriever, self.reader, self.calibrator = index, retriever, reader, calibrator
        self.encoder = retriever.encoder
        self.limits, self.decision = ask, decision

    def retrieve(self, question: str, top_k: int | None = None) -> list[Hit]:
        """The ``top_k`` (``retriever.top_k``) best passages that differ in text."""
        top_k = top_k or self.retriever.config.top_k
        ranked = self.retriever.search(question, max(top_k, self.retriever.candidates))
        return distinct_hits(ranked, self.index.passages, top_k)

    @cached_property
    def known_codes(self) -> frozenset[str]:
        """Every code and model number the passages or their headings mention (``code_key``), with
        its endings: the guide's "HbA1c" is the "A1C" people ask about."""
        keys = {code_key(code) for p in self.index.passages for text in (p.text, p.citation)
                for code in _CODE.findall(text)}
        return frozenset(key[i:] for key in keys for i in range(len(key) - 1))

    def unknown_codes(self, question: str) -> tuple[str, ...]:
        """The codes the question names that no passage mentions (``ask.unknown_codes_abstain``): the
        documents cannot say what "E10" means when they never name it, and a confident reading of the
        error-code table would answer with another code's meaning."""
        if not self.limits.unknown_codes_abstain:
            return ()
        return tuple(dict.fromkeys(c for c in named_codes(question) if code_key(c) not in self.known_codes))

    def scores_are_bounded_by_rank(self) -> bool:
        """Without a calibrator (or shared normalisation) the answer's probability is its choice
        score, confidence / (rank + 1) ** rank_weight with confidence ≤ 1: a passage can score at
        most (rank + 1) ** -rank_weight, whatever it says."""
        return self.calibrator is None and not self.reader.shared_norm and self.decision.rank_weight > 0

    def passages_that_can_answer(self, count: int) -> int:
        """How many of ``count`` ranked passages can still give the answer: from rank 2 on
        (threshold 0.15, weight 2: at most 1/9) a passage can only ever lead to "I don't know", and
        then the passages above it, all under the threshold too, already say that."""
        if not self.scores_are_bounded_by_rank():
            return count
        return sum(1 for rank in range(count) if (rank + 1) ** -self.decision.rank_weight >= self.decision.threshold)

    def reader_inputs(self, question: str, passages: list[Passage]) -> tuple[list[tuple[str, str]], list[str] | None]:
        """(question, text) pairs and, when the config says so, each passage's "document >
        section" path for the reader to read first (the heading often names what it is about)."""
        headings = [p.citation for p in passages] if self.reader.read_headings else None
        return [(question, p.text) for p in passages], headings

    def predict(self, question: str, passages: list[Passage]) -> list[SpanPrediction | None]:
        """The reader's best span in each passage."""
        pairs, headings = self.reader_inputs(question, passages)
        return self.reader.predict(pairs, headings=headings)

    def read_passages(self, question: str, passages: list[Passage],
                      every_passage: bool = False) -> list[SpanPrediction | None]:
        """The best span of each passage that could still change the answer, in rank order: a
        passage is skipped (None) once its rank alone keeps it under the threshold or under the best
        choice score already read. The reader scores each window alone, so what is read scores as it
        would among all five, and the answer is the one reading all five would give."""
        if every_passage or not self.scores_are_bounded_by_rank():
            return self.predict(question, passages)
        weight = self.decision.rank_weight
        predictions: list[SpanPrediction | None] = [None] * len(passages)
        best = -1.0
        for rank in range(self.passages_that_can_answer(len(passages))):
            if (rank + 1) ** -weight <= best:  # ties go to the earlier passage
                break
            prediction = self.predict(question, [passages[rank]])[0]
            if prediction is not None:
                predictions[rank] = replace(prediction, pair=rank)
                best = max(best, choice_score(prediction.confidence, rank, weight))
        return predictions

    def read(self, question: str, top_k: int | None = None, with_features: bool | None = None,
             every_passage: bool = False) -> Reading:
        """Retrieve and read, scoring the best span of every passage that can still change the answer
        (``read_passages``; ``every_passage``: of all of them, as evaluations that vary the threshold
        need); no decision yet. Calibrator features are computed when a calibrator needs them or the
        caller asks."""
        t0 = time.perf_counter()
        hits = self.retrieve(question, top_k)
        t1 = time.perf_counter()
        passages = [self.index.passages[h.index] for h in hits]
        unknown = self.unknown_codes(question)
        predictions = [None] * len(passages) if unknown else self.read_passages(question, passages, every_passage)
        if self.reader.shared_norm:
            predictions = shared_confidences(predictions)
        t2 = time.perf_counter()
        features: list[dict[str, float] | None] = [None] * len(predictions)
        if self.calibrator is not None if with_features is None else with_features:
            evidences = [evidence_sentence(p.text, pred.start, pred.end) if pred else ""
                         for p, pred in zip(passages, predictions)]
            features = candidate_features(question, predictions, [h.dense for h in hits], evidences)
        timings = {"retrieval": round((t1 - t0) * 1000, 1), "reader": round((t2 - t1) * 1000, 1)}
        weight = self.decision.rank_weight
        choices = [choice_score(p.confidence, rank, weight) if p else -1.0 for rank, p in enumerate(predictions)]
        return Reading(question, hits, passages, predictions, features, self._probabilities(choices, features),
                       timings, choices, unknown)

    def _probabilities(self, choices: list[float], features: list[dict[str, float] | None]) -> list[float]:
        if self.calibrator is None:  # the choice score stands in for a probability
            return choices
        return [self.calibrator.probability(f) if f is not None else -1.0 for f in features]

    def check_question_tokens(self, question: str) -> None:
        """BadQuestionError for a question too long for the reader's window: 249 one-letter words are
        under the character limit but would leave no room for the passage (a tokenizer panic)."""
        limit = self.limits.max_question_tokens
        count = len(self.reader.tokenizer.encode(question, add_special_tokens=False).ids)
        if count > limit:
            raise BadQuestionError(f"the question is {count} tokens long; the limit is {limit} "
                                   f"(ask it in fewer words)")

    def ask(self, question: str, top_k: int | None = None) -> Answer:
        question = normalize_question(question, self.limits.max_question_chars)
        self.check_question_tokens(question)
        return self.answer(question, self.read(question, top_k))

    def answer(self, question: str, reading: Reading) -> Answer:
        """The decision over what was read: the best-scoring span, or "I don't know" under the
        threshold (the one place the rule is applied, for ``ask`` and for benchmarks alike)."""
        timings = dict(reading.timings_ms)
        candidates = [Source.of(p) for p in reading.passages]
        chosen = reading.best()
        if chosen is None:
            return Answer(question, "", 0.0, True, candidates[0] if candidates else None, "", "", 0, 0,
                          timings, candidates, list(reading.unknown_codes))
        pred, passage = reading.predictions[chosen], reading.passages[chosen]
        probability = reading.probabilities[chosen]
        abstained = probability < self.decision.threshold
        return Answer(
            question=question, text="" if abstained else pred.text, confidence=round(probability, 4),
            abstained=abstained, source=Source.of(passage),
            evidence=evidence_sentence(passage.text, pred.start, pred.end), passage=passage.text,
            start=pred.start, end=pred.end, timings_ms=timings, candidates=candidates,
        )
