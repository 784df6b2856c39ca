"""Fit the reader's abstention calibrator on tune data only, choose its threshold there, then
report on the test splits (KB, FDA labels, SQuAD 2.0 dev-half held-out articles) with a
risk–coverage plot.

Tune: the KB questions of split "tune" (every passage's span is a training row, so the
calibrator also learns which passage to answer from) and SQuAD 2.0 dev-half articles 0–7.
Test: the KB and FDA questions of split "test" and SQuAD 2.0 dev-half articles 8–15.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from appliance import runtime
from appliance.calibrator import FEATURES, Calibrator
from appliance.config import Config, load_config
from appliance.model_dir import MANIFEST, sha256_file
from appliance.pipeline import QAPipeline, choice_score
from build_tools.evaluate_reader import select_articles
from build_tools.manifest import invocation
from build_tools.paths import PROJECT_ROOT, SHARED_DATA, SQUAD_DIR
from build_tools.selective import Record, kb_records, load_questions, plot_risk_coverage, squad_records, summary
from build_tools.squad import load_squad

KB_QUESTIONS = PROJECT_ROOT / "tests" / "data" / "kb_eval.json"
FDA_QUESTIONS = PROJECT_ROOT / "tests" / "data" / "fda_eval.json"
FDA_LABELS = SHARED_DATA / "kb" / "fda-spl"
SQUAD2 = SQUAD_DIR / "dev-v2.0-half-16-articles.json"


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float = 1.0,
                 iterations: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Weighted L2-regularised logistic regression by Newton's method on standardised features:
    (mean, scale, coefficients, bias)."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    beta = np.zeros(z.shape[1])
    ridge = np.full(z.shape[1], l2)
    ridge[-1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(z @ beta)))
        grad = z.T @ (weights * (p - y)) + ridge * beta
        hessian = (z * (weights * p * (1 - p))[:, None]).T @ z + np.diag(ridge)
        update = np.linalg.solve(hessian, grad)
        beta -= update
        if np.abs(update).max() < 1e-8:
            break
    return mean, scale, beta[:-1], float(beta[-1])


def chosen(record: Record, rank_weight: float) -> int | None:
    """The candidate the pipeline answers with (pipeline.choice_score, from the same features)."""
    if not record.rows:
        return None
    scores = [choice_score(math.exp(row["log_confidence"]), int(row["rank"]), rank_weight) for row in record.rows]
    return int(np.argmax(scores))


def decided(records: list[Record], rank_weight: float, probability) -> list[Record]:
    """The records as the box decides them: the chosen span, with ``probability(row)`` of it."""
    out = []
    for r in records:
        best = chosen(r, rank_weight)
        out.append(r if best is None else dataclasses.replace(r, probability=probability(r.rows[best]),
                                                              right=bool(r.labels[best])))
    return out


def rescore(records: list[Record], calibrator: Calibrator, rank_weight: float) -> list[Record]:
    """The records as the box would decide them with this calibrator."""
    return decided(records, rank_weight, calibrator.probability)


CHOICE_RULES = {  # how to pick the passage to answer from, scored from the calibrator's features
    "window confidence / rank^2 (shipped)": lambda row: row["log_confidence"] - 2 * math.log(row["rank"] + 1),
    "window confidence": lambda row: row["log_confidence"],
    "span minus null logit": lambda row: row["margin"],
}


def as_chosen_by_score(records: list[Record], rank_weight: float) -> list[Record]:
    """The records decided without a calibrator: the choice score itself is the probability."""
    return decided(records, rank_weight,
                   lambda row: choice_score(math.exp(row["log_confidence"]), int(row["rank"]), rank_weight))


def passage_choice(records: list[Record], calibrator: Calibrator) -> dict[str, float]:
    """Share of answerable questions answered right when always answering, per choice rule."""
    rules = {**CHOICE_RULES, "calibrated probability": calibrator.probability}
    answerable = [r for r in records if r.kind == "answerable" and r.rows]
    return {name: round(sum(r.labels[max(range(len(r.rows)), key=lambda i: rule(r.rows[i]))] for r in answerable)
                        / max(len(answerable), 1), 4) for name, rule in rules.items()}


def utility(records: list[Record], threshold: float, cost: float) -> float:
    """Per question: +1 right answer, -cost wrong answer, 0 for "I don't know"."""
    answered = [r for r in records if r.probability >= threshold]
    return (sum(r.right for r in answered) - cost * sum(not r.right for r in answered)) / max(len(records), 1)


def choose_threshold(tune_sets: list[list[Record]], cost: float) -> float:
    grid = np.round(np.arange(0.01, 0.96, 0.01), 2)
    scores = [np.mean([utility(s, t, cost) for s in tune_sets]) for t in grid]
    return float(grid[int(np.argmax(scores))])


def rule_at_tune_threshold(baseline: dict[str, list[Record]], cost: float) -> dict:
    """The shipped rule (no calibrator) with its threshold chosen on the tune sets by the same
    utility, reported on the test sets: whether the configured threshold still suits the reader."""
    tune = {name: records for name, records in baseline.items() if name.endswith("tune")}
    threshold = choose_threshold(list(tune.values()), cost)
    return {"threshold": threshold, "cost": cost,
            "each_tune_set_alone": {name: choose_threshold([records], cost) for name, records in tune.items()},
            **{name: summary(records, threshold) for name, records in baseline.items() if name.endswith("test")}}


def training_rows(record_sets: list[tuple[list[Record], float]]):
    x, y, w = [], [], []
    for records, weight in record_sets:
        rows = [(row, label) for r in records for row, label in zip(r.rows, r.labels)]
        for row, label in rows:
            x.append([row[f] for f in FEATURES])
            y.append(label)
            w.append(weight / max(len(rows), 1))  # each set counts as much as its weight, whatever its size
    return np.array(x), np.array(y, dtype=float), np.array(w) * len(x)


def register_calibrator(model_dir: Path, calibrator: Calibrator) -> None:
    """Write calibrator.json beside the reader and list it (sha256) in the reader's manifest."""
    path = model_dir / "calibrator.json"
    calibrator.save(path)
    manifest_path = model_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["roles"]["calibrator"] = path.name
    manifest["files"][path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def fda_pipeline(config: Config, index_root: Path) -> QAPipeline | None:
    if not FDA_LABELS.is_dir():
        return None
    return runtime.load_pipeline(config, kb=FDA_LABELS, index=index_root / "fda-index")


def collect(args, config: Config) -> dict[str, list[Record]]:
    """Every record the fit and the report need, straight from the appliance's pipeline (slow:
    minutes), or from --cache when it was collected before with the same models."""
    if args.cache and args.cache.exists():
        data = json.loads(args.cache.read_text(encoding="utf-8"))
        return {name: [Record(**r) for r in records] for name, records in data.items()}
    squad = load_squad(args.squad)  # first: a wrong path is reported before minutes of loading
    pipeline = runtime.load_pipeline(config)
    pipeline.calibrator = None  # features do not depend on it; the fitted one is applied by rescore
    sets = {"KB tune": kb_records(pipeline, load_questions(args.kb_questions, "tune"), "KB tune"),
            "KB test": kb_records(pipeline, load_questions(args.kb_questions, "test"), "KB test"),
            "SQuAD 2.0 tune": squad_records(pipeline, select_articles(squad, args.tune_articles), "SQuAD 2.0 tune"),
            "SQuAD 2.0 test": squad_records(pipeline, select_articles(squad, args.test_articles), "SQuAD 2.0 test")}
    with tempfile.TemporaryDirectory() as tmp:
        fda = fda_pipeline(config, Path(tmp))
        if fda is not None and FDA_QUESTIONS.exists():
            fda.calibrator = None
            sets["FDA tune"] = kb_records(fda, load_questions(FDA_QUESTIONS, "tune"), "FDA tune")
            sets["FDA test"] = kb_records(fda, load_questions(FDA_QUESTIONS, "test"), "FDA test")
    if args.cache:
        args.cache.write_text(json.dumps({name: [dataclasses.asdict(r) for r in records]
                                          for name, records in sets.items()}), encoding="utf-8")
    return sets


def fit(tune: dict[str, list[Record]], kb_weight: float, l2: float, rank_weight: float, about: dict) -> Calibrator:
    """Fitted on the spans the box answers with (one per question), so its probabilities describe
    the answers it actually gives."""
    weights = {name: (kb_weight if not name.startswith("SQuAD") else 1.0) for name in tune}
    sets = []
    for name, records in tune.items():
        picks = [(r, chosen(r, rank_weight)) for r in records]
        sets.append(([dataclasses.replace(r, rows=[r.rows[b]], labels=[r.labels[b]]) for r, b in picks if b is not None],
                     weights[name]))
    x, y, w = training_rows(sets)
    about.update(rows=len(x), positive_rows=int(y.sum()), l2=l2, kb_weight=kb_weight)
    return Calibrator(FEATURES, *fit_logistic(x, y, w, l2), 0.5, about)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools calibrate", description=__doc__)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--kb-questions", type=Path, default=KB_QUESTIONS)
    p.add_argument("--squad", type=Path, default=SQUAD2)
    p.add_argument("--tune-articles", default="0:8")
    p.add_argument("--test-articles", default="8:")
    p.add_argument("--kb-weight", type=float, default=1.0, help="weight of each KB-style tune set against SQuAD's")
    p.add_argument("--cost", type=float, default=2.0, help="a wrong answer costs this many right ones")
    p.add_argument("--l2", type=float, default=1.0)
    p.add_argument("--cache", type=Path, default=None, help="keep/reuse the collected records (same models only)")
    p.add_argument("--write", action="store_true", help="store the calibrator beside the reader")
    p.add_argument("--plot", default=str(PROJECT_ROOT / "docs" / "risk-coverage.png"), help="'' = no plot")
    args = p.parse_args(argv)
    config = load_config(args.config) if args.config else Config()
    sets = collect(args, config)
    tune = {name: records for name, records in sets.items() if name.endswith("tune")}
    test = {name: records for name, records in sets.items() if name.endswith("test")}
    about = {"fitted_on": {name: len(records) for name, records in tune.items()},
             "threshold_rule": f"maximises mean utility over the tune sets: +1 right, -{args.cost} wrong, 0 abstain",
             "command": invocation()}
    rank_weight = config.reader.rank_weight
    calibrator = fit(tune, args.kb_weight, args.l2, rank_weight, about)
    tune = {name: rescore(records, calibrator, rank_weight) for name, records in tune.items()}
    threshold = choose_threshold(list(tune.values()), args.cost)
    about["checks"] = [{"features": row, "probability": calibrator.probability(row)}
                       for records in tune.values() for r in records[:4] for row in r.rows[:1]]
    calibrator = dataclasses.replace(calibrator, threshold=threshold)
    baseline = {name: as_chosen_by_score(records, rank_weight) for name, records in {**tune, **test}.items()}
    test = {name: rescore(records, calibrator, rank_weight) for name, records in test.items()}
    result = {"threshold": threshold, "weights": dict(zip(FEATURES, np.round(calibrator.weights, 3).tolist())),
              "tune": {name: summary(records, threshold) for name, records in tune.items()},
              "tune_at_other_costs": {str(c): {name: summary(records, t)["answers_given_right"]
                                               for name, records in tune.items()} | {"threshold": t}
                                      for c in (1.0, 2.0, 3.0) for t in [choose_threshold(list(tune.values()), c)]},
              "test": {name: summary(records, threshold) for name, records in test.items()},
              "without_calibrator": {name: summary(records, config.reader.threshold) for name, records in baseline.items()},
              "rule_at_tune_threshold": {str(c): rule_at_tune_threshold(baseline, c) for c in (1.0, 2.0, 4.0, 9.0)},
              "calibrator_improves_tune_auc": {name: summary(tune[name], threshold)["risk_coverage_auc"]
                                               > summary(baseline[name], 0.5)["risk_coverage_auc"] for name in tune},
              "passage_choice_on_test": {name: passage_choice(records, calibrator) for name, records in test.items()
                                         if not name.startswith("SQuAD")}}
    if args.plot:
        curves = {**{f"{name} (calibrated)": records for name, records in test.items()},
                  **{f"{name} (choice score)": baseline[name] for name in test}}
        plot_risk_coverage(curves, Path(args.plot), {f"{name} (calibrated)": threshold for name in test}
                           | {f"{name} (choice score)": config.reader.threshold for name in test})
        result["plot"] = str(args.plot)
    if args.write:
        register_calibrator(config.resolve(config.paths.reader_model), calibrator)
        result["written"] = str(config.resolve(config.paths.reader_model) / "calibrator.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
