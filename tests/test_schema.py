"""The message types: their wire form is what socket subscribers and API clients have always
received, and each reads back to what was sent."""
from __future__ import annotations

import json

import pytest

from appliance.schema import (
    Answer,
    Answered,
    Ask,
    AudioError,
    BargeIn,
    Done,
    GetOutline,
    Heard,
    Passage,
    Ready,
    Source,
    error_reply,
    event_from_json,
    kb_outline,
)

ANSWER = Answer("how long?", "20 minutes", 0.8, False, Source("Oven", "oven.md", ("Baking", "Preheating")),
                "Preheat for 20 minutes.", "Preheat for 20 minutes.", 12, 22, {"reader": 3.0},
                [Source("Oven", "oven.md", ("Baking", "Preheating"))])
UNKNOWN_CODE = Answer("what is F10?", "", 0.0, True, Source("Oven", "oven.md", ("Fault codes",)), "", "", 0, 0,
                      {"reader": 0.1}, [Source("Oven", "oven.md", ("Fault codes",))], ["F10"])


def test_events_keep_their_wire_form():
    assert Heard("hello").to_json() == {"event": "heard", "text": "hello"}
    assert BargeIn().to_json() == {"event": "barge-in"}
    assert Done(True).to_json() == {"event": "done", "barged_in": True}
    assert Ready("push-to-talk").to_json() == {"event": "ready", "listen": "push-to-talk"}
    assert AudioError("no device", 2.0).to_json() == {"event": "audio-error", "error": "no device", "retry_in_s": 2.0}
    assert Answered(ANSWER).to_json() == {"event": "answered", "answer": ANSWER.to_json()}  # spoken: no "via"
    assert Answered(ANSWER, via="api").to_json()["via"] == "api"


@pytest.mark.parametrize("event", [Heard("hi"), BargeIn(), Done(False), AudioError("gone", 1.0),
                                   Answered(ANSWER, via="api")])
def test_events_read_back_from_json(event):
    assert event_from_json(json.loads(json.dumps(event.to_json()))) == event
    assert type(event).is_type(event.to_json()["event"])


def test_unknown_event_is_refused():
    with pytest.raises(ValueError, match="unknown event"):
        event_from_json({"event": "dance"})


def test_requests_and_errors():
    assert Ask(question="q").to_json() == {"type": "ask", "question": "q"}
    assert Ask(id=3, question="q", top_k=2).to_json() == {"type": "ask", "id": 3, "question": "q", "top_k": 2}
    assert GetOutline().to_json() == {"type": "outline"}
    assert error_reply("bad", "malformed", 7) == {"type": "error", "id": 7, "code": "malformed", "error": "bad"}


def test_answer_and_outline_round_trip():
    assert Answer.from_json(json.loads(json.dumps(ANSWER.to_json()))) == ANSWER
    assert Answer.from_json(json.loads(json.dumps(UNKNOWN_CODE.to_json()))) == UNKNOWN_CODE
    assert UNKNOWN_CODE.spoken() == "I don't know: the documents never mention F10."
    passages = [Passage("Oven", "oven.md", ("Baking",), "a"), Passage("Oven", "oven.md", ("Baking",), "b"),
                Passage("Lathe", "lathe.md", (), "c")]
    outline = kb_outline(passages)
    assert [d.title for d in outline] == ["Lathe", "Oven"] and outline[1].sections[0].text == "a\nb"
    assert Source.of(passages[0]).citation == "Oven > Baking"
