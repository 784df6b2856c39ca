"""A small BM25 (Okapi) lexical index: exact names and codes ("E02", "amoxicillin") that a
dense encoder blurs are what it finds best."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "my", "of", "on", "or", "should", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "was", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your"]
)


# Raised whenever tokenize changes the terms an index holds, so older indexes are rebuilt
# (2: contractions and possessives split, typographic apostrophes read as ASCII ones).
TOKENS_VERSION = 2
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_CLITIC = re.compile(r"'(?:s|m|re|ll|ve|d)$")
_IRREGULAR_NEGATIONS = {"can't": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"),
                        "ain't": ("not",)}


def _words(token: str) -> tuple[str, ...]:
    """Spoken questions are full of contractions a manual spells out: "oven's" must meet "oven",
    "don't" must meet "do not", and "what's" must not match only the passages that say "what's"."""
    if token in _IRREGULAR_NEGATIONS:
        return _IRREGULAR_NEGATIONS[token]
    if token.endswith("n't"):
        return token[:-3], "not"
    return (_CLITIC.sub("", token),)


def tokenize(text: str) -> list[str]:
    words = (w for t in _TOKEN.findall(text.lower().translate(_APOSTROPHES)) for w in _words(t))
    return [w for w in words if w not in STOPWORDS]


def first_terms(text: str) -> list[str]:
    """The terms of TOKENS_VERSION 1 (contractions kept whole, ’ not read as '), for whatever must
    stay as it was made with them."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    def __init__(self, postings: dict[str, dict[int, int]], doc_lengths: list[int], k1: float = 1.2, b: float = 0.75,
                 terms: Callable[[str], list[str]] = tokenize):
        self.terms = terms  # how texts and queries become terms; an index on disk always uses tokenize
        self.postings = postings
        self.doc_lengths = np.asarray(doc_lengths, dtype=np.float32)
        self.k1, self.b = k1, b
        n = max(len(doc_lengths), 1)
        self.avg_length = float(self.doc_lengths.mean()) if len(doc_lengths) else 1.0
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in postings.items()}

    @classmethod
    def build(cls, texts: list[str], terms: Callable[[str], list[str]] = tokenize) -> BM25:
        postings: dict[str, dict[int, int]] = {}
        lengths = []
        for i, text in enumerate(texts):
            tokens = terms(text)
            lengths.append(len(tokens))
            for term, tf in Counter(tokens).items():
                postings.setdefault(term, {})[i] = tf
        return cls(postings, lengths, terms=terms)

    def scores(self, query: str) -> np.ndarray:
        scores = np.zeros(len(self.doc_lengths), dtype=np.float32)
        norm = self.k1 * (1 - self.b + self.b * self.doc_lengths / max(self.avg_length, 1e-9))
        for term in set(self.terms(query)):
            posting = self.postings.get(term)
            if not posting:
                continue
            docs = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
            tf = np.fromiter(posting.values(), dtype=np.float32, count=len(posting))
            scores[docs] += self.idf[term] * tf * (self.k1 + 1) / (tf + norm[docs])
        return scores

    def search(self, query: str, k: int) -> list[int]:
        return self.best(self.scores(query), k)

    @staticmethod
    def best(scores: np.ndarray, k: int) -> list[int]:
        """The ``k`` passages of highest score among those sharing a term with the query."""
        hits = np.flatnonzero(scores > 0)
        return hits[np.argsort(-scores[hits], kind="stable")][:k].tolist()

    def save(self, path: Path) -> None:
        data = {"k1": self.k1, "b": self.b, "doc_lengths": self.doc_lengths.astype(int).tolist(),
                "postings": {t: [[d, tf] for d, tf in p.items()] for t, p in self.postings.items()}}
        path.write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> BM25:
        data = json.loads(path.read_text(encoding="utf-8"))
        postings = {t: {d: tf for d, tf in p} for t, p in data["postings"].items()}
        return cls(postings, data["doc_lengths"], data["k1"], data["b"])
