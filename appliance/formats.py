"""The knowledge-base formats: one reader per format (Markdown, text, HTML, PDF, SPL XML), each
turning a file's bytes into a Document of heading-path sections.

Every reader runs in time linear in its input (no backtracking regexes, no subtree re-walks), and
reports a file it cannot read with an IngestError naming the file by its safe name.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from appliance.errors import IngestError

SPL_NS = "{urn:hl7-org:v3}"


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # heading path below the document title
    text: str


@dataclass(frozen=True)
class Document:
    title: str
    source: str  # path relative to the knowledge-base root
    sections: list[Section]


def safe_name(path: str | os.PathLike) -> str:
    """A file name as it can be shown, logged and stored: bytes that are not UTF-8 as \\xNN,
    control and invisible characters (newline, escape, right-to-left override) as escapes, so a
    file name can neither break the index's JSON nor forge a log line."""
    text = os.fsdecode(path) if not isinstance(path, str) else path
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def clean_text(text: str) -> str:
    """Text that encodes as UTF-8 (a PDF can yield lone surrogates)."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def normalise_space(text: str) -> str:
    return re.sub(r"[ \t\r\f\v]+", " ", text).strip()


def _title_from_name(path: Path) -> str:
    return safe_name(path.stem).replace("-", " ").replace("_", " ").strip().capitalize() or safe_name(path.name)


# --- readers, one per format -------------------------------------------------------------

def _decode(raw: bytes, path: Path) -> str:
    if b"\x00" in raw[:8192]:
        raise IngestError(f"{safe_name(path)}: looks binary (NUL bytes), skipped")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{safe_name(path)}: not valid UTF-8 ({exc.reason} at byte {exc.start}), skipped") from None


def _heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading ("## Title ##"), parsed without regex backtracking."""
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or not line[level].isspace():
        return None
    return level, line[level:].strip().rstrip("#").rstrip()


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
        match = None if in_code else _heading(line)
        if not match:
            buffer.append(_strip_markdown(line))
            continue
        flush()
        level, heading = match[0], _strip_markdown(match[1])
        if level == 1 and not title:
            title = heading
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
    flush()
    return Document(title or _title_from_name(path), "", sections)


def _strip_links(line: str) -> str:
    """[text](url) and ![alt](url) → text / alt, in one left-to-right pass (no backtracking)."""
    out: list[str] = []
    i = 0
    while (j := line.find("[", i)) >= 0:
        k = line.find("]", j + 1)
        if k < 0:
            break  # no "]" after this "[", so none after any later one either
        if not line.startswith("(", k + 1):
            out.append(line[i:k + 1])
            i = k + 1
            continue
        m = line.find(")", k + 2)
        if m < 0:
            break
        out.append(line[i:j - 1] if j > i and line[j - 1] == "!" else line[i:j])
        out.append(line[j + 1:k])
        i = m + 1
    out.append(line[i:])
    return "".join(out)


_LIST_MARKER = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
_TABLE_RULE = re.compile(r"[\s:|-]+")  # one character class: linear, no nested quantifiers


def _strip_markdown(line: str) -> str:
    line = _strip_links(line)
    line = line.replace("**", "").replace("__", "").replace("`", "")
    marker = _LIST_MARKER.match(line)
    if marker:
        line = line[marker.end():]
    stripped = line.lstrip()
    if stripped.startswith(">"):  # quotes
        line = stripped[2:] if stripped[1:2].isspace() else stripped[1:]
    if "-" in line and _TABLE_RULE.fullmatch(line):
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
        self.title: list[str] = []
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
            heading = normalise_space(" ".join(self.heading_text))
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
            self.title.append(data)
        elif self.heading_level:
            self.heading_text.append(data)
        else:
            self.buffer.append(data)


def _defuse_markup(text: str) -> str:
    """The HTML with comments removed and every "<" that cannot open a tag (no ">" before the next
    "<") escaped as "&lt;". html.parser re-scans to the end of the input for each such "<" (200 KB
    of "<a" took 43 s); after this single pass every tag it sees ends within its own span."""
    out: list[str] = []
    i, gt, n = 0, -1, len(text)
    while (j := text.find("<", i)) >= 0:
        out.append(text[i:j])
        if text.startswith("<!--", j):
            end = text.find("-->", j + 4)
            i = n if end < 0 else end + 3  # an unclosed comment runs to the end, as browsers read it
            continue
        if gt != -2 and gt <= j:
            gt = text.find(">", j + 1)
            gt = -2 if gt < 0 else gt  # -2: no ">" left anywhere
        following = text.find("<", j + 1, gt if gt >= 0 else n)
        if gt == -2 or following >= 0:
            out.append("&lt;")
            i = j + 1
        else:
            out.append(text[j:gt + 1])
            i = gt + 1
    out.append(text[i:])
    return "".join(out)


