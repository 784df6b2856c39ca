"""evaluate-retriever and tune-fusion on tiny fixtures: every paragraph of a file is pooled (those
without questions and the distractor files' too), the shipped configuration is reported as the
appliance builds it, and the fusion is chosen on the tune data alone."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import DATA, ROOT, run_cli

from appliance.config import Config, RetrieverConfig
from appliance.retriever import convex_fusion, reciprocal_rank_fusion
from build_tools.evaluate_retriever import (Pool, Ranked, fuse, fusion_of, is_qa_pairs, qa_pairs_pool, recalls,
                                            squad_pool)
from build_tools.tune_fusion import choose, is_tune_article

POOL = DATA / "tiny-squad-pool.json"  # Kettle (test article, one paragraph without questions), Boiler (tune)
TINY = DATA / "tiny-squad.json"


def test_the_pool_holds_every_paragraph_and_the_distractors():
    pool = squad_pool(POOL)
    assert len(pool.texts) == 5 and len(pool.questions) == 6  # the question-less paragraph is in the pool
    assert any("MAX mark" in t for t in pool.texts)
    assert all(len(g) == 1 and "kettle" in pool.texts[next(iter(g))].lower()
               for q, g in zip(pool.questions, pool.gold) if "kettle" in q.lower())
    widened = squad_pool(POOL, [TINY, POOL])  # the file itself adds nothing: paragraphs are pooled once
    assert len(widened.texts) == 8 and widened.gold == pool.gold
    assert widened.info["distractors"] == [{"file": str(TINY), "paragraphs": 3}, {"file": str(POOL), "paragraphs": 0}]
    assert pool.groups == ["Kettle"] * 3 + ["Boiler"] * 3


MEDICATION_ROWS = [  # MedicationQA's shape: one row per answer, a question may have several
    {"Question": "can I drink alcohol with metformin?", "Focus (Drug)": "metformin",
     "Answer": "Avoid drinking large amounts of alcohol while taking metformin."},
    {"Question": "can I drink alcohol with metformin?", "Focus (Drug)": "metformin",
     "Answer": "Alcohol raises the risk of lactic acidosis."},
    {"Question": "does metformin interact with beer", "Focus (Drug)": "metformin",
     "Answer": "Alcohol raises the risk of lactic acidosis."},
    {"Question": "what is warfarin for", "Focus (Drug)": "warfarin",
     "Answer": "Warfarin prevents blood clots from forming or growing larger."},
    {"Question": "is there an answer?", "Focus (Drug)": "none", "Answer": ""},
]


def test_a_question_answer_list_pools_its_answers_and_every_answer_a_question_was_given(tmp_path):
    data = tmp_path / "medication.json"
    data.write_text(json.dumps(MEDICATION_ROWS))
    pool = qa_pairs_pool(data)
    assert is_qa_pairs(data) and not is_qa_pairs(POOL)
    assert len(pool.texts) == 3  # the shared answer once, the empty one left out
    assert pool.questions == ["can I drink alcohol with metformin?", "does metformin interact with beer",
                              "what is warfarin for"]
    shared = pool.texts.index("Alcohol raises the risk of lactic acidosis.")
    assert pool.gold[0] == {0, shared} and pool.gold[1] == {shared} and pool.gold[2] == {2}
    assert pool.groups == ["metformin", "metformin", "warfarin"]
    assert len(qa_pairs_pool(data, limit=1).questions) == 1


def test_recall_counts_any_gold_passage_and_fusion_is_the_appliances():
    assert recalls([[3, 1, 2], [0, 2]], [frozenset([1]), frozenset([5, 2])]) == {"R@1": 0.0, "R@5": 1.0, "R@20": 1.0}
    ranked = Ranked(dense=[[0, 1, 2, 3]], bm25=[[3, 2, 1, 0]], shipped=None, candidates=2)
    fused = fuse(ranked, {"fusion": "rrf", "rrf_k": 60, "dense_weight": 2.0})  # each ranker's first `candidates`
    assert fused == [[d for d, _ in reciprocal_rank_fusion([[0, 1], [3, 2]], 60, [2.0, 1.0])]] == [[0, 1, 3, 2]]
    with pytest.raises(ValueError, match="scores"):  # convex fusion weighs scores, which this ranking lacks
        fuse(ranked, {"fusion": "convex", "convex_dense_share": 0.5})


def test_convex_fusion_weighs_how_far_ahead_a_passage_is():
    """Rank fusion ties a passage first by a hair in one ranker with one first by far in the other;
    convex fusion of scores over each ranker's best puts the clear winner first."""
    dense = {0: 0.80, 1: 0.79, 2: 0.30}  # 0 first by a hair
    bm25 = {0: 2.0, 1: 12.0, 2: 0.0}  # 1 first by far
    assert [p for p, _ in convex_fusion(dense, bm25, 0.5)] == [1, 0, 2]
    assert [p for p, _ in convex_fusion(dense, bm25, 1.0)] == [0, 1, 2]  # dense alone
    assert [p for p, _ in convex_fusion(dense, bm25, 0.0)] == [1, 0, 2]  # BM25 alone
    top = convex_fusion(dense, {p: 0.0 for p in dense}, 0.7)  # no shared term: the dense order, scaled
    assert [p for p, _ in top] == [0, 1, 2] and top[0][1] == pytest.approx(0.7)


def test_articles_split_by_title_alone():
    assert is_tune_article("Boiler") and not is_tune_article("Kettle")


def _set(name: str, dense: list[list[int]], bm25: list[list[int]], gold: list[int]) -> tuple[Pool, Ranked]:
    pool = Pool(name, ["p"] * 4, ["q"] * len(gold), [frozenset([g]) for g in gold])
    return pool, Ranked(dense, bm25, None, 30)


