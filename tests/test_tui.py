"""The terminal UI driven by Textual's pilot, on the real pipeline and knowledge base."""
from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Static, Tree

from appliance.tui import (
    AnswerCard,
    ApplianceTUI,
    HelpScreen,
    LocalBackend,
    QuestionInput,
    SocketBackend,
    connect_backend,
)


@pytest.fixture(scope="module")
def backend(pipeline):
    return LocalBackend(pipeline)


def card_text(app) -> str:
    card = app.query_one(AnswerCard)
    return "\n".join(str(w.render()) for w in card.query(Static))


async def ask(pilot, question: str) -> None:
    app = pilot.app
    app.query_one(QuestionInput).value = question
    await pilot.press("enter")
    await app.workers.wait_for_complete()
    await pilot.pause()


def run(coro):
    return asyncio.run(coro)


def test_question_gives_an_answer_card(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test(size=(100, 30)) as pilot:
            await ask(pilot, "how long should I preheat the oven for bread?")
            text = card_text(app)
            answer = app.last_answer
            assert answer is not None and not answer.abstained and "20 minutes" in answer.text
            assert answer.text in text and answer.source.citation in text and answer.passage in text
            assert "Source:" in text and "Timings:" in text
    run(scenario())


def test_abstention_lists_passages_to_read(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test(size=(100, 30)) as pilot:
            await ask(pilot, "who won the football world cup in 1998?")
            text = card_text(app)
            assert "No answer" in text and "Passages to read instead" in text
    run(scenario())


def test_empty_question_is_explained_not_sent(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test() as pilot:
            await ask(pilot, "   ")
            assert "Type a question first" in card_text(app) and app.last_answer is None
    run(scenario())


def test_history_recalls_previous_questions(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test() as pilot:
            await ask(pilot, "first question about the lathe?")
            await ask(pilot, "second question about metformin?")
            field = app.query_one(QuestionInput)
            await pilot.press("up")
            assert field.value == "second question about metformin?"
            await pilot.press("up")
            assert field.value == "first question about the lathe?"
            await pilot.press("down", "down")
            assert field.value == ""
    run(scenario())


def test_browse_documents_and_sections(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test(size=(100, 30)) as pilot:
            tree = app.query_one("#kb", Tree)
            titles = [str(n.label) for n in tree.root.children]
            assert len(titles) == 7 and any(t.startswith("Metformin") for t in titles)
            tree.focus()
            await pilot.press("home", "space")  # expand the first document
            await pilot.press("down", "enter")  # select its first section
            await pilot.pause()
            assert tree.cursor_node.data is not None
            assert tree.cursor_node.data.section.text[:40] in card_text(app)
    run(scenario())


def test_jump_from_answer_to_its_section(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test(size=(100, 30)) as pilot:
            await ask(pilot, "what should I do if I miss a dose of metformin?")
            await pilot.press("ctrl+j")
            await pilot.pause()
            tree = app.query_one("#kb", Tree)
            assert tree.has_focus
            assert tree.cursor_node.data.section.path == app.last_answer.source.section
    run(scenario())


def test_help_screen_opens_and_closes(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test() as pilot:
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
    run(scenario())


def test_clear_resets_question_and_card(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test() as pilot:
            await ask(pilot, "how do I lock out the conveyor?")
            await pilot.press("ctrl+l")
            assert app.query_one(QuestionInput).value == "" and app.last_answer is None
            assert "Ask a question" in card_text(app)
    run(scenario())


def test_fits_80_by_24(backend):
    async def scenario():
        app = ApplianceTUI(backend=backend)
        async with app.run_test(size=(80, 24)) as pilot:
            await ask(pilot, "how long should I preheat the oven for bread?")
            for selector in ("#kb", "#question", "#card"):
                region = app.query_one(selector).region
                assert region.width >= 20 and region.height >= 3 and region.right <= 80 and region.bottom <= 24
    run(scenario())


def test_backend_errors_are_shown_in_the_ui():
    class Broken:
        name = "broken"

        def ask(self, question):
            raise RuntimeError("disk on fire")

        def outline(self):
            return []

    async def scenario():
        app = ApplianceTUI(backend=Broken())
        async with app.run_test() as pilot:
            await ask(pilot, "anything?")
            assert "disk on fire" in card_text(app)
    run(scenario())


def test_uses_the_daemon_socket_when_one_runs(pipeline, tmp_path, config):
    from test_api import RunningServer

    running = RunningServer(pipeline, tmp_path / "d.sock")
    try:
        backend = connect_backend(config, None, None, tmp_path / "d.sock")
        assert isinstance(backend, SocketBackend)
        assert backend.ask("how long should I preheat the oven for bread?").source is not None
        assert len(backend.outline()) == 7
        backend.client.close()
    finally:
        running.stop()
