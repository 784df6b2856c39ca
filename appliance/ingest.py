"""Knowledge-base files → sections → passages sized for the reader.

Each passage keeps its heading path, which is the citation the box speaks ("metformin guide,
section Missed dose"). A file that cannot be read is skipped with a warning naming it; the
rest of the knowledge base is still indexed.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import IngestError
from appliance.formats import (  # noqa: F401 - the readers are part of this module's interface
    READERS,
    SPL_NS,
    Document,
    Section,
    clean_text,
    normalise_space,
    read_html,
    read_markdown,
    read_pdf,
    read_spl,
    read_text,
    safe_name,
)
from appliance.schema import Passage  # noqa: F401 - what this module produces

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".xml"}


# --- files ---------------------------------------------------------------------------------

def read_document(path: Path, root: Path, max_bytes: int) -> Document:
    """Parse one file; IngestError (naming the file) for anything that cannot be indexed."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise IngestError(f"{safe_name(path)}: unsupported file type, skipped")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise IngestError(f"{safe_name(path)}: {size} bytes is over the {max_bytes}-byte limit, skipped")
        raw = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{safe_name(path)}: cannot read ({exc.strerror}), skipped") from None
    if not raw.strip():
        raise IngestError(f"{safe_name(path)}: empty file, skipped")
    try:
        doc = reader(raw, path)
    except IngestError:
        raise
    except RecursionError:
        raise IngestError(f"{safe_name(path)}: nested too deeply to parse, skipped") from None
    except Exception as exc:  # noqa: BLE001 - one unreadable file never stops the rest of the knowledge base
        log.debug("reader failed on %s", safe_name(path), exc_info=True)
        raise IngestError(f"{safe_name(path)}: cannot be parsed ({type(exc).__name__}: {str(exc)[:200]}), "
                          f"skipped") from None
    if not any(s.text.strip() for s in doc.sections):
        raise IngestError(f"{safe_name(path)}: no text found, skipped")
    sections = [Section(tuple(clean_text(h) for h in s.path), clean_text(s.text)) for s in doc.sections]
    return Document(clean_text(doc.title), safe_name(path.relative_to(root)), sections)


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
        para = normalise_space(para)
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