def test_the_shipped_fusion_stays_unless_the_tune_data_beats_it_by_the_margin():
    shipped = RetrieverConfig(rrf_k=60, dense_weight=2.0, sentence_list_weight=0.0)
    # BM25 is right and dense wrong: an even weight puts the right passage first, dense x2 does not
    tune = [_set("a", [[1, 0, 2, 3]] * 4, [[0, 2, 1, 3]] * 4, [0] * 4)]
    choice = choose(tune, shipped, margin=0.005)
    assert choice["changes_the_shipped_setting"] and choice["chosen"]["dense_weight"] < shipped.dense_weight
    assert choice["best"]["objective"] > choice["shipped"]["objective"]
    assert choose(tune, shipped, margin=1.0)["chosen"] == fusion_of(shipped)
    agree = [_set("b", [[0, 1, 2, 3]] * 2, [[0, 1, 2, 3]] * 2, [0, 0])]  # every setting ties: keep what ships
    assert not choose(agree, shipped, 0.005)["changes_the_shipped_setting"]


@pytest.mark.slow  # the command loads the shipped model
def test_evaluate_retriever_reports_the_shipped_retriever_on_the_full_pool():
    result = run_cli("build_tools", "evaluate-retriever", str(POOL), "--distractors", str(TINY))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    shipped = Config().retriever
    assert report["paragraphs"] == 8 and report["paragraphs_of_file"] == 5 and report["questions"] == 6
    assert report["shipped"]["mode"] == shipped.mode and fusion_of(shipped).items() <= report["shipped"].items()
    assert report["fusion"] == fusion_of(shipped)
    for ranker in ("shipped", "dense", "bm25", "fused"):
        assert 0.5 <= report[ranker]["R@1"] <= report[ranker]["R@5"] == 1.0
    grid = {(g["rrf_k"], g["dense_weight"]) for g in report["fusion_grid"] if g["fusion"] == "rrf"}
    assert len(grid) > 20 and {g["convex_dense_share"] for g in report["fusion_grid"] if g["fusion"] == "convex"}


@pytest.mark.slow  # the command loads the shipped model
def test_tune_fusion_chooses_on_tune_data_and_reports_the_rest(tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "kettle.md").write_text("# Kettle manual\n\n## Descaling\n\nDescale every four weeks with vinegar.\n\n"
                                  "## Cord\n\nThe cord stores in the base.\n")
    (kb / "boiler.md").write_text("# Boiler guide\n\n## Pressure\n\nTop the pressure up to 1.5 bar.\n\n"
                                  "## Faults\n\nF28 means the boiler failed to ignite.\n")
    questions = {"questions": [
        {"id": "k1", "question": "how often do I descale the kettle?", "kind": "answerable", "split": "tune",
         "document": "kettle.md", "section": "Descaling", "answers": ["every four weeks"]},
        {"id": "b1", "question": "what does F28 mean on my boiler?", "kind": "answerable", "split": "test",
         "document": "boiler.md", "section": "Faults", "answers": ["failed to ignite"]},
        {"id": "o1", "question": "who won the cup?", "kind": "off-topic", "split": "test"}]}
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps(questions))
    medication = tmp_path / "medication.json"
    medication.write_text(json.dumps(MEDICATION_ROWS))
    result = run_cli("build_tools", "tune-fusion", "--squad", str(POOL), "--kb", str(kb), "--questions", str(qfile),
                     "--ood", f"{TINY}+{POOL}", str(medication), "--heading-variants",
                     "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["choice"]["tune_sets"] == ["tiny-squad-pool.json tune articles (3 questions)",
                                             "KB tune split (1 questions)"]
    results = report["results"]
    assert results["tiny-squad-pool.json test articles"]["questions"] == 3
    assert results["KB test split"]["questions"] == 1 and results["KB test split"]["passages"] == 4
    ood = results["tiny-squad.json (out of domain, full pool + tiny-squad-pool.json)"]
    assert ood["passages"] == 8 and ood["distractors"][0]["paragraphs"] == 5
    pairs = results["medication.json (out of domain, full pool)"]
    assert pairs["passages"] == 3 and pairs["questions"] == 3 and pairs["dense"]["R@5"] == 1.0
    for part in results.values():
        assert {"dense", "bm25", "shipped_retriever", "fused_shipped", "fused_chosen"} <= set(part)
    assert set(report["kb_heading_path"]) == {"dense with, bm25 with", "dense without, bm25 without",
                                              "dense with, bm25 without", "dense without, bm25 with"}


def test_the_fusion_figures_are_the_rankings_the_box_gives_question_by_question(encoder):
    """The fusion grid re-fuses one dense ranking; it must be the one the box computes (each
    question encoded alone: the int8 encoder quantises activations per batch, so encoding the
    questions as one batch ranks some passages differently)."""
    from build_tools.evaluate_retriever import rank
    from build_tools.tune_fusion import kb_pool

    config = Config()
    pool = kb_pool(ROOT / "knowledge", DATA / "kb_eval.json", config.ingest)
    pool = Pool(pool.name, pool.texts, pool.questions[:80], pool.gold[:80], pool.bm25_texts)
    ranked = rank(pool, encoder, config.retriever)
    fused = fuse(ranked, fusion_of(config.retriever))
    assert [row[:len(shipped)] for row, shipped in zip(fused, ranked.shipped)] == ranked.shipped
    for other in (replace(config.retriever, fusion="convex", convex_dense_share=0.7),  # the other fusions: the same
                  replace(config.retriever, sentence_list_weight=0.75, dense_weight=0.75)):
        ranked = rank(pool, encoder, other)
        fused = fuse(ranked, fusion_of(other))
        assert [row[:len(shipped)] for row, shipped in zip(fused, ranked.shipped)] == ranked.shipped
