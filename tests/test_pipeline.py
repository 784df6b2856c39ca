"""Question → retrieval → reader → answer object, in process, on the bundled knowledge base."""
from __future__ import annotations

import pytest

from appliance.errors import BadQuestionError
from appliance.pipeline import evidence_sentence, normalize_question

BREAD_SECTIONS = {"Preheating", "Baking bread"}  # the oven manual states the 20 minutes in both


def test_bread_question_is_answered_with_its_source(pipeline):
    answer = pipeline.ask("how long should I preheat the oven for bread?")
    assert not answer.abstained
    assert "20 minutes" in answer.text
    assert answer.source.section[-1] in BREAD_SECTIONS
    assert "oven" in answer.source.document.lower()
    assert answer.text in answer.evidence and answer.passage[answer.start : answer.end] == answer.text
    assert set(answer.timings_ms) == {"retrieval", "reader"}
    assert "From Hearthline" in answer.spoken()


def test_unrelated_question_is_an_honest_i_dont_know(pipeline):
    answer = pipeline.ask("who won the football world cup in 1998?")
    assert answer.abstained and answer.text == ""
    assert answer.spoken().startswith("I don't know")


def test_kb_questions_end_to_end(pipeline, kb_questions):
    """Bounds a little under what evaluate-kb measured for the shipped models (docs/RESULTS.md)."""
    from build_tools.selective import is_right

    answers = [(pipeline.ask(q["question"]), q["answer"]) for q in kb_questions]
    right = [is_right(a.text or a.passage[a.start : a.end], gold) for a, gold in answers]
    answered = [not a.abstained for a, _ in answers]
    assert sum(right) / len(right) >= 0.45, f"{sum(right)}/{len(right)} right if always answering"
    answered_right = sum(r and s for r, s in zip(right, answered))
    assert sum(answered) >= 0.3 * len(answers)
    assert answered_right / sum(answered) >= 0.6, f"{answered_right}/{sum(answered)} of the answers are right"


def test_a_code_the_documents_never_mention_is_an_i_dont_know_that_names_it(pipeline):
    """The dishwasher's error-code table lists E1–E9; asked about E10, the reader alone answered with
    one of those codes' meanings at 0.72."""
    answer = pipeline.ask("what does error code E10 mean on the dishwasher?")
    assert answer.abstained and answer.text == "" and answer.unknown_codes == ["E10"]
    assert answer.spoken() == "I don't know: the documents never mention E10."
    assert answer.source is not None and answer.source.section[-1] == "Error codes"  # still the closest section
    known = pipeline.ask("what does error E1 mean on the dishwasher?")  # a code the table does list
    assert not known.unknown_codes and not known.abstained and "water" in known.text
    assert pipeline.ask("how much does the Meridian ML1440 cost?").unknown_codes == []  # the manual writes ML-1440
    assert pipeline.read("will metformin lower my A1C?").unknown_codes == ()  # the guide says HbA1c


def test_the_code_check_can_be_turned_off(config, kb_index_dir):
    import dataclasses

    from appliance import runtime

    off = dataclasses.replace(config, ask=dataclasses.replace(config.ask, unknown_codes_abstain=False))
    pipeline = runtime.load_pipeline(off, index=kb_index_dir, build_if_missing=False)
    reading = pipeline.read("what does error code E10 mean on the dishwasher?")
    assert reading.unknown_codes == () and any(p is not None for p in reading.predictions)


def test_codes_are_letters_then_digits_in_any_spelling():
    from appliance.pipeline import code_key, named_codes

    assert named_codes("is F3 or ML-1440 or a1c or bc-300 in it?") == ["F3", "ML-1440", "a1c", "bc-300"]
    assert named_codes("take 200mg on the 3rd day at 10am, 2 hours apart") == []  # units and ordinals: digits first
    assert code_key("ML-1440") == code_key("ml1440") == code_key("ML1440")
    assert code_key("E09") != code_key("E9")  # two manuals, two codes


def test_answer_json_round_trip(pipeline):
    data = pipeline.ask("can I drink alcohol while taking metformin?").to_json()
    assert {"text", "confidence", "abstained", "source", "evidence", "start", "end", "timings_ms",
            "candidates"} <= set(data)
    assert data["source"]["citation"].startswith("Metformin")


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", "\x00\x01\x02", "\u200b"])
def test_empty_questions_are_rejected(raw):
    with pytest.raises(BadQuestionError, match="empty"):
        normalize_question(raw, 500)


def test_over_long_question_is_rejected():
    with pytest.raises(BadQuestionError, match="limit is 500"):
        normalize_question("why " * 200, 500)


def test_questions_are_normalised():
    assert normalize_question("  how\tlong\x07 to\npreheat?  ", 500) == "how long to preheat?"
    assert normalize_question("Wie lange vorheizen? 🔥", 500) == "Wie lange vorheizen? 🔥"


@pytest.mark.parametrize("question", ["🔥🔥🔥", "¿Puedo tomar ibuprofeno con alcohol?", "x" * 499,
                                      "SELECT * FROM passages; --", "<script>alert(1)</script>"])
