"""Same-paragraph unanswerable questions made from answerable ones (build_tools/unanswerable.py)."""
import random
import re

from build_tools.squad import SquadExample
from build_tools.unanswerable import names_in, swap_antonym, swap_name, swap_number, synthetic_unanswerables

TESLA = ("Nikola Tesla was born in Smiljan in 1856. He moved to New York City in 1884 to work for Thomas "
         "Edison. Tesla built the first induction motor at his laboratory.")
WESTINGHOUSE = ("George Westinghouse bought the patents in 1888. The Westinghouse Electric Company paid "
                "royalties of 2,500 dollars to Tesla for each horsepower.")


def example(qid: str, question: str, context: str, answer: str) -> SquadExample:
    return SquadExample(qid, question, context, (answer,), (context.index(answer),), 0, "Nikola Tesla")


def mentions(phrase: str, text: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None


def test_names_are_found_but_not_a_sentences_capitalised_first_word():
    assert names_in("Where did Nikola Tesla work for Thomas Edison?") == ["Nikola Tesla", "Thomas Edison"]
    assert "Scholars" not in names_in("Scholars say so. He met the Bank of England.")
    assert "Bank of England" in names_in("Scholars say so. He met the Bank of England.")


def test_a_swapped_name_comes_from_the_same_article_and_is_absent_from_the_paragraph():
    rng = random.Random(0)
    for _ in range(20):
        new = swap_name("Who did Tesla work for in New York City?", TESLA, ["George Westinghouse", "Smiljan"], rng)
        assert new is not None and new != "Who did Tesla work for in New York City?"
        assert "George Westinghouse" in new  # Smiljan is in the paragraph, so it is never put in
    assert swap_name("Who did Tesla work for?", TESLA, ["Smiljan", "Thomas Edison"], rng) is None


def test_a_swapped_number_is_one_the_paragraph_does_not_mention():
    rng = random.Random(1)
    for _ in range(20):
        new = swap_number("What did Tesla do in 1884?", TESLA, rng)
        year = re.search(r"\d+", new).group(0)
        assert year != "1884" and len(year) == 4 and not mentions(year, TESLA)
    new = swap_number("How much did Westinghouse pay, 2,500 dollars?", WESTINGHOUSE, rng)
    assert re.search(r"\d{1,3}(,\d{3})+|\d+", new).group(0) not in ("2,500", "2500")
    assert swap_number("Where was Tesla born?", TESLA, rng) is None


def test_an_antonym_is_used_only_when_the_paragraph_lacks_it():
    rng = random.Random(2)
    assert swap_antonym("What was the first motor Tesla built?", TESLA, rng) == \
        "What was the last motor Tesla built?"
    assert swap_antonym("What was the last motor Tesla built?", TESLA, rng) is None  # "first" is in the text
    assert swap_antonym("When did Tesla move?", TESLA, rng) is None


def test_made_questions_are_labelled_no_answer_over_their_own_paragraph():
    examples = [example("q1", "Who did Tesla work for in New York City?", TESLA, "Thomas Edison"),
                example("q2", "When did Tesla move to New York City?", TESLA, "1884"),
                example("q3", "What was the first motor Tesla built?", TESLA, "induction motor"),
                example("q4", "Who bought the patents?", WESTINGHOUSE, "George Westinghouse")]
    made = synthetic_unanswerables(examples, 1.0, seed=3)
    assert len(made) >= 3
    by_id = {ex.qid: ex for ex in examples}
    for ex in made:
        source = by_id[ex.qid.split("-")[0]]
        assert ex.is_impossible and ex.answers == () and ex.context == source.context
        assert ex.question != source.question
    assert [ex.question for ex in synthetic_unanswerables(examples, 1.0, seed=3)] == [ex.question for ex in made]
    assert synthetic_unanswerables(examples, 0.0, seed=3) == []


def test_a_phrase_counts_as_present_only_as_whole_words_in_any_case():
    from build_tools.unanswerable import _absent

    text = "Bruce Leeds paid 21,000 dollars in 1990; the house was sold by Lee."
    assert _absent("Lee", text.lower()) is False  # "by Lee." at the end
    assert _absent("Bruce Lee", text.lower()) is True  # only inside "Bruce Leeds"
    assert _absent("1,000", text.lower()) is True  # only inside "21,000"
    assert _absent("21,000", text.lower()) is False
    assert _absent("HOUSE", text.lower()) is False
    assert _absent("sold by lee.", text.lower()) is False
    assert _absent("19", text.lower()) is True
