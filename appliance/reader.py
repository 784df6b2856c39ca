"""Extractive reader: the best answer span for a question over a few passages (int8 ONNX).

Each passage is cut into overlapping windows; in every window the start and end distributions
are softmaxes over [CLS] plus the context tokens, so probability mass on [CLS] means "no answer
here". A span's confidence is P(start) * P(end) in its window: low when the model prefers
[CLS] or is torn between spans, which is what the abstention threshold needs.

A reader trained with shared normalisation (``reader.shared_norm``; build_tools/shared_norm.py)
learnt one softmax across all windows of all the passages of a question: its spans are then
chosen by their raw logits and their confidence is normalised over every window of the question
(``shared_confidences``), [CLS] of every window together meaning "no passage answers".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from appliance.config import ReaderConfig
from appliance.model_dir import ModelDir
from appliance.windows import Window, load_tokenizer, make_windows


@dataclass(frozen=True)
class Partition:
    """Log-sums of exp(logit) over the positions a span may start (end) at, and over the [CLS]
    positions, in some windows: what normalising across windows needs."""

    start: float
    end: float
    null_start: float
    null_end: float

    def plus(self, other: Partition) -> Partition:
        return Partition(*np.logaddexp((self.start, self.end, self.null_start, self.null_end),
                                       (other.start, other.end, other.null_start, other.null_end)).tolist())


@dataclass(frozen=True)
class SpanPrediction:
    pair: int  # which (question, context) pair it answers
    start: int  # character offsets in that context
    end: int
    text: str
    confidence: float  # P(start) * P(end) within its window
    no_answer: float  # P(start=CLS) * P(end=CLS) in that window
    span_score: float = 0.0  # start + end logit: unnormalised, so comparable across windows
    null_score: float = 0.0  # start + end logit of [CLS]
    runner_up: float = 0.0  # P(start) * P(end) of the window's second-best span
    partition: Partition | None = None  # over every window of its pair


def _logsumexp(x: np.ndarray) -> float:
    top = x.max()
    return float(top + np.log(np.exp(x - top).sum()))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


@dataclass(frozen=True)
class WindowSpan:
    start: int  # token positions in the window
    end: int
    confidence: float
    no_answer: float
    span_score: float
    null_score: float
    runner_up: float
    partition: Partition


def line_breaks(text: str) -> np.ndarray:
    """Character positions of the line breaks in ``text``."""
    return np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)


def token_lines(window: Window, breaks: np.ndarray) -> np.ndarray:
    """The line of the context the window was cut from (``line_breaks`` of it) each token starts on."""
    starts = np.array([off[0] if off is not None else -1 for off in window.context_offsets], dtype=np.int64)
    return np.searchsorted(breaks, starts, side="right")


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, window: Window,
              max_answer_tokens: int, answer_from: int = 0, lines: np.ndarray | None = None) -> WindowSpan | None:
    """The best span of one window with the scores abstention needs; None without context. Context
    tokens before character ``answer_from`` (a heading read before the passage) are read, never
    answered from. With ``lines`` (``token_lines``) a span stays on one line: in a passage a line
    break separates list items and table rows, and "6.25 mg\nPhenylephrine HCl 2.5" (the end of
    one row and the start of the next, read from a drug label) answers nothing."""
    n = len(window)
    context = np.array([off is not None and off[0] >= answer_from for off in window.context_offsets])
    allowed = context.copy()
    allowed[0] = True  # [CLS] = no answer
    s = np.where(allowed, start_logits[:n], -np.inf)
    e = np.where(allowed, end_logits[:n], -np.inf)
    log_s, log_e = _log_softmax(s), _log_softmax(e)
    no_answer = float(np.exp(log_s[0] + log_e[0]))
    scores = log_s[:, None] + log_e[None, :]
    i, j = np.indices(scores.shape)
    valid = (j >= i) & (j - i < max_answer_tokens) & context[:, None] & context[None, :]
    if lines is not None:
        valid &= lines[:n, None] == lines[None, :n]
    if not valid.any():
        return None
    scores = np.where(valid, scores, -np.inf)
    flat = scores.ravel()
    top2 = np.argpartition(-flat, 1)[:2] if flat.size > 1 else np.array([0])
    top2 = top2[np.argsort(-flat[top2])]
    start, end = divmod(int(top2[0]), n)
    runner_up = float(np.exp(flat[top2[1]])) if len(top2) > 1 and np.isfinite(flat[top2[1]]) else 0.0
    partition = Partition(_logsumexp(s), _logsumexp(e), float(start_logits[0]), float(end_logits[0]))
    return WindowSpan(start, end, float(np.exp(scores[start, end])), no_answer,
                      float(start_logits[start] + end_logits[end]), float(start_logits[0] + end_logits[0]),
                      runner_up, partition)


def shared_confidences(predictions: list[SpanPrediction | None]) -> list[SpanPrediction | None]:
    """The predictions of one question's passages with confidence and no-answer probability
    normalised over all their windows together (for a reader trained with shared normalisation)."""
    parts = [p.partition for p in predictions if p is not None and p.partition is not None]
    if not parts:
        return predictions
    total = parts[0]
    for part in parts[1:]:
        total = total.plus(part)
    no_answer = float(np.exp(total.null_start - total.start + total.null_end - total.end))
    return [None if p is None else replace(p, confidence=float(np.exp(p.span_score - total.start - total.end)),
                                           no_answer=no_answer) for p in predictions]


def heading_prefix(heading: str) -> str:
    """What the reader reads before a passage's text: "heading. " ("" without one); training
    (build_tools.train_reader --heading-share) writes its titles the same way."""
    return f"{heading}. " if heading else ""


class Reader:
    """Owns one ORT session; maps (question, context) pairs to their best spans. Windowing and
    threads come from the reader's config section."""

    def __init__(self, model: ModelDir | Path, config: ReaderConfig, onnx_name: str | None = None):
        self.files = ModelDir.open(model)  # the verified model directory
        self.model_dir, self.manifest = self.files.path, self.files.manifest
        self.tokenizer = load_tokenizer(self.files.file("tokenizer"))
        self.session = self.files.session(config.threads, onnx_name)
        self.use_settings(config)

    def use_settings(self, config: ReaderConfig) -> None:
        """Windowing, span length and how scores and headings are read, from the config section."""
        self.max_length, self.stride, self.max_answer_tokens = config.max_length, config.stride, config.max_answer_tokens
        self.shared_norm, self.read_headings = config.shared_norm, config.read_headings

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 1,
                headings: list[str] | None = None) -> list[SpanPrediction | None]:
        """Best span for every pair (None when no window has a context token). With shared
        normalisation the span with the highest logits of all the pair's windows, its confidence
        normalised over them all. One window per model run by default: the int8 model quantises
        activations over each run, so windows sharing a run (and its padding) shift each other's
        scores, and 6% of KB answers changed with what else was read. Read alone, a passage scores
        the same whatever else the box reads (what lets the pipeline skip passages that cannot
        answer); evaluations of the model alone batch for speed. ``headings``: one per pair, read
        in front of its context ("heading. context") but never answered from; offsets stay the
        context's."""
        prefixes, per_pair = self.windows(pairs, headings)
        breaks = [line_breaks(prefix + context) for prefix, (_, context) in zip(prefixes, pairs)]
        windows = [(p, w) for p, ws in enumerate(per_pair) for w in ws]
        best: list[SpanPrediction | None] = [None] * len(pairs)
        partitions: list[Partition | None] = [None] * len(pairs)
        order = sorted(range(len(windows)), key=lambda k: len(windows[k][1]))
        for b in range(0, len(order), batch_size):
            batch = [windows[k] for k in order[b : b + batch_size]]
            starts, ends = self._run([w for _, w in batch])
            for (pair, window), s_logits, e_logits in zip(batch, starts, ends):
                skip = len(prefixes[pair])
                lines = token_lines(window, breaks[pair]) if len(breaks[pair]) else None
                found = best_span(s_logits, e_logits, window, self.max_answer_tokens, skip, lines)
                if found is None:
                    continue
                known = partitions[pair]
                partitions[pair] = found.partition if known is None else known.plus(found.partition)
                current = best[pair]
                if current is None or self._better(found, current):
                    start_char = window.context_offsets[found.start][0] - skip
                    end_char = window.context_offsets[found.end][1] - skip
                    text = pairs[pair][1][start_char:end_char]
                    best[pair] = SpanPrediction(pair, start_char, end_char, text, found.confidence, found.no_answer,
                                                found.span_score, found.null_score, found.runner_up)
        best = [None if b is None else replace(b, partition=partitions[b.pair]) for b in best]
        return [shared_confidences([b])[0] for b in best] if self.shared_norm else best

    def windows(self, pairs: list[tuple[str, str]],
                headings: list[str] | None = None) -> tuple[list[str], list[list[Window]]]:
        """What the model reads of each pair: the heading prefix put before its context ("" when
        none) and its windows of question + prefix + context."""
        if headings is not None and len(headings) != len(pairs):
            raise ValueError(f"{len(headings)} headings for {len(pairs)} passages")
        prefixes = [heading_prefix(h) for h in headings] if headings else [""] * len(pairs)
        read = [(q, prefix + c) for (q, c), prefix in zip(pairs, prefixes)]
        return prefixes, make_windows(self.tokenizer, read, self.max_length, self.stride)

    def _better(self, found: WindowSpan, current: SpanPrediction) -> bool:
        if self.shared_norm:
            return found.span_score > current.span_score
        return found.confidence > current.confidence

    def _run(self, windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(w) for w in windows)
        ids = np.zeros((len(windows), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, w in enumerate(windows):
            ids[row, : len(w)], types[row, : len(w)], mask[row, : len(w)] = w.input_ids, w.token_type_ids, 1
        start, end = self.session.run(["start_logits", "end_logits"],
                                      {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return start, end
