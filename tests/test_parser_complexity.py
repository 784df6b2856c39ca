"""Every knowledge-base reader runs in linear time on adversarial inputs.

Each case is parsed (and packed into passages, as indexing does) at 100 KB and at 1 MB. The
1 MB input must take at most 30× the CPU time of the 100 KB one — at most 3× worse than linear
per 10× input; a quadratic parser takes 100× — and at most 2 s. CPU time, not wall time, so
other work on the machine does not decide the result.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import make_pdf

from appliance.errors import IngestError
from appliance.ingest import document_passages, read_document

SMALL, LARGE = 100_000, 1_000_000
MAX_RATIO = 30.0
MAX_LARGE_S = 2.0
FLOOR_S = 0.02  # below this the small timing is noise: compare against the floor instead


def fill(unit: str, size: int) -> bytes:
    return (unit * (size // len(unit) + 1)).encode()[:size]


SPL_HEAD = ('<document xmlns="urn:hl7-org:v3"><title>Deep</title><component><structuredBody><component>'
            '<section><title>S</title><text>')
SPL_TAIL = "</text></section></component></structuredBody></component></document>"


def spl(open_: str, close: str, size: int) -> bytes:
    n = max(1, (size - len(SPL_HEAD) - len(SPL_TAIL)) // (len(open_) + len(close)))
    return (SPL_HEAD + open_ * n + "x" + close * n + SPL_TAIL).encode()


CASES = {
    "md-lines-of-5000-spaces": (".md", lambda n: fill("# T\n" + " " * 5000 + "x\n", n)),
    "md-heading-of-spaces": (".md", lambda n: ("#" + " " * (n - 4) + "x#\n").encode()),
    "md-table-rule-that-is-not": (".md", lambda n: ("|" + " -" * (n // 2 - 2) + "x\n").encode()),
    "md-unclosed-images": (".md", lambda n: fill("![a", n)),
    "md-unclosed-links": (".md", lambda n: fill("[a](", n)),
    "md-brackets": (".md", lambda n: fill("[x]", n)),
    "md-digits-no-list-marker": (".md", lambda n: ("1" * (n - 2) + "x\n").encode()),
    "txt-sentence-end-then-spaces": (".txt", lambda n: fill(". " + " " * 1000 + "a", n)),
    "txt-newline-then-spaces": (".txt", lambda n: fill("\n" + " " * 1000 + "a", n)),
    "txt-one-word": (".txt", lambda n: fill("a", n)),
    "html-unclosed-a-tags": (".html", lambda n: fill("<a", n)),
    "html-lone-lt": (".html", lambda n: fill("<", n)),
    "html-unclosed-comments": (".html", lambda n: fill("<!--", n)),
    "html-quoted-attribute": (".html", lambda n: fill('<a b=">', n)),
    "html-deep-divs": (".html", lambda n: fill("<div>", n)),
    "html-headings": (".html", lambda n: fill("<h2>x</h2><h3>y</h3>", n)),
    "html-charrefs": (".html", lambda n: fill("&#&amp", n)),
    "html-declarations": (".html", lambda n: fill("<!x", n)),
    "html-end-tags": (".html", lambda n: fill("</", n)),
    "pdf-long-content-stream": (".pdf", lambda n: make_pdf(["Check the oil level every 40 hours."] * (n // 48))),
    "pdf-nested-arrays": (".pdf", lambda n: b"%PDF-1.4\n1 0 obj\n" + b"[" * (n - 25) + b"\nendobj\n"),
    "pdf-open-strings": (".pdf", lambda n: b"%PDF-1.4\n" + b"(" * (n - 9)),
    "pdf-open-dicts": (".pdf", lambda n: b"%PDF-1.4\n" + fill("<< /A ", n - 9)),
    "spl-nested-paragraphs": (".xml", lambda n: spl("<paragraph>", "</paragraph>", n)),
    "spl-nested-content": (".xml", lambda n: spl("<paragraph><content>", "</content></paragraph>", n)),
    "spl-many-paragraphs": (".xml", lambda n: spl("<paragraph>a b</paragraph>", "", n)),
    "spl-nested-sections": (".xml", lambda n: spl("<component><section><text><paragraph>p</paragraph></text>",
                                                  "</section></component>", n)),
}


def cpu_seconds(path: Path, data: bytes) -> float:
    path.write_bytes(data)
    started = time.process_time()
    try:
        document_passages(read_document(path, path.parent, 50_000_000), 180)
    except IngestError:
        pass  # a clear skip is a fine outcome; only the time matters here
    return time.process_time() - started


@pytest.mark.parametrize("name", CASES)
def test_reader_is_linear_on_adversarial_input(tmp_path, name):
    suffix, make = CASES[name]
    small_data, large_data = make(SMALL), make(LARGE)
    assert 0.8 * LARGE <= len(large_data) <= 1.2 * LARGE
    small = min(cpu_seconds(tmp_path / f"small{suffix}", small_data) for _ in range(2))
    large = cpu_seconds(tmp_path / f"large{suffix}", large_data)
    for _ in range(2):  # a busy machine inflates CPU time too: the best of up to three runs counts
        if large <= MAX_LARGE_S and large <= MAX_RATIO * max(small, FLOOR_S):
            break
        large = min(large, cpu_seconds(tmp_path / f"large{suffix}", large_data))
    assert large <= MAX_LARGE_S, f"{name}: 1 MB took {large:.2f} s of CPU"
    assert large <= MAX_RATIO * max(small, FLOOR_S), f"{name}: 100 KB {small:.3f} s, 1 MB {large:.3f} s"


def test_every_format_is_covered():
    assert {suffix for suffix, _ in CASES.values()} == {".md", ".txt", ".html", ".pdf", ".xml"}
