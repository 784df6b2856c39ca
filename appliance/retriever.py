"""Hybrid retrieval: dense (int8 MiniLM + faiss) and BM25 ranks fused by reciprocal rank."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import faiss
import numpy as np

from appliance.bm25 import BM25
from appliance.config import RetrieverConfig
from appliance.encoder import SentenceEncoder

MODES = ("hybrid", "dense", "bm25")
FUSIONS = ("rrf", "convex")


class Searchable(Protocol):
    """What retrieval needs of an index: an index version, or vectors and BM25 built in memory."""

    dense: faiss.Index
    bm25: BM25
    sentences: SentenceVectors | None


@dataclass(frozen=True)
class SentenceVectors:
    """Each passage's sentences, embedded after its heading path: a question about one detail of a
    long passage is nearer to the sentence that holds it than to the whole passage's average."""

    dense: faiss.Index
    owner: np.ndarray  # int64, the passage of each sentence vector

    @cached_property
    def counts(self) -> np.ndarray:
        """Sentence vectors per passage (0 for a passage of one sentence; passages after the last
        one with sentence vectors are not listed)."""
        return np.bincount(self.owner) if len(self.owner) else np.zeros(0, dtype=np.int64)

    @cached_property
    def most_per_passage(self) -> int:
        return int(self.counts.max()) if len(self.counts) else 0

    def rows(self, passage: int) -> np.ndarray:
        """The sentence vectors of one passage (none for a passage of one sentence)."""
        lo, hi = np.searchsorted(self._by_owner[1], [passage, passage + 1])
        return self._by_owner[0][lo:hi]

    @cached_property
    def _by_owner(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.owner, kind="stable")
        return order, self.owner[order]

    @cached_property
    def log_counts(self) -> np.ndarray:
        """ln(sentences) per passage: the best of n sentences beats its passage more often the larger n
        is, so a catch-all section of many short sentences wins questions by chance alone."""
        return np.log(np.maximum(self.counts, 1)).astype(np.float32)


@dataclass(frozen=True)
class SearchIndex:
    """Passages indexed in memory (evaluations over a SQuAD file's paragraphs)."""

    dense: faiss.Index
    bm25: BM25
    sentences: SentenceVectors | None = None


