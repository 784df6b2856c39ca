"""Selective question answering, measured: per-question records (was the chosen answer right,
with what probability), from the appliance's own pipeline for KB questions and from its reader
on single SQuAD paragraphs; risk–coverage curves and the figures the README reports.

KB question files: {"split_rule", "questions": [{"id", "question", "kind", "split", "document",
"section", "answers"}]} (tests/data/kb_eval.json); the older lists of {"question", "document",
"section", "answer"} are read as answerable questions in the test split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.calibrator import candidate_features
from appliance.pipeline import QAPipeline, Reading, evidence_sentence, text_key
from appliance.schema import Passage
from build_tools.errors import DataError, read_json
from build_tools.evaluate_reader import f1_score
from build_tools.squad import SquadExample


@dataclass
class Record:
    """One question as the box handled it."""

    qid: str
    kind: str  # answerable | unanswerable | off-topic
    probability: float  # P(right) of the chosen answer (-1: nothing to answer with)
    right: bool  # the chosen span is right (never for unanswerable/off-topic)
    sentence_right: bool = False  # its evidence sentence contains a right answer
    f1: float = 0.0
    top1: bool = False  # gold section ranked first (answerable KB questions)
    top5: bool = False
    rows: list[dict] = field(default_factory=list)  # calibrator features of every candidate
    labels: list[int] = field(default_factory=list)  # 1 where that candidate is right


def is_right(prediction: str, gold: str) -> bool:
    """A KB answer is right when it contains the gold span, or is a substantial part of it."""
    p, g = prediction.lower().strip(), gold.lower()
    return bool(p) and (g in p or (p in g and len(p) > 2))


def load_questions(path: Path, split: str | None = None) -> list[dict]:
    data = read_json(path, "KB question file")
    try:
        if isinstance(data, list):  # older format: answerable questions only
            questions = [{"id": f"{Path(path).stem}-{i}", "kind": "answerable", "split": "test",
                          "answers": [q["answer"]], **q} for i, q in enumerate(data)]
        else:
            questions = data["questions"]
        return [q for q in questions if split in (None, "all") or q["split"] == split]
    except (KeyError, TypeError) as exc:
        raise DataError(f'{path}: not a KB question file ({{"questions": [...]}} or a list of '
                        f'{{"question", "answer"}}; {exc!r})') from exc


def in_gold_section(passage: Passage, q: dict, passages: list[Passage]) -> bool:
    """The passage is in the question's section, or is a copy of a passage there (the box reads one
    copy of each text, and the copy it keeps may be in another file: a repackaged label)."""
    def gold(p: Passage) -> bool:
        return p.source == q.get("document") and p.section[-1:] == (q.get("section"),)

    return gold(passage) or any(gold(p) and text_key(p.text) == text_key(passage.text) for p in passages)


def kb_record(pipeline: QAPipeline, q: dict) -> Record:
    reading = pipeline.read(q["question"], with_features=True, every_passage=True)
    answers = q.get("answers") or []
    labels = [int(bool(p) and q["kind"] == "answerable" and any(is_right(p.text, a) for a in answers))
              for p in reading.predictions]
    gold = [in_gold_section(p, q, pipeline.index.passages) for p in reading.passages]
    best = reading.best()
    record = Record(q["id"], q["kind"], -1.0, False, top1=bool(gold[:1] and gold[0]), top5=any(gold),
                    rows=[r for r in reading.features if r is not None],
                    labels=[l for l, r in zip(labels, reading.features) if r is not None])
    if best is not None:
        pred = reading.predictions[best]
        sentence = evidence_sentence(reading.passages[best].text, pred.start, pred.end)
        record.probability = reading.probabilities[best]
        record.right = bool(labels[best])
        record.sentence_right = q["kind"] == "answerable" and any(is_right(sentence, a) for a in answers)
        record.f1 = max((f1_score(pred.text, a) for a in answers), default=0.0)
    return record


def kb_records(pipeline: QAPipeline, questions: list[dict], label: str = "KB questions") -> list[Record]:
    return [kb_record(pipeline, q) for q in tqdm(questions, desc=label, unit="q")]


def squad_records(pipeline: QAPipeline, examples: list[SquadExample], label: str = "SQuAD") -> list[Record]:
    """Each question over its own paragraph as the one passage the box retrieved."""
    records = []
    step = 64
    with tqdm(total=len(examples), desc=label, unit="q") as bar:
        for i in range(0, len(examples), step):
            part = examples[i : i + step]
            predictions = pipeline.reader.predict([(ex.question, ex.context) for ex in part], batch_size=32)
            questions = pipeline.encoder.encode([ex.question for ex in part])
            contexts = pipeline.encoder.encode([ex.context for ex in part])
            for ex, pred, qv, cv in zip(part, predictions, questions, contexts):
                records.append(_squad_record(pipeline, ex, pred, float(qv @ cv)))
            bar.update(len(part))
    return records


def _squad_record(pipeline: QAPipeline, ex: SquadExample, pred, cosine: float) -> Record:
    kind = "unanswerable" if ex.is_impossible else "answerable"
    if pred is None:
        return Record(ex.qid, kind, -1.0, False)
    evidence = evidence_sentence(ex.context, pred.start, pred.end)
    row = candidate_features(ex.question, [pred], [cosine], [evidence])[0]
    f1 = max((f1_score(pred.text, a) for a in ex.answers), default=0.0)
    right = not ex.is_impossible and f1 >= 0.5
    probability = pipeline.calibrator.probability(row) if pipeline.calibrator else pred.confidence
    return Record(ex.qid, kind, probability, right, f1=f1, rows=[row], labels=[int(right)])


def summary(records: list[Record], threshold: float) -> dict:
    """The three figures the box is held to, plus what answering always would give."""
    answerable = [r for r in records if r.kind == "answerable"]
    other = [r for r in records if r.kind != "answerable"]
    answered = [r for r in records if r.probability >= threshold]
    out = {"questions": len(records), "answerable": len(answerable), "unanswerable_or_off_topic": len(other),
           "threshold": threshold,
           "answerable_right": _share(sum(r.right and r.probability >= threshold for r in answerable), len(answerable)),
           "answers_given_right": _share(sum(r.right for r in answered), len(answered)),
           "answered": len(answered),
           "abstained_when_unanswerable": _share(sum(r.probability < threshold for r in other), len(other)),
           "right_if_always_answering": _share(sum(r.right for r in answerable), len(answerable)),
           "has_answer_f1": _share(sum(r.f1 for r in answerable if r.probability >= threshold), len(answerable)),
           "risk_coverage_auc": round(risk_coverage_auc(records), 4)}
    if any(r.sentence_right for r in answerable):  # KB questions (SQuAD records have no evidence check)
        out["sentence_right_if_always_answering"] = _share(sum(r.sentence_right for r in answerable), len(answerable))
        given = [r for r in answerable if r.probability >= threshold]
        out["answered_right_by_spoken_form"] = {"span": sum(r.right for r in given),
                                                "evidence sentence": sum(r.sentence_right for r in given),
                                                "span then sentence": sum(r.right or r.sentence_right for r in given),
                                                "of": len(given)}
    if any(len(r.labels) > 1 for r in answerable):  # every passage read: the ceiling of choosing among them
        out["right_if_best_span_chosen"] = _share(sum(any(r.labels) for r in answerable), len(answerable))
    if any(r.top5 for r in answerable):
        out["retrieval_top1"] = _share(sum(r.top1 for r in answerable), len(answerable))
        out["retrieval_top5"] = _share(sum(r.top5 for r in answerable), len(answerable))
    return out


def _share(n: float, d: int) -> float:
    return round(n / d, 4) if d else math.nan


def risk_coverage(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the answers given) when answering the most confident first;
    unanswerable questions count as wrong when answered."""
    order = sorted(records, key=lambda r: -r.probability)
    right = np.cumsum([r.right for r in order], dtype=float)
    n = np.arange(1, len(order) + 1)
    return n / max(len(order), 1), right / n


def risk_coverage_auc(records: list[Record]) -> float:
    """Mean accuracy over all coverage levels (higher is better; 1.0 = never wrong)."""
    if not records:
        return math.nan
    _, accuracy = risk_coverage(records)
    return float(accuracy.mean())


def plot_risk_coverage(curves: dict[str, list[Record]], out: Path, thresholds: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours: dict[str, str] = {}
    for label, records in curves.items():
        coverage, accuracy = risk_coverage(records)
        dataset, _, variant = label.partition(" (")  # "KB test (calibrated)": one colour per data set
        colour = colours.setdefault(dataset, f"C{len(colours)}")
        style = "--" if "choice score" in variant else "-"
        line, = ax.plot(coverage, accuracy, style, color=colour, label=f"{label} (AUC {risk_coverage_auc(records):.3f})")
        at = thresholds.get(label)
        if at is not None:
            answered = sum(r.probability >= at for r in records)
            if answered:
                ax.plot([answered / len(records)], [accuracy[answered - 1]], "o", color=line.get_color())
    ax.set_xlabel("coverage (share of questions answered)")
    ax.set_ylabel("accuracy of the answers given")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Risk–coverage (dot: operating point)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
