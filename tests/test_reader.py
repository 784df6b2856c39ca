"""The real int8 reader: finds known spans, abstains on unrelated passages."""
from __future__ import annotations

import pytest

from appliance.config import Config

THRESHOLD = Config().reader.threshold
DISHWASHER = ("The Quick program takes 30 minutes and washes at 45 degrees Celsius. "
              "The Eco program takes 3 hours and 15 minutes and uses the least water and energy.")
OVEN = "For bread, preheat the oven for 20 minutes at the baking temperature so the oven walls are fully heated."


def test_finds_a_known_span_with_confidence(reader):
    [pred] = reader.predict([("How long does the quick program take?", DISHWASHER)])
    assert pred.text == "30 minutes"
    assert DISHWASHER[pred.start : pred.end] == pred.text
    assert pred.confidence >= THRESHOLD


def test_best_span_over_several_passages(reader):
    preds = reader.predict([("How long should I preheat for bread?", DISHWASHER),
                            ("How long should I preheat for bread?", OVEN)])
    best = max(preds, key=lambda p: p.confidence)
    assert best.pair == 1 and "20 minutes" in best.text


def test_abstains_on_an_unrelated_passage(reader):
    [pred] = reader.predict([("What is the maximum daily dose of metformin?", OVEN)])
    assert pred.confidence < THRESHOLD


def test_answer_late_in_a_long_passage_uses_later_windows(reader):
    filler = " ".join(f"Step {i} is to inspect panel number {i} for dust." for i in range(60))
    context = filler + " The drive belt must be replaced every 2,000 operating hours."
    [pred] = reader.predict([("How often must the drive belt be replaced?", context)])
    assert "2,000 operating hours" in pred.text
    assert context[pred.start : pred.end] == pred.text


def test_context_without_tokens_gives_no_prediction(reader):
    assert reader.predict([("anything?", "")]) == [None]


def test_a_heading_is_read_but_never_answered_from(reader):
    question = "How long does the quick program take?"
    [pred] = reader.predict([(question, DISHWASHER)], headings=["Quick program (older models: 25 minutes)"])
    assert DISHWASHER[pred.start : pred.end] == pred.text == "30 minutes"  # offsets stay the passage's
    assert reader.predict([(question, "")], headings=["Quick program: 30 minutes"]) == [None]
    with pytest.raises(ValueError, match="1 headings for 2 passages"):
        reader.predict([(question, DISHWASHER), (question, OVEN)], headings=["Dishwasher"])


def test_a_span_never_crosses_a_line_break_of_a_list(reader):
    """Drug labels and manuals list items one per line; a span across two items answers nothing."""
    from appliance.reader import best_span, line_breaks, token_lines

    label = ("Active ingredients (in each 5 mL)\nDiphenhydramine HCl 6.25 mg\nPhenylephrine HCl 2.5 mg\n"
             "Purposes\nAntihistamine/cough suppressant\nNasal decongestant")
    questions = ["how much diphenhydramine is in it?", "what is phenylephrine for?", "what are the purposes?"]
    crossing_without_the_rule = 0
    for question, pred in zip(questions, reader.predict([(q, label) for q in questions])):
        assert pred is not None and pred.text and "\n" not in pred.text
        assert label[pred.start : pred.end] == pred.text
        [[window]] = reader.windows([(question, label)])[1]
        [starts], [ends] = reader._run([window])
        lines = token_lines(window, line_breaks(label))
        free = best_span(starts, ends, window, reader.max_answer_tokens)
        kept = best_span(starts, ends, window, reader.max_answer_tokens, lines=lines)

        def text(span):
            return label[window.context_offsets[span.start][0] : window.context_offsets[span.end][1]]

        crossing_without_the_rule += "\n" in text(free)
        assert text(kept) == pred.text
    assert crossing_without_the_rule >= 2  # the model alone does straddle items here
