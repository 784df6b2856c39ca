"""Terminal UI for text questions (Textual).

Talks to the running daemon over its socket when there is one, otherwise loads the pipeline in
process. Every model call runs in a worker thread, so the UI never freezes; every error is shown
in the UI, never as a traceback.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Input, Label, Markdown, ProgressBar, Static, Tree

from appliance.client import ApiClient, socket_in_use
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.schema import Answer, OutlineDocument, OutlineSection, Source, kb_outline


class Backend(Protocol):
    name: str

    def ask(self, question: str) -> Answer: ...

    def outline(self) -> list[OutlineDocument]: ...


class LocalBackend:
    name = "in process"

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self._outline = kb_outline(pipeline.index.passages)

    def ask(self, question: str) -> Answer:
        return self.pipeline.ask(question)

    def outline(self) -> list[OutlineDocument]:
        return self._outline


class SocketBackend:
    def __init__(self, socket_path: Path):
        self.client = ApiClient(socket_path)
        self.name = f"daemon at {socket_path}"

    def ask(self, question: str) -> Answer:
        return self.client.ask(question)

    def outline(self) -> list[OutlineDocument]:
        return self.client.outline()


def connect_backend(config: Config, kb: Path | None, index: Path | None, socket_path: Path | None) -> Backend:
    """The daemon's socket when it answers, else the pipeline in this process (built by the runtime,
    imported only then: the TUI itself needs no numpy, faiss or onnxruntime)."""
    path = socket_path or config.resolve(config.api.socket)
    if path.exists() and socket_in_use(path):
        return SocketBackend(path)
    from appliance import runtime

    return LocalBackend(runtime.load_pipeline(config, kb, index))


HELP = """\
# Appliance — help

Type a question and press **Enter**. The answer card shows the answer, how sure the reader is,
the document and section it comes from, and the passage with the answer highlighted.
When the reader is not sure enough it says so and lists the passages worth reading instead.

| key | action |
|---|---|
| Enter | ask the question |
| ↑ / ↓ in the question box | previous / next question |
| Tab / Shift+Tab | move focus: question → knowledge base → answer |
| Ctrl+J | jump to the answer's section in the knowledge base |
| Ctrl+S | speak the answer aloud (needs espeak-ng) |
| Ctrl+L | clear the question and the answer |
| F1 | this help |
| Ctrl+Q | quit |

Select a section in the knowledge-base panel to read it.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 90%;
                                   border: thick $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
            yield Label("Esc closes this help.")


class QuestionInput(Input):
    """An Input with shell-like history on ↑ / ↓."""

    BINDINGS = [Binding("up", "history(-1)", "Previous", show=False),
                Binding("down", "history(1)", "Next", show=False)]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: list[str] = []
        self.position = 0

    def remember(self, question: str) -> None:
        if question and (not self.history or self.history[-1] != question):
            self.history.append(question)
        self.position = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self.position = max(0, min(len(self.history), self.position + step))
        self.value = self.history[self.position] if self.position < len(self.history) else ""
        self.cursor_position = len(self.value)


@dataclass
class SectionRef:
    document: OutlineDocument
    section: OutlineSection


def highlighted_passage(answer: Answer) -> Text:
    text = Text(answer.passage)
    if not answer.abstained and answer.end > answer.start:
        text.stylize("bold reverse", answer.start, answer.end)
    return text


