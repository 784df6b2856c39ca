"""Shared normalisation: a question over several passages is one training example with one softmax
across all its windows, and the runtime reader normalises a question's passages the same way."""
from __future__ import annotations

import numpy as np
import pytest

from appliance.config import ReaderConfig
from appliance.reader import Reader, shared_confidences
from appliance.windows import load_tokenizer
from build_tools.squad import SquadExample
from tests.conftest import ROOT

TOKENIZER = ROOT / "models" / "reader" / "tokenizer.json"
ARTICLE = [
    "The dishwasher holds 10 place settings. Its lower rack takes plates up to 29 cm across.",
    "Descale the dishwasher every three months with the descaler sold for it.",
    "The rinse aid dispenser is next to the detergent compartment and holds 110 ml.",
    "Plates should face the centre of the rack so the spray arm reaches them.",
]


def example(qid: str, question: str, context: str, answer: str | None) -> SquadExample:
    if answer is None:
        return SquadExample(qid, question, context, (), (), -1, "Dishwasher")
    return SquadExample(qid, question, context, (answer,), (context.index(answer),), 0, "Dishwasher")


def test_a_group_is_the_own_paragraph_labelled_plus_retrieved_passages_without_the_answer():
    from build_tools.shared_norm import build_groups

    tokenizer = load_tokenizer(TOKENIZER)
    examples = [example("a", "how big a plate fits in the lower rack of the dishwasher?", ARTICLE[0], "29 cm"),
                example("b", "how much rinse aid does the dishwasher dispenser hold?", ARTICLE[2], "110 ml"),
                example("u", "what colour is the rinse aid of the dishwasher?", ARTICLE[2], None)]
    examples += [example(f"x{i}", "filler", text, text.split()[1]) for i, text in enumerate(ARTICLE)]
    groups = build_groups(examples, tokenizer, 64, 16, passages=3, max_windows=8)
    a, b, u = groups[:3]
    assert a.answerable and b.answerable and not u.answerable
    for group, answer in ((a, "29 cm"), (b, "110 ml")):
        assert len(group.windows) == 3  # its paragraph and two others of the article
        gold = [(ids, s, e) for ids, _, s, e in group.windows if s]
        assert len(gold) == 1 and gold[0][0] is group.windows[0][0]  # only its own paragraph holds the answer
        ids, s, e = gold[0]
        assert tokenizer.decode(ids[s : e + 1].tolist()) == answer
        for ids, _, s, e in group.windows[1:]:
            assert answer not in tokenizer.decode(ids.tolist())
    assert all(s == e == 0 for _, _, s, e in u.windows) and len(u.windows) == 3
    capped = build_groups(examples, tokenizer, 64, 16, passages=3, max_windows=2)[0]
    assert len(capped.windows) == 2 and capped.windows[0][2] > 0  # the own paragraph is kept first


def test_the_loss_is_one_softmax_over_every_window_of_the_question():
    torch = pytest.importorskip("torch")
    from build_tools.shared_norm import shared_norm_loss

    logits = torch.tensor([[0.0, 2.0, 1.0, -9.0], [0.5, 3.0, 0.0, -9.0], [1.0, 0.0, 0.0, 0.0]])
    allowed = torch.tensor([[True, True, True, False], [True, True, True, False], [True, True, True, True]])
    gold = torch.zeros_like(allowed)
    gold[0, 1] = True  # the answer starts in the first window; the second is another passage
    gold[2, 0] = True  # the third window is a second question, unanswerable
    group_of = torch.tensor([0, 0, 1])
    loss = shared_norm_loss(logits, allowed, gold, group_of, 2)
    first = -torch.log_softmax(torch.tensor([0.0, 2.0, 1.0, 0.5, 3.0, 0.0]), 0)[1]
    second = -torch.log_softmax(torch.tensor([1.0, 0.0, 0.0, 0.0]), 0)[0]
    assert loss.item() == pytest.approx(((first + second) / 2).item(), abs=1e-6)

    louder = logits.clone()
    louder[1, 1] = 6.0  # another passage's token more confident: the answer's share, and the loss, change
    assert shared_norm_loss(louder, allowed, gold, group_of, 2).item() > loss.item()


def test_shared_confidences_make_passages_comparable_and_keep_one_window_pairs_as_they_were(config):
    plain = Reader(config.resolve(config.paths.reader_model), config.reader)
    shared = Reader(config.resolve(config.paths.reader_model), ReaderConfig(**{**vars(config.reader), "shared_norm": True}))
    question = "how big a plate fits in the lower rack?"
    pairs = [(question, text) for text in ARTICLE]

    alone = shared.predict(pairs[:1])[0]
    window = plain.predict(pairs[:1])[0]
    assert (alone.text, alone.start) == (window.text, window.start)
    assert alone.confidence == pytest.approx(window.confidence, rel=1e-5)  # one window: the same softmax

    together = shared_confidences(shared.predict(pairs))
    assert together[0].text == window.text
    # every span of every passage and the no-answer option share one distribution
    assert sum(p.confidence for p in together) + together[0].no_answer <= 1 + 1e-6
    assert len({p.no_answer for p in together}) == 1
    scores = [p.span_score for p in together]
    assert np.argsort(scores).tolist() == np.argsort([p.confidence for p in together]).tolist()
    assert together[0].confidence < alone.confidence  # the other passages take some of the mass


def test_shared_confidences_of_nothing_is_nothing():
    assert shared_confidences([None, None]) == [None, None]