@dataclass(frozen=True)
class Hit:
    index: int  # position in the passage list
    score: float  # fused RRF score (or the single ranker's score)
    dense: float = 0.0  # cosine of question and passage: low for questions the KB does not cover


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60,
                           weights: list[float] | None = None) -> list[tuple[int, float]]:
    """Cormack et al. 2009: score(d) = sum over rankers of weight / (k + rank)."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, doc in enumerate(ranking, 1):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def convex_fusion(dense: dict[int, float], bm25: dict[int, float], dense_share: float) -> list[tuple[int, float]]:
    """Bruch et al. 2023: each ranker's scores over its best for the question (the lowest possible
    taken as 0), mixed as dense_share · dense + (1 − dense_share) · BM25. Unlike rank fusion it keeps
    how far ahead a passage is. Both dicts score the same passages (0 where BM25 shares no term)."""
    top_dense, top_bm25 = max(dense.values(), default=0.0), max(bm25.values(), default=0.0)
    scale_dense = dense_share / top_dense if top_dense > 0 else 0.0
    scale_bm25 = (1.0 - dense_share) / top_bm25 if top_bm25 > 0 else 0.0
    scores = {p: scale_dense * dense[p] + scale_bm25 * bm25.get(p, 0.0) for p in dense}
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


class Retriever:
    def __init__(self, encoder: SentenceEncoder, index: Searchable, config: RetrieverConfig):
        """Settings come from the config section only, so whatever builds a Retriever from the
        shipped configuration measures what the appliance runs."""
        if config.mode not in MODES:
            raise ValueError(f"retriever mode must be hybrid, dense or bm25, not {config.mode!r}")
        if config.fusion not in FUSIONS:
            raise ValueError(f"retriever fusion must be rrf or convex, not {config.fusion!r}")
        self.encoder, self.dense, self.bm25, self.config = encoder, index.dense, index.bm25, config
        self.sentences = index.sentences if config.sentence_vectors else None
        self.mode, self.candidates, self.rrf_k, self.dense_weight = (config.mode, config.candidates, config.rrf_k,
                                                                     config.dense_weight)

    def dense_rankings(self, questions: list[str], k: int) -> list[list[int]]:
        """Each question encoded alone, as ``search`` does: the int8 encoder quantises activations
        per batch, so a batch of questions would rank some passages differently from the box."""
        if not questions:
            return []
        return [self.dense_ranking(self.encoder.encode([q]), k) for q in questions]

    def dense_ranking(self, vector: np.ndarray, k: int) -> list[int]:
        return list(self._dense_scores(vector, k))

    def _dense_scores(self, vector: np.ndarray, k: int) -> dict[int, float]:
        """The ``k`` passages of highest cosine, best first; with sentence vectors a passage also gains the share
        ``sentence_weight`` of its best sentence's lead over itself, the sentence's cosine less
        ``sentence_count_penalty`` × ln(its passage's sentences) (weight 1 and no penalty: the better
        of the two, then exact, since any passage outside both searches scores below the k-th of each)."""
        own, best_sentence = self._searches(vector, k)
        for passage in best_sentence.keys() - own.keys():
            own[passage] = float(self.dense.reconstruct(passage) @ vector[0])
        score = {p: self._with_sentence(p, c, best_sentence.get(p)) for p, c in own.items()}
        return {p: score[p] for p in sorted(score, key=lambda p: (-score[p], p))[:k]}

    def _searches(self, vector: np.ndarray, k: int) -> tuple[dict[int, float], dict[int, float]]:
        """The cosines of the ``k`` nearest passages (best first), and the best cosine among the
        nearest sentences of each passage they belong to (none without sentence vectors)."""
        own = self._nearest_passages(vector, k)
        if not self._has_sentences:
            return own, {}
        return own, self._best_sentences(vector, self._sentence_depth(k))[0]

    @property
    def _has_sentences(self) -> bool:
        return self.sentences is not None and self.sentences.dense.ntotal > 0

    def _sentence_depth(self, k: int) -> int:
        """Enough nearest sentences that ``k`` passages are likely among their owners."""
        return min(k * self.sentences.most_per_passage, self.sentences.dense.ntotal)

    def _nearest_passages(self, vector: np.ndarray, k: int) -> dict[int, float]:
        scores, ids = self.dense.search(vector, min(k, self.dense.ntotal))
        return {int(i): float(s) for s, i in zip(scores[0], ids[0]) if i >= 0}

    def _best_sentences(self, vector: np.ndarray, depth: int) -> tuple[dict[int, float], float]:
        """The best cosine of each passage among the ``depth`` nearest sentences, and the cosine of
        the last of them (no passage left out has a sentence nearer than that)."""
        cosines, rows = self.sentences.dense.search(vector, depth)
        best: dict[int, float] = {}
        for cosine, row in zip(cosines[0], rows[0]):
            if row >= 0:
                passage = int(self.sentences.owner[row])
                best[passage] = max(best.get(passage, -2.0), float(cosine))
        return best, float(cosines[0][-1])

    def separate_rankings(self, vector: np.ndarray, k: int) -> tuple[list[int], list[int]]:
        """The passage vectors' ranking alone, and the sentences' own: each passage at its best
        sentence's cosine less the count penalty, a passage of one sentence (no sentence vectors) at
        its own cosine. Rank fusion takes them as two lists when ``sentence_list_weight`` > 0."""
        own = self._nearest_passages(vector, k)
        score = self._penalised_sentences(vector, k)
        singles, ids = self._single_sentence_passages
        if ids.size:
            cosines, rows = singles.search(vector, min(k, singles.ntotal))
            score.update((int(ids[r]), float(c)) for c, r in zip(cosines[0], rows[0]) if r >= 0)
        return list(own), sorted(score, key=lambda p: (-score[p], p))[:k]

    def _penalised_sentences(self, vector: np.ndarray, k: int) -> dict[int, float]:
        """Each passage of several sentences at its best sentence's cosine less the count penalty,
        for at least the ``k`` best of them. The nearest sentences are searched deeper until no
        passage left out could score above the ``k``-th: its best sentence is no nearer than the last
        one found, and its penalty is at least that of two sentences."""
        if not self._has_sentences:
            return {}
        units, penalty = self.sentences, self.config.sentence_count_penalty
        depth = self._sentence_depth(k)
        while True:
            best, last = self._best_sentences(vector, depth)
            score = {p: c - penalty * float(units.log_counts[p]) for p, c in best.items()}
            kth = sorted(score.values(), reverse=True)[k - 1] if len(score) >= k else -np.inf
            if depth >= units.dense.ntotal or kth > last - penalty * np.log(2):
                return score
            depth = min(2 * depth, units.dense.ntotal)

    @cached_property
    def _single_sentence_passages(self) -> tuple[faiss.Index, np.ndarray]:
        """The passages without sentence vectors (one sentence: their vector is their sentence's),
        searched on their own so the sentence list holds each of them at its cosine."""
        counts = np.zeros(self.dense.ntotal, dtype=np.int64)
        if self.sentences is not None:
            counts[: len(self.sentences.counts)] = self.sentences.counts
        ids = np.flatnonzero(counts == 0)
        singles = faiss.IndexFlatIP(self.dense.d)
        if ids.size:
            singles.add(np.stack([self.dense.reconstruct(int(i)) for i in ids]))
        return singles, ids

    def _sentence_list(self) -> bool:
        return self.sentences is not None and self.config.sentence_list_weight > 0

    def _with_sentence(self, passage: int, cosine: float, best_sentence: float | None) -> float:
        """A passage's dense score: its cosine plus the share of its best sentence's penalised lead."""
        if best_sentence is None or self.sentences is None:
            return cosine
        lead = best_sentence - self.config.sentence_count_penalty * float(self.sentences.log_counts[passage]) - cosine
        return cosine + self.config.sentence_weight * max(0.0, lead)

    def _dense_score(self, vector: np.ndarray, passage: int) -> float:
        """One passage's dense score computed in full (a passage that only BM25 found)."""
        cosine = float(self.dense.reconstruct(passage) @ vector[0])
        rows = self.sentences.rows(passage) if self.sentences is not None else ()
        best = max((float(self.sentences.dense.reconstruct(int(r)) @ vector[0]) for r in rows), default=None)
        return self._with_sentence(passage, cosine, best)

    def candidate_scores(self, vector: np.ndarray, question: str, k: int) -> tuple[dict[int, float], dict[int, float]]:
        """Dense and BM25 scores of every passage either ranker puts in its first ``k`` (what convex
        fusion weighs): a passage one ranker missed gets that ranker's score all the same."""
        dense = self._dense_scores(vector, k)
        bm25 = self.bm25.scores(question)
        for passage in set(BM25.best(bm25, k)) - dense.keys():
            dense[passage] = self._dense_score(vector, passage)
        return dense, {p: float(bm25[p]) for p in dense}

    def search(self, question: str, top_k: int | None = None) -> list[Hit]:
        """The ``top_k`` best passages (``retriever.top_k`` unless the caller asks for more or fewer)."""
        top_k = top_k or self.config.top_k
        k = max(self.candidates, top_k)
        vector = self.encoder.encode([question])
        if self.mode == "bm25":
            return self._with_cosines(vector, [(i, 0.0) for i in self.bm25.search(question, top_k)])
        if self.mode == "dense":
            return self._with_cosines(vector, [(i, 0.0) for i in self.dense_ranking(vector, k)[:top_k]])
        if self.config.fusion == "convex":
            fused = convex_fusion(*self.candidate_scores(vector, question, k), self.config.convex_dense_share)
        elif self._sentence_list():
            passages, sentences = self.separate_rankings(vector, k)
            fused = reciprocal_rank_fusion([passages, sentences, self.bm25.search(question, k)], self.rrf_k,
                                           [self.dense_weight, self.config.sentence_list_weight, 1.0])
        else:
            fused = reciprocal_rank_fusion([self.dense_ranking(vector, k), self.bm25.search(question, k)], self.rrf_k,
                                           [self.dense_weight, 1.0])
        return self._with_cosines(vector, fused[:top_k])

    def _with_cosines(self, vector: np.ndarray, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        passages = np.stack([self.dense.reconstruct(i) for i, _ in ranked])
        cosines = passages @ vector[0]
        return [Hit(i, s, float(c)) for (i, s), c in zip(ranked, cosines)]
