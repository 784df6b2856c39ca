"""The evaluation commands on a tiny SQuAD-format fixture (they must work on any such file)."""
from __future__ import annotations

import json

import pytest
from conftest import DATA, run_cli

from build_tools.evaluate_reader import exact_match, f1_score, normalize_answer

TINY = str(DATA / "tiny-squad.json")


def test_official_normalisation_and_scores():
    assert normalize_answer("The  Eco program!") == "eco program"
    assert exact_match("the Eco program", "Eco program") == 1.0
    assert f1_score("30 minutes long", "30 minutes") == 0.8
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0


@pytest.mark.slow  # the command loads the shipped model
def test_evaluate_reader_on_a_squad2_fixture():
    result = run_cli("build_tools", "evaluate-reader", TINY)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["always_answer"]["questions"] == 5
    assert report["always_answer"]["has_answer"]["count"] == 4
    assert report["always_answer"]["has_answer"]["f1"] >= 75
    assert report["with_abstention"]["no_answer"]["count"] == 1
    assert "abstention_accuracy" in report["with_abstention"]["no_answer"]


@pytest.mark.slow  # the command loads the shipped model
def test_evaluate_retriever_on_a_fixture():
    result = run_cli("build_tools", "evaluate-retriever", TINY)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["paragraphs"] == 3 and report["questions"] == 4
    for ranker in ("dense", "bm25", "fused"):
        assert set(report[ranker]) == {"R@1", "R@5", "R@20"} and report[ranker]["R@5"] == 1.0
    assert report["fused"]["R@1"] >= 0.75
    from appliance.config import Config

    shipped = Config().retriever  # the fusion reported is the one the appliance runs
    from build_tools.evaluate_retriever import fusion_of

    assert report["fusion"] == fusion_of(shipped)


def test_evaluation_commands_reject_a_non_squad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "squad"}')
    for command in ("evaluate-reader", "evaluate-retriever"):
        result = run_cli("build_tools", command, str(bad))
        assert result.returncode == 2 and "not a readable SQuAD-format" in result.stderr


def test_build_commands_name_an_unreadable_input_file_in_one_line(tmp_path):
    missing, squad = str(tmp_path / "missing.json"), TINY
    binary, truncated = tmp_path / "binary.json", tmp_path / "truncated.json.gz"
    binary.write_bytes(bytes(range(256)) * 4)
    truncated.write_bytes(b"\x1f\x8b\x08\x00not gzip")
    for args in (("calibrate", "--squad", missing, "--plot", ""), ("tune-fusion", "--squad", missing),
                 ("tune-fusion", "--squad", str(binary)), ("evaluate-retriever", str(truncated)),
                 ("evaluate-kb", missing), ("evaluate-kb", squad), ("calibrate", "--kb-questions", squad)):
        result = run_cli("build_tools", *args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, (args, result.stderr)
    assert "KB question file" in result.stderr and squad in result.stderr


def test_training_commands_refuse_a_missing_data_file_before_starting_a_job(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "job"
    for command, data in (("train-retriever", "--squad"), ("train-reader", "--data"), ("train-student", "--data")):
        result = run_cli("build_tools", command, data, str(tmp_path / "missing.json"), "--out", str(out))
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr[-2000:]
        assert "missing.json" in result.stderr and not out.exists()


def test_evaluate_kb_reports_retrieval_answers_and_abstention(kb_index_dir):
    result = run_cli("build_tools", "evaluate-kb", str(DATA / "kb-eval-tiny.json"), "--index", str(kb_index_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["questions"] == report["answerable"] == 2
    assert 0 <= report["retrieval_top1"] <= report["retrieval_top5"] == 1.0
    assert report["right_if_always_answering"] >= 0.5  # the bread question is answered right
    assert report["sentence_right_if_always_answering"] >= report["right_if_always_answering"]
    assert 0 <= report["answerable_right"] <= report["right_if_always_answering"]
    assert report["right_if_always_answering"] <= report["right_if_best_span_chosen"] <= 1.0


def test_the_ceiling_counts_a_question_when_any_of_its_passages_has_a_right_span():
    from build_tools.selective import Record, summary

    records = [Record("a", "answerable", 0.9, False, labels=[0, 1, 0]),  # the wrong passage was chosen
               Record("b", "answerable", 0.9, True, labels=[1, 0, 0]),
               Record("c", "answerable", 0.1, False, labels=[0, 0, 0]),
               Record("d", "off-topic", 0.1, False, labels=[0, 0, 0])]
    report = summary(records, 0.5)
    assert report["right_if_always_answering"] == 0.3333
    assert report["right_if_best_span_chosen"] == 0.6667
    single = summary([Record("s", "answerable", 0.9, True, labels=[1])], 0.5)
    assert "right_if_best_span_chosen" not in single  # one candidate: nothing to choose among

def test_a_copy_of_the_gold_passage_in_another_file_counts_as_the_gold_section():
    from appliance.schema import Passage
    from build_tools.selective import in_gold_section

    maker = Passage("Lipitor", "lipitor-orig.xml", ("2 DOSAGE", "2.1 Adults"), "Start at 10 mg once a day.")
    copy = Passage("Lipitor", "lipitor-repack.xml", ("2 DOSAGE", "2.1 Adults"), "Start at 10  MG once a day")
    other = Passage("Lipitor", "lipitor-repack.xml", ("2 DOSAGE", "2.2 Children"), "Start at 5 mg once a day.")
    question = {"document": "lipitor-orig.xml", "section": "2.1 Adults"}
    passages = [maker, copy, other]
    assert in_gold_section(maker, question, passages)
    assert in_gold_section(copy, question, passages)
    assert not in_gold_section(other, question, passages)
    assert not in_gold_section(copy, {"document": "lipitor-orig.xml", "section": "2.2 Children"}, passages)
