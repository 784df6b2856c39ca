"""What the training jobs read must not change under a job that resumes across releases: its
checkpoint counts steps into a fixed sequence of windows."""
from __future__ import annotations

import hashlib

import pytest

from appliance.bm25 import tokenize
from build_tools.squad import ArticleSearch, load_squad, mining_terms
from tests.conftest import SHARED

TRAIN = SHARED / "squad" / "train-v1.1.json.gz"
# The passages mined for SQuAD train's first three articles by the terms jobs started with
# (BM25 terms version 1); a change here means resumed jobs would read other windows.
MINED_FIRST_THREE_ARTICLES = (1165, "347748948b5bbe3a63f52b1b5ed933ea9452ab6575dcc38995b708cc612170d8")


def test_mining_keeps_its_own_terms_when_the_box_reads_contractions():
    assert tokenize("the oven's fan") == ["oven", "fan"]
    assert mining_terms("the oven's fan") == ["oven's", "fan"]


@pytest.mark.skipif(not TRAIN.exists(), reason="SQuAD train is not in ../shared/data")
def test_the_passages_a_job_mines_are_those_it_started_with():
    examples = load_squad(TRAIN)
    titles = list(dict.fromkeys(ex.title for ex in examples))[:3]
    few = [ex for ex in examples if ex.title in titles]
    search = ArticleSearch(few)
    found = [(ex.qid, text) for ex in few for text in search.without_answer(ex, 1, 5)]
    assert (len(found), hashlib.sha256(repr(found).encode()).hexdigest()) == MINED_FIRST_THREE_ARTICLES
