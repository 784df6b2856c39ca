"""The abstention calibrator: fitted in numpy, stored as JSON, refused clearly when corrupt, the
same decisions after a save/load as at fit time, and the shipped one wired to the shipped
threshold; off-topic questions are abstained on end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from appliance.calibrator import FEATURES, Calibrator, candidate_features, question_overlap
from appliance.errors import ModelError
from appliance.reader import SpanPrediction
from build_tools.calibrate import choose_threshold, fit_logistic, rescore, rule_at_tune_threshold
from build_tools.selective import Record, risk_coverage_auc, summary


def synthetic(n: int, seed: int = 0):
    """Rows where a right answer has higher confidence and more question overlap."""
    rng = np.random.default_rng(seed)
    right = rng.random(n) < 0.5
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, FEATURES.index("log_confidence")] += 2.0 * right
    x[:, FEATURES.index("question_overlap")] += 1.0 * right
    return x, right.astype(float)


def fitted(threshold: float = 0.6) -> Calibrator:
    x, y = synthetic(2000)
    mean, scale, coef, bias = fit_logistic(x, y, np.ones(len(y)))
    return Calibrator(FEATURES, mean, scale, coef, bias, threshold, {"fitted_on": "synthetic"})


def test_logistic_fit_learns_the_signal_and_is_calibrated():
    cal = fitted()
    x, y = synthetic(4000, seed=1)
    probs = np.array([cal.probability(dict(zip(FEATURES, row))) for row in x])
    assert ((probs >= 0.5) == (y == 1)).mean() > 0.8
    for lo in (0.1, 0.5, 0.8):  # among rows given ~p, about p of them are right
        band = (probs >= lo) & (probs < lo + 0.1)
        assert abs(y[band].mean() - (lo + 0.05)) < 0.1
    assert cal.weights[FEATURES.index("log_confidence")] > cal.weights[FEATURES.index("question_overlap")] > 0


def test_saved_calibrator_makes_the_same_decisions(tmp_path):
    cal = fitted()
    cal.save(tmp_path / "calibrator.json")
    loaded = Calibrator.load(tmp_path / "calibrator.json")
    x, _ = synthetic(300, seed=2)
    for row in x:
        features = dict(zip(FEATURES, row))
        assert loaded.probability(features) == pytest.approx(cal.probability(features), abs=1e-12)
        assert (loaded.probability(features) >= loaded.threshold) == (cal.probability(features) >= cal.threshold)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: "{not json", "unreadable"),
    (lambda d: {**d, "format": "other/9"}, "format"),
    (lambda d: {**d, "weights": d["weights"][:-1]}, "one number per feature"),
    (lambda d: {**d, "features": [*d["features"][:-1], "shoe_size"]}, "unknown features"),
    (lambda d: {**d, "bias": float("nan")}, "non-finite"),
    (lambda d: {**d, "scale": [0.0] * len(d["scale"])}, "non-positive scale"),
    (lambda d: {**d, "threshold": 2}, "not a probability"),
    (lambda d: [1, 2, 3], "not a JSON object"),
    (lambda d: {k: v for k, v in d.items() if k != "mean"}, "mean"),
])
def test_a_corrupt_calibrator_is_refused_with_a_clear_error(tmp_path, corrupt, message):
    data = fitted().to_json()
    bad = corrupt(data)
    path = tmp_path / "calibrator.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(ModelError, match=message):
        Calibrator.load(path)


def test_the_rules_threshold_is_chosen_on_tune_and_reported_on_test_only():
    """Tune: right answers score 0.4 and up, wrong ones below; test is shifted so that tuning on
    it would pick another threshold: the reported test figures must be at the tune choice."""
    def records(scores_right, scores_wrong, split):
        return ([Record(f"{split}r{i}", "answerable", p, True) for i, p in enumerate(scores_right)]
                + [Record(f"{split}w{i}", "unanswerable", p, False) for i, p in enumerate(scores_wrong)])
    baseline = {"KB tune": records([0.4, 0.5, 0.9], [0.1, 0.2, 0.3], "tune"),
                "KB test": records([0.2, 0.6, 0.9], [0.1], "test")}  # tuned here: 0.2
    report = rule_at_tune_threshold(baseline, cost=1.0)
    assert 0.3 < report["threshold"] <= 0.4
    assert "KB tune" not in report and report["each_tune_set_alone"]["KB tune"] == report["threshold"]
    test = report["KB test"]
    assert test["answered"] == 2 and test["answerable_right"] == round(2 / 3, 4)
    assert test["abstained_when_unanswerable"] == 1.0


def test_features_of_agreeing_passages_and_overlap():
    a = SpanPrediction(0, 0, 10, "20 minutes", 0.8, 0.01, 9.0, 1.0, 0.05)
    b = SpanPrediction(1, 5, 15, "about 20 minutes", 0.4, 0.2, 5.0, 3.0, 0.1)
    rows = candidate_features("how long to preheat the oven", [a, None, b], [0.6, 0.5, 0.4],
                              ["Preheat the oven for 20 minutes.", "", "It takes about 20 minutes."])
    assert rows[1] is None and set(rows[0]) == set(FEATURES)
    assert rows[0]["agreeing_passages"] == 1 and rows[2]["rank"] == 2
    assert rows[0]["margin"] == 8.0 and rows[0]["top_dense_cosine"] == 0.6
    assert rows[0]["runner_up_gap"] == pytest.approx(math.log(0.8 / 0.05))
    assert question_overlap("how long to preheat the oven", "Preheat the oven.") == pytest.approx(2 / 3)


def test_rescoring_answers_from_the_chosen_passage_with_its_calibrated_probability():
    cal = fitted(0.5)
    zeros = dict.fromkeys(FEATURES, 0.0)
    good = {**zeros, "log_confidence": 5.0, "question_overlap": 3.0, "rank": 1.0}
    bad = {**zeros, "log_confidence": -5.0, "question_overlap": -3.0, "rank": 0.0}
    records = [Record("q1", "answerable", 0.0, False, rows=[bad, good], labels=[0, 1]),
               Record("q2", "unanswerable", 0.0, False, rows=[bad], labels=[0])]
    rescored = rescore(records, cal, rank_weight=2.0)  # e^5 / 2^2 beats e^-5 / 1: the second passage
    assert rescored[0].right and rescored[0].probability > 0.9 and rescored[1].probability < 0.1
    threshold = choose_threshold([rescored], cost=3.0)
    report = summary(rescored, threshold)
    assert report["answerable_right"] == 1.0 and report["abstained_when_unanswerable"] == 1.0
    assert report["answers_given_right"] == 1.0
    assert risk_coverage_auc(rescored) == 0.75  # accuracy 1 at coverage 1/2, 1/2 at full coverage


def test_the_shipped_calibrator_is_the_shipped_operating_point(config, reader):
    from appliance.runtime import load_calibrator

    cal = load_calibrator(reader)
    if cal is None:
        pytest.skip("the shipped reader has no calibrator")
    assert cal.threshold == pytest.approx(config.reader.threshold)
    for check in cal.about.get("checks", []):
        assert cal.probability(check["features"]) == pytest.approx(check["probability"], abs=1e-9)


@pytest.mark.parametrize("question", ["who won the football world cup in 1998?", "what is the capital of australia?",
                                      "how do I change a car tyre?", "can you play some jazz?"])
def test_off_topic_questions_are_abstained_on_end_to_end(pipeline, question):
    answer = pipeline.ask(question)
    assert answer.abstained and answer.text == "" and answer.spoken().startswith("I don't know")
