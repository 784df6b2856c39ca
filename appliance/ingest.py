"""Knowledge-base files → sections → passages sized for the reader.

Each passage keeps its heading path, which is the citation the box speaks ("metformin guide,
section Missed dose"). A file that cannot be read is skipped with a warning naming it; the
rest of the knowledge base is still indexed.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

from appliance.errors import IngestError

SPL_NS = "{urn:hl7-org:v3}"
SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".xml"}


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # heading path below the document title
    text: str


@dataclass(frozen=True)
class Document:
    title: str
    source: str  # path relative to the knowledge-base root
    sections: list[Section]


@dataclass(frozen=True)
class Passage:
    doc_title: str
    source: str
    section: tuple[str, ...]
    text: str

    @property
    def citation(self) -> str:
        return " > ".join((self.doc_title, *self.section))

    def search_text(self) -> str:
        """What the retrievers see: headings carry much of a passage's topic."""
        return f"{self.citation}. {self.text}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Passage:
        return cls(data["doc_title"], data["source"], tuple(data["section"]), data["text"])


def _normalise_space(text: str) -> str:
    return re.sub(r"[ \t\r\f\v]+", " ", text).strip()


def _title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name


# --- readers, one per format -------------------------------------------------------------

def _decode(raw: bytes, path: Path) -> str:
    if b"\x00" in raw[:8192]:
        raise IngestError(f"{path}: looks binary (NUL bytes), skipped")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}), skipped") from None


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def read_markdown(raw: bytes, path: Path) -> Document:
    text = _decode(raw, path)
    title = ""
    stack: list[tuple[int, str]] = []  # (level, heading) below the title
    sections: list[Section] = []
    buffer: list[str] = []
    in_code = False

    def flush() -> None:
        body = "\n".join(buffer).strip()
        buffer.clear()
        if body:
            sections.append(Section(tuple(h for _, h in stack), body))

    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else _HEADING.match(line)
        if not match:
            buffer.append(_strip_markdown(line))
            continue
        flush()
        level, heading = len(match.group(1)), _strip_markdown(match.group(2))
        if level == 1 and not title:
            title = heading
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
    flush()
    return Document(title or _title_from_name(path), "", sections)


def _strip_markdown(line: str) -> str:
    line = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", line)  # images
    line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)  # links
    line = re.sub(r"(\*\*|__|`)", "", line)
    line = re.sub(r"^\s*([-*+]|\d+[.)])\s+", "", line)  # list markers
    line = re.sub(r"^\s*>\s?", "", line)  # quotes
    if re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", line) and "-" in line:
        return ""  # table rule
    return line.replace("|", " ").strip() if line.strip().startswith("|") else line


def read_text(raw: bytes, path: Path) -> Document:
    return Document(_title_from_name(path), "", [Section((), _decode(raw, path))])