def test_odd_questions_get_an_answer_or_an_abstention(pipeline, question):
    answer = pipeline.ask(question)
    assert isinstance(answer.abstained, bool) and 0.0 <= answer.confidence <= 1.0


def test_evidence_is_the_sentence_holding_the_span():
    passage = "Clean the filter weekly. Replace it every 6 months. Never run without it."
    start = passage.index("every 6 months")
    assert evidence_sentence(passage, start, start + 14) == "Replace it every 6 months."


def test_the_answer_comes_from_the_best_choice_score():
    from appliance.pipeline import Reading, choice_score

    reading = Reading("q", [], [], [None] * 3, [None] * 3, [0.9, -1.0, 0.1], {}, [0.2, -1.0, 0.7])
    assert reading.best() == 2  # chosen by the choice score; the probability only decides abstention
    assert Reading("q", [], [], [None], [None], [-1.0], {}, [-1.0]).best() is None
    assert choice_score(0.5, 0, 2.0) > choice_score(0.7, 2, 2.0)  # 0.5 / 1 against 0.7 / 9
    assert choice_score(0.7, 2, 0.0) > choice_score(0.5, 0, 0.0)


def test_the_box_says_the_evidence_sentence_unless_it_is_long():
    from appliance.schema import Answer, Source

    source = Source("Oven manual", "oven.md", ("Preheating",))
    short = Answer("q", "20 minutes", 0.9, False, source, "Preheat for 20 minutes.", "", 0, 0)
    assert short.spoken() == "Preheat for 20 minutes. From Oven manual, section Preheating."
    long = Answer("q", "20 minutes", 0.9, False, source, "Preheat for 20 minutes " + "and so on " * 20, "", 0, 0)
    assert long.spoken() == "20 minutes. From Oven manual, section Preheating."
    unsure = Answer("q", "", 0.1, True, source, "Preheat for 20 minutes.", "", 0, 0)
    assert unsure.spoken() == "I don't know. The closest section I found is Oven manual > Preheating."


PUMP_MANUAL = """# Pump manual

## Priming
Fill the pump housing with water through the priming plug before the first start. Never run the pump dry.

## Fuses
The control box takes a 6.3 A slow-blow fuse, type T6.3AL250V.

## Cleaning
Rinse the strainer basket under running water once a week.
"""

PUMP_SERVICE = """# Pump service notes

## Seal replacement
Replace the mechanical shaft seal every 4,000 operating hours or when water drips from the shaft.

## Bearings
The motor bearings are sealed for life and need no grease.
"""


def test_a_knowledge_base_shipped_twice_gives_the_reader_distinct_passages(tmp_path, config, encoder):
    """The same manual under two names (an original and a reseller's copy) must not fill the
    reader's passages with copies: each passage it reads differs in text, and the copies' slots
    go to the next-best passages."""
    from appliance import runtime
    from appliance.pipeline import text_key

    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "pump.md").write_text(PUMP_MANUAL)
    (kb / "pump-reseller-copy.md").write_text(PUMP_MANUAL.replace("# Pump manual", "# Pump manual (reseller)"))
    (kb / "pump-service.md").write_text(PUMP_SERVICE)
    runtime.build_index(config, kb=kb, index=tmp_path / "index", encoder=encoder)
    pipe = runtime.load_pipeline(config, kb=kb, index=tmp_path / "index", build_if_missing=False)
    assert len(pipe.index.passages) == 8  # both copies are indexed (and can be cited)

    reading = pipe.read("which fuse does the pump control box need?")
    texts = [text_key(p.text) for p in reading.passages]
    assert len(texts) == len(set(texts)) == config.retriever.top_k  # 5 distinct of the 5 there are
    assert {p.source for p in reading.passages} >= {"pump-service.md"}
    answer = pipe.ask("which fuse does the pump control box need?")
    assert "6.3 A" in answer.text and answer.source.section[-1] == "Fuses"
    assert len({(c.document, c.section) for c in answer.candidates}) == len(answer.candidates)


def test_passages_that_cannot_change_the_answer_are_not_read_and_no_decision_changes(pipeline, kb_questions):
    """At the shipped rule (probability ÷ (rank + 1)², threshold 0.15) a passage from rank 2 on can
    only lead to "I don't know", and the second (at most 0.25) cannot beat a first that scored 0.25:
    the box reads at most two, one when the first is that sure, and each question ends as it would
    have after reading all five, span for span."""
    assert pipeline.passages_that_can_answer(5) == 2
    read_one = 0
    for q in kb_questions[:25]:
        box = pipeline.read(q["question"])
        full = pipeline.read(q["question"], every_passage=True)
        read = [p is not None for p in box.predictions]
        assert read[2:] == [False] * (len(box.passages) - 2)
        assert read[1] == (box.choice_scores[0] < 0.25)
        read_one += not read[1]
        for mine, theirs in zip(box.predictions, full.predictions):
            assert mine is None or mine == theirs  # a passage scores the same whatever else is read
        assert box.best() is not None and full.best() is not None
        decided = [(r.probabilities[r.best()] >= pipeline.decision.threshold, r.predictions[r.best()].text)
                   for r in (box, full)]
        assert decided[0] == decided[1] or not (decided[0][0] or decided[1][0])
    assert read_one >= 5  # the first passage settles a good share of questions alone
