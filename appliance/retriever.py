"""Hybrid retrieval: dense (int8 MiniLM + faiss) and BM25 ranks fused by reciprocal rank."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from appliance.bm25 import BM25
from appliance.config import RetrieverConfig
from appliance.encoder import SentenceEncoder


_DEFAULTS = RetrieverConfig()


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


class Retriever:
    def __init__(self, encoder: SentenceEncoder, dense: faiss.Index, bm25: BM25, mode: str = _DEFAULTS.mode,
                 candidates: int = _DEFAULTS.candidates, rrf_k: int = _DEFAULTS.rrf_k,
                 dense_weight: float = _DEFAULTS.dense_weight):
        """Defaults are the shipped configuration's (RetrieverConfig), so whatever builds a
        Retriever without naming a setting measures what the appliance runs."""
        if mode not in {"hybrid", "dense", "bm25"}:
            raise ValueError(f"retriever mode must be hybrid, dense or bm25, not {mode!r}")
        self.encoder, self.dense, self.bm25 = encoder, dense, bm25
        self.mode, self.candidates, self.rrf_k, self.dense_weight = mode, candidates, rrf_k, dense_weight

    def dense_rankings(self, questions: list[str], k: int) -> list[list[int]]:
        vectors = self.encoder.encode(questions)
        _, ids = self.dense.search(vectors, min(k, self.dense.ntotal))
        return [[int(i) for i in row if i >= 0] for row in ids]

    def search(self, question: str, top_k: int) -> list[Hit]:
        k = max(self.candidates, top_k)
        vector = self.encoder.encode([question])
        if self.mode == "bm25":
            return self._with_cosines(vector, [(i, 0.0) for i in self.bm25.search(question, top_k)])
        _, ids = self.dense.search(vector, min(k, self.dense.ntotal))
        dense = [int(i) for i in ids[0] if i >= 0]
        if self.mode == "dense":
            return self._with_cosines(vector, [(i, 0.0) for i in dense[:top_k]])
        fused = reciprocal_rank_fusion([dense, self.bm25.search(question, k)], self.rrf_k, [self.dense_weight, 1.0])
        return self._with_cosines(vector, fused[:top_k])

    def _with_cosines(self, vector: np.ndarray, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        passages = np.stack([self.dense.reconstruct(i) for i, _ in ranked])
        cosines = passages @ vector[0]
        return [Hit(i, s, float(c)) for (i, s), c in zip(ranked, cosines)]