class AnswerCard(VerticalScroll):
    """The answer, its confidence, its source, the passage with the span highlighted, timings."""

    DEFAULT_CSS = """
    AnswerCard { border: round $primary; padding: 0 1; height: 1fr; }
    AnswerCard #answer-text { text-style: bold; color: $text; margin-bottom: 1; }
    AnswerCard #answer-text.abstained { color: $warning; }
    AnswerCard #answer-text.error { color: $error; }
    AnswerCard #confidence-row { height: 1; }
    AnswerCard #passage { margin-top: 1; color: $text-muted; }
    AnswerCard .dim { color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Ask a question about the knowledge base.", id="answer-text")
        with Horizontal(id="confidence-row"):
            yield Label("Confidence ", classes="dim")
            yield ProgressBar(total=1.0, show_eta=False, id="confidence")
        yield Static("", id="source")
        yield Static("", id="passage")
        yield Static("", id="timings", classes="dim")

    def on_mount(self) -> None:
        self.border_title = "Answer"
        self.query_one("#confidence-row").display = False

    def _set(self, headline: str | Text, css_class: str = "", source: str | Text = "", passage: str | Text = "",
             timings: str = "", confidence: float | None = None) -> None:
        headline_widget = self.query_one("#answer-text", Static)
        headline_widget.set_classes(css_class)
        headline_widget.update(headline)
        self.query_one("#confidence-row").display = confidence is not None
        if confidence is not None:
            self.query_one(ProgressBar).update(progress=confidence)
        self.query_one("#source", Static).update(source)
        self.query_one("#passage", Static).update(passage)
        self.query_one("#timings", Static).update(timings)
        self.scroll_home(animate=False)

    def show_answer(self, answer: Answer) -> None:
        timings = "Timings: " + ", ".join(f"{k} {v:.0f} ms" for k, v in answer.timings_ms.items())
        if answer.abstained:
            reading = Text("Passages to read instead:\n", style="bold")
            for source in answer.candidates:
                reading.append(f"  • {source.citation}\n")
            why = (f"the knowledge base never mentions {' or '.join(answer.unknown_codes)}" if answer.unknown_codes
                   else "the knowledge base does not say this clearly enough")
            self._set(f"No answer: I don't know: {why}.", "abstained", reading, "", timings, answer.confidence)
            return
        source = Text.assemble(("Source: ", "bold"), answer.source.citation)
        self._set(answer.text, "", source, highlighted_passage(answer), timings, answer.confidence)

    def show_section(self, ref: SectionRef) -> None:
        citation = " > ".join((ref.document.title, *ref.section.path))
        self._set(Text(citation), "", Text(ref.document.source, style="dim"), ref.section.text)

    def show_message(self, message: str, error: bool = False) -> None:
        self._set(message, "error" if error else "")

    def clear(self) -> None:
        self._set("Ask a question about the knowledge base.")


class ApplianceTUI(App):
    TITLE = "Appliance"
    SUB_TITLE = "offline answers from the knowledge base"
    CSS = """
    #kb { width: 34%; min-width: 24; border: round $secondary; overflow-x: hidden; }
    #main { width: 1fr; }
    QuestionInput { margin: 0 0 0 0; }
    """
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("f1", "help", "Help"),
        Binding("ctrl+s", "speak", "Speak"),
        Binding("ctrl+j", "jump", "Jump to source"),
    ]

    def __init__(self, config: Config | None = None, kb: Path | None = None, index: Path | None = None,
                 socket_path: Path | None = None, backend: Backend | None = None):
        super().__init__()
        self.config = config or Config()
        self.kb, self.index, self.socket_path = kb, index, socket_path
        self.backend: Backend | None = backend
        self.last_answer: Answer | None = None
        self.tts = shutil.which("espeak-ng")

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            tree: Tree[SectionRef | None] = Tree("Knowledge base", id="kb")
            tree.show_root = False
            yield tree
            with Vertical(id="main"):
                yield QuestionInput(placeholder="Ask a question and press Enter",
                                    id="question")
                yield AnswerCard(id="card")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#kb", Tree).border_title = "Knowledge base"
        self.query_one(QuestionInput).focus()
        if self.backend is None:
            self.query_one(AnswerCard).show_message("Loading the models and the index…")
            self.load_backend()
        else:
            self._backend_ready(self.backend)

    @work(thread=True, exclusive=True, group="load")
    def load_backend(self) -> None:
        try:
            backend = connect_backend(self.config, self.kb, self.index, self.socket_path)
        except ApplianceError as exc:
            self.call_from_thread(self.query_one(AnswerCard).show_message, f"Cannot start: {exc}", True)
            return
        self.call_from_thread(self._backend_ready, backend)

    def _backend_ready(self, backend: Backend) -> None:
        self.backend = backend
        self.sub_title = f"offline answers ({backend.name})"
        self._fill_tree(backend.outline())
        card = self.query_one(AnswerCard)
        if not self.last_answer:
            card.clear()

    def _fill_tree(self, documents: list[OutlineDocument]) -> None:
        tree = self.query_one("#kb", Tree)
        tree.clear()
        for doc in documents:
            refs = {section.path: SectionRef(doc, section) for section in doc.sections}
            paths = {path[:depth] for path in refs for depth in range(1, len(path) + 1)}
            parents = {path[:-1] for path in paths}
            doc_node = tree.root.add(doc.title, data=refs.get(()), expand=False)
            nodes = {(): doc_node}
            for path in sorted(paths, key=lambda p: (len(p), _first_position(doc, p))):
                add = nodes[path[:-1]].add if path in parents else nodes[path[:-1]].add_leaf
                nodes[path] = add(path[-1], data=refs.get(path))

    @on(Input.Submitted, "#question")
    def ask(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        field = self.query_one(QuestionInput)
        field.remember(question)
        if not question:
            self.query_one(AnswerCard).show_message("Type a question first.", error=True)
            return
        if self.backend is None:
            self.query_one(AnswerCard).show_message("Still loading the models; try again in a moment.")
            return
        self.query_one(AnswerCard).show_message(f"Looking for: {question}")
        self.run_question(question)

    @work(thread=True, exclusive=True, group="ask")
    def run_question(self, question: str) -> None:
        try:
            answer = self.backend.ask(question)
        except ApplianceError as exc:
            self.call_from_thread(self.query_one(AnswerCard).show_message, str(exc), True)
            return
        except Exception as exc:  # shown, not raised: the UI must survive a failing backend
            self.call_from_thread(self.query_one(AnswerCard).show_message, f"Error: {type(exc).__name__}: {exc}", True)
            return
        self.call_from_thread(self._show_answer, answer)

    def _show_answer(self, answer: Answer) -> None:
        self.last_answer = answer
        self.query_one(AnswerCard).show_answer(answer)

    @on(Tree.NodeSelected, "#kb")
    def show_section(self, event: Tree.NodeSelected) -> None:
        if isinstance(event.node.data, SectionRef):
            self.query_one(AnswerCard).show_section(event.node.data)

    def action_clear(self) -> None:
        self.last_answer = None
        self.query_one(QuestionInput).value = ""
        self.query_one(AnswerCard).clear()
        self.query_one(QuestionInput).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_jump(self) -> None:
        """Select the answer's section in the knowledge-base tree and show its text."""
        source: Source | None = self.last_answer.source if self.last_answer else None
        if source is None:
            self.notify("Ask a question first.", severity="warning")
            return
        tree = self.query_one("#kb", Tree)
        for node in _walk(tree.root):
            ref = node.data
            if isinstance(ref, SectionRef) and ref.document.source == source.file and ref.section.path == source.section:
                parent = node.parent
                while parent is not None:
                    parent.expand()
                    parent = parent.parent
                self.call_after_refresh(tree.move_cursor, node)  # line numbers exist once the tree redraws
                tree.focus()
                self.query_one(AnswerCard).show_section(ref)
                return
        self.notify("That section is not in the browser.", severity="warning")

    def action_speak(self) -> None:
        if not self.last_answer:
            self.notify("Nothing to speak yet.", severity="warning")
        elif not self.tts:
            self.notify("Speech is not available: espeak-ng is not installed.", severity="warning")
        else:
            self.speak(self.last_answer.spoken())

    @work(thread=True, group="speak")
    def speak(self, text: str) -> None:
        try:
            subprocess.run([self.tts, "--", text], check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            self.call_from_thread(self.notify, f"Speech failed: {exc}", severity="error")


def _first_position(doc: OutlineDocument, path: tuple[str, ...]) -> int:
    """Document order of a heading path: where its first section appears."""
    return next(i for i, s in enumerate(doc.sections) if s.path[: len(path)] == path)


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)
