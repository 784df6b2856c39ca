"""Calibrated abstention: the probability that an answer is right, from features of the reader's
spans and of retrieval (Kamath et al. 2020, "Selective Question Answering under Domain Shift":
such a calibrator beats the reader's own probability when the questions differ from training).

A logistic regression in numpy over standardised features, stored as JSON beside the reader
(manifest role "calibrator"); fitted by `python -m build_tools calibrate` on tune data only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.bm25 import tokenize
from appliance.errors import ModelError
from appliance.reader import SpanPrediction

FEATURES = ("log_confidence", "log_no_answer", "margin", "runner_up_gap", "agreeing_passages", "rank",
            "dense_cosine", "top_dense_cosine", "question_overlap", "answer_words")
FORMAT = "appliance-calibrator/1"


def _same_answer(a: str, b: str) -> bool:
    a, b = " ".join(a.lower().split()), " ".join(b.lower().split())
    return bool(a and b) and (a in b or b in a)


def question_overlap(question: str, evidence: str) -> float:
    """Share of the question's content words found in the evidence sentence."""
    words = set(tokenize(question))
    return len(words & set(tokenize(evidence))) / len(words) if words else 0.0


def candidate_features(question: str, predictions: list[SpanPrediction | None], cosines: list[float],
                       evidences: list[str]) -> list[dict[str, float] | None]:
    """One feature row per passage's best span (None where the passage gave no span)."""
    top_cosine = max(cosines, default=0.0)
    rows: list[dict[str, float] | None] = []
    for rank, pred in enumerate(predictions):
        if pred is None:
            rows.append(None)
            continue
        agreeing = sum(1 for other in predictions if other is not None and other is not pred
                       and _same_answer(other.text, pred.text))
        rows.append({
            "log_confidence": math.log(max(pred.confidence, 1e-9)),
            "log_no_answer": math.log(max(pred.no_answer, 1e-9)),
            "margin": pred.span_score - pred.null_score,
            "runner_up_gap": min(math.log(max(pred.confidence, 1e-9)) - math.log(max(pred.runner_up, 1e-9)), 20.0),
            "agreeing_passages": float(agreeing),
            "rank": float(rank),
            "dense_cosine": cosines[rank] if rank < len(cosines) else 0.0,
            "top_dense_cosine": top_cosine,
            "question_overlap": question_overlap(question, evidences[rank]),
            "answer_words": float(min(len(pred.text.split()), 30)),
        })
    return rows


@dataclass(frozen=True)
class Calibrator:
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float  # the operating point chosen on tune data
    about: dict  # what it was fitted on, and how

    def probability(self, row: dict[str, float]) -> float:
        x = (np.array([row[name] for name in self.features]) - self.mean) / self.scale
        return float(1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias))))

    def to_json(self) -> dict:
        return {"format": FORMAT, "features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(), "bias": self.bias,
                "threshold": self.threshold, "about": self.about}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, data: dict, where: str = "calibrator") -> Calibrator:
        """Validate everything: a wrong calibrator would silently answer when it should not."""
        try:
            if data["format"] != FORMAT:
                raise ValueError(f"format is {data['format']!r}, expected {FORMAT!r}")
            features = tuple(data["features"])
            unknown = set(features) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown features {sorted(unknown)}")
            arrays = [np.asarray(data[key], dtype=np.float64) for key in ("mean", "scale", "weights")]
            if any(a.shape != (len(features),) for a in arrays):
                raise ValueError("mean, scale and weights must each have one number per feature")
            bias, threshold = float(data["bias"]), float(data["threshold"])
            if not all(np.isfinite(a).all() for a in arrays) or not math.isfinite(bias) or (arrays[1] <= 0).any():
                raise ValueError("non-finite numbers or a non-positive scale")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold {threshold} is not a probability")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: not a valid calibrator ({exc})") from None
        return cls(features, arrays[0], arrays[1], arrays[2], bias, threshold, dict(data.get("about", {})))

    @classmethod
    def load(cls, path: Path) -> Calibrator:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{path}: calibrator unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: not a valid calibrator (not a JSON object)")
        return cls.from_json(data, str(path))