def read_html(raw: bytes, path: Path) -> Document:
    parser = _HTMLSections()
    parser.feed(_defuse_markup(_decode(raw, path)))
    parser.close()
    parser.flush()
    title = normalise_space(parser.h1_title or "".join(parser.title)) or _title_from_name(path)
    return Document(title, "", parser.sections)


def read_pdf(raw: bytes, path: Path) -> Document:
    import io

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # our own warning names the file instead
    encrypted = False
    try:
        reader = PdfReader(io.BytesIO(raw))
        encrypted = reader.is_encrypted
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types, DependencyError (no AES support) too
        encrypted = encrypted or type(exc).__name__ in ("DependencyError", "FileNotDecryptedError",
                                                        "WrongPasswordError")
        kind = "encrypted PDF that cannot be opened" if encrypted else "malformed PDF"
        raise IngestError(f"{safe_name(path)}: {kind} ({type(exc).__name__}: {exc}), skipped") from None
    sections = [Section((f"page {i}",), text) for i, text in enumerate(pages, 1) if text.strip()]
    return Document(normalise_space(str(meta_title)) or _title_from_name(path), "", sections)


_SPL_BLOCKS = {f"{SPL_NS}{tag}" for tag in ("paragraph", "item", "td", "th", "caption")}


def _spl_text(element) -> str:
    """Paragraphs, list items and table cells of an SPL <text> block, one per line.

    One pass over the tree with an explicit stack: each piece of text is visited once however
    deeply blocks nest (walking every block's subtree again was quadratic), and no recursion."""
    lines: list[str] = []
    current: list[str] = []

    def flush() -> None:
        text = normalise_space(" ".join(current))
        current.clear()
        if text and (not lines or lines[-1] != text):
            lines.append(text)

    depth = 0  # blocks open around the current node
    stack: list[tuple[object, bool]] = [(element, False)]
    while stack:
        node, leaving = stack.pop()
        is_block = node.tag in _SPL_BLOCKS
        if leaving:
            if is_block:
                flush()
                depth -= 1
            if node.tail and depth and node is not element:
                current.append(node.tail)
            continue
        if is_block:
            flush()
            depth += 1
        if node.text and depth:
            current.append(node.text)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node))
    flush()
    if not lines:
        text = normalise_space(" ".join(element.itertext()))
        lines = [text] if text else []
    return "\n".join(lines)


def _first_text(root, xpath: str) -> str:
    node = root.find(xpath)
    return normalise_space(" ".join(node.itertext())) if node is not None else ""


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


SPL_CODE_HEADINGS = {"medguide": "Medication Guide", "patient package insert": "Patient information"}


def spl_code_heading(display_name: str) -> str:
    """A heading for an untitled SPL section from its LOINC code's name, as a listener would say
    it: "SPL MEDGUIDE SECTION" → "Medication Guide"; "SPL UNCLASSIFIED SECTION" says nothing, so
    its text stays under its parent's heading instead of being cited as "Spl unclassified section"."""
    name = re.sub(r"^spl\s+|\s+section$", "", " ".join(display_name.split()).lower())
    if name in ("", "unclassified"):
        return ""
    return SPL_CODE_HEADINGS.get(name, name.capitalize())


def read_spl(raw: bytes, path: Path) -> Document:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.fromstring(raw)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise IngestError(f"{safe_name(path)}: malformed or unsafe XML ({type(exc).__name__}: {exc}), "
                          "skipped") from None
    if root.tag != f"{SPL_NS}document":
        raise IngestError(f"{safe_name(path)}: XML but not an HL7 SPL drug label (root <{root.tag}>), skipped")
    title = _spl_title(root)
    sections: list[Section] = []

    def walk(section, heading_path: tuple[str, ...]) -> None:
        title_node = section.find(f"{SPL_NS}title")
        heading = normalise_space(" ".join(title_node.itertext())) if title_node is not None else ""
        if not heading:
            code = section.find(f"{SPL_NS}code")
            heading = spl_code_heading(code.get("displayName") or "") if code is not None else ""
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