class _HTMLSections(HTMLParser):
    """Collects text under h1–h6 headings; ignores script/style and anything invisible."""

    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCK = {"p", "div", "li", "br", "tr", "td", "th", "section", "article", "pre", "dd", "dt", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.in_title = False
        self.skip_depth = 0
        self.heading_level = 0
        self.heading_text: list[str] = []
        self.stack: list[tuple[int, str]] = []
        self.buffer: list[str] = []
        self.sections: list[Section] = []
        self.h1_title = ""

    def flush(self) -> None:
        body = "\n".join(p.strip() for p in "".join(self.buffer).split("\n") if p.strip())
        self.buffer.clear()
        if body:
            self.sections.append(Section(tuple(h for _, h in self.stack), body))

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "title":
            self.in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading_level, self.heading_text = int(tag[1]), []
        elif tag in self.BLOCK:
            self.buffer.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "title":
            self.in_title = False
        elif re.fullmatch(r"h[1-6]", tag) and self.heading_level:
            heading = _normalise_space(" ".join(self.heading_text))
            level, self.heading_level = self.heading_level, 0
            if level == 1 and not self.h1_title:
                self.h1_title = heading
                return
            while self.stack and self.stack[-1][0] >= level:
                self.stack.pop()
            if heading:
                self.stack.append((level, heading))
        elif tag in self.BLOCK:
            self.buffer.append("\n")

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.in_title:
            self.title += data
        elif self.heading_level:
            self.heading_text.append(data)
        else:
            self.buffer.append(data)


def read_html(raw: bytes, path: Path) -> Document:
    parser = _HTMLSections()
    parser.feed(_decode(raw, path))
    parser.close()
    parser.flush()
    title = _normalise_space(parser.h1_title or parser.title) or _title_from_name(path)
    return Document(title, "", parser.sections)


def read_pdf(raw: bytes, path: Path) -> Document:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # our own warning names the file instead
    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise IngestError(f"{path}: malformed PDF ({type(exc).__name__}: {exc}), skipped") from None
    sections = [Section((f"page {i}",), text) for i, text in enumerate(pages, 1) if text.strip()]
    return Document(_normalise_space(str(meta_title)) or _title_from_name(path), "", sections)


def _spl_text(element) -> str:
    """Paragraphs, list items and table cells of an SPL <text> block, one per line."""
    lines: list[str] = []
    for node in element.iter():
        tag = node.tag.replace(SPL_NS, "")
        if tag in {"paragraph", "item", "td", "th", "caption"}:
            text = _normalise_space(" ".join(t for t in node.itertext()))
            if text and (not lines or lines[-1] != text):
                lines.append(text)
    if not lines:
        text = _normalise_space(" ".join(element.itertext()))
        lines = [text] if text else []
    return "\n".join(lines)


def _first_text(root, xpath: str) -> str:
    node = root.find(xpath)
    return _normalise_space(" ".join(node.itertext())) if node is not None else ""


def _spl_title(root) -> str:
    """The label's own title unless it is boilerplate; then the product (and generic) name."""
    title = _first_text(root, f"{SPL_NS}title")
    if title and not re.match(r"(these highlights|drug facts)", title, re.IGNORECASE):
        return title
    product = _first_text(root, f".//{SPL_NS}manufacturedProduct/{SPL_NS}manufacturedProduct/{SPL_NS}name") \
        or _first_text(root, f".//{SPL_NS}manufacturedProduct/{SPL_NS}manufacturedMedicine/{SPL_NS}name")
    generic = _first_text(root, f".//{SPL_NS}genericMedicine/{SPL_NS}name")
    if product and generic and generic.lower() != product.lower():
        return f"{product} ({generic.lower()})"
    return product or generic or title


def read_spl(raw: bytes, path: Path) -> Document:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.fromstring(raw)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise IngestError(f"{path}: malformed or unsafe XML ({type(exc).__name__}: {exc}), skipped") from None
    if root.tag != f"{SPL_NS}document":
        raise IngestError(f"{path}: XML but not an HL7 SPL drug label (root <{root.tag}>), skipped")
    title = _spl_title(root)
    sections: list[Section] = []

    def walk(section, heading_path: tuple[str, ...]) -> None:
        title_node = section.find(f"{SPL_NS}title")
        heading = _normalise_space(" ".join(title_node.itertext())) if title_node is not None else ""
        if not heading:
            code = section.find(f"{SPL_NS}code")
            heading = (code.get("displayName") or "").strip().capitalize() if code is not None else ""
        here = heading_path + ((heading,) if heading else ())
        text_node = section.find(f"{SPL_NS}text")
        if text_node is not None:
            body = _spl_text(text_node)
            if body:
                sections.append(Section(here, body))
        for child in section.findall(f"{SPL_NS}component/{SPL_NS}section"):
            walk(child, here)

    for top in root.findall(f"{SPL_NS}component/{SPL_NS}structuredBody/{SPL_NS}component/{SPL_NS}section"):
        walk(top, ())
    return Document(title or _title_from_name(path), "", sections)


READERS: dict[str, Callable[[bytes, Path], Document]] = {
    ".md": read_markdown, ".markdown": read_markdown, ".txt": read_text,
    ".html": read_html, ".htm": read_html, ".pdf": read_pdf, ".xml": read_spl,
}


def read_document(path: Path, root: Path, max_bytes: int) -> Document:
    """Parse one file; IngestError (naming the file) for anything that cannot be indexed."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise IngestError(f"{path}: unsupported file type, skipped")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise IngestError(f"{path}: {size} bytes is over the {max_bytes}-byte limit, skipped")
        raw = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror}), skipped") from None
    if not raw.strip():
        raise IngestError(f"{path}: empty file, skipped")
    try:
        doc = reader(raw, path)
    except RecursionError:
        raise IngestError(f"{path}: nested too deeply to parse, skipped") from None
    if not any(s.text.strip() for s in doc.sections):
        raise IngestError(f"{path}: no text found, skipped")
    return Document(doc.title, str(path.relative_to(root)), doc.sections)


def iter_kb_files(root: Path) -> Iterator[Path]:
    """Files under the knowledge-base root, sorted; symlinks that leave the root are not followed."""
    root_resolved = root.resolve()
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root_resolved):
            yield path  # read_document is never reached: the caller reports it
            continue
        if path.is_file():
            yield path


def escapes_root(path: Path, root: Path) -> bool:
    return not path.resolve().is_relative_to(root.resolve())


# --- passages ----------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _pieces(text: str, max_words: int) -> Iterator[str]:
    """Paragraphs, with over-long ones cut at sentence boundaries (or hard-cut by words)."""
    for para in re.split(r"\n\s*\n|\n", text):
        para = _normalise_space(para)
        if not para:
            continue
        if len(para.split()) <= max_words:
            yield para
            continue
        for sentence in split_sentences(para):
            words = sentence.split()
            for i in range(0, len(words), max_words):
                yield " ".join(words[i : i + max_words])


def section_passages(doc: Document, section: Section, max_words: int) -> list[Passage]:
    """Greedily pack a section's paragraphs into passages of at most ``max_words`` words."""
    passages: list[Passage] = []
    current: list[str] = []
    count = 0
    for piece in _pieces(section.text, max_words):
        n = len(piece.split())
        if current and count + n > max_words:
            passages.append(Passage(doc.title, doc.source, section.path, "\n".join(current)))
            current, count = [], 0
        current.append(piece)
        count += n
    if current:
        passages.append(Passage(doc.title, doc.source, section.path, "\n".join(current)))
    return passages


def document_passages(doc: Document, max_words: int) -> list[Passage]:
    return [p for s in doc.sections for p in section_passages(doc, s, max_words)]
