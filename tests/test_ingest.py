"""Every ingestion format, and every kind of unreadable file, on real bytes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_pdf

from appliance.errors import IngestError
from appliance.config import IngestConfig
from appliance.index import IndexSummary, collect_passages
from appliance.ingest import document_passages, read_document, split_sentences

MARKDOWN = """# Oven manual

Intro text about the oven.

## Preheating

For bread, preheat the oven for 20 minutes.

### Convection

Reduce the temperature by 15 degrees.

## Cleaning

```
## not a heading inside code
```
Wipe the door with a damp cloth.
"""


def write(root: Path, name: str, data: bytes | str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_markdown_sections_follow_heading_path(tmp_path):
    doc = read_document(write(tmp_path, "oven.md", MARKDOWN), tmp_path, 10**6)
    assert doc.title == "Oven manual" and doc.source == "oven.md"
    by_path = {s.path: s.text for s in doc.sections}
    assert "20 minutes" in by_path[("Preheating",)]
    assert "15 degrees" in by_path[("Preheating", "Convection")]
    assert "damp cloth" in by_path[("Cleaning",)]
    assert ("not a heading inside code",) not in by_path


def test_plain_text_title_comes_from_file_name(tmp_path):
    doc = read_document(write(tmp_path, "shop-rules.txt", "Wear eye protection at the lathe."), tmp_path, 10**6)
    assert doc.title == "Shop rules" and "eye protection" in doc.sections[0].text


def test_html_headings_and_invisible_text(tmp_path):
    html = ("<html><head><title>T</title><style>p{}</style></head><body><h1>Dryer guide</h1>"
            "<script>alert('x')</script><h2>Lint filter</h2><p>Clean the lint filter after every load.</p>"
            "<h3>Deep clean</h3><ul><li>Wash it monthly.</li></ul></body></html>")
    doc = read_document(write(tmp_path, "dryer.html", html), tmp_path, 10**6)
    assert doc.title == "Dryer guide"
    sections = {s.path: s.text for s in doc.sections}
    assert "after every load" in sections[("Lint filter",)]
    assert "monthly" in sections[("Lint filter", "Deep clean")]
    assert not any("alert" in s.text for s in doc.sections)


def test_pdf_pages_become_sections(tmp_path):
    pdf = make_pdf(["Hydraulic press manual.", "Check the oil level every 40 hours."])
    doc = read_document(write(tmp_path, "press.pdf", pdf), tmp_path, 10**6)
    assert doc.sections[0].path == ("page 1",)
    assert "every 40 hours" in doc.sections[0].text


def test_real_fda_spl_labels(shared_data):
    root = shared_data / "kb" / "fda-spl"
    if not (root / "humira.xml").is_file():
        pytest.skip("../shared/data/kb/fda-spl is not present on this machine")
    doc = read_document(root / "humira.xml", root, 10**8)
    assert doc.title.lower().startswith("humira")
    assert len(doc.sections) > 20
    passages = document_passages(doc, 180)
    assert any("adalimumab" in p.text.lower() for p in passages)
    assert all(len(p.text.split()) <= 180 for p in passages)
    cough = read_document(root / "cough.xml", root, 10**8)
    assert any(s.path[-1:] == ("Do not use",) for s in cough.sections)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<document xmlns="urn:hl7-org:v3"><title>&lol3;</title></document>"""


@pytest.mark.parametrize("name, data, reason", [
    ("blob.md", b"\x00\x01\x02binary" * 100, "binary"),
    ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "not valid UTF-8"),
    ("empty.md", b"   \n\n", "empty"),
    ("broken.xml", b"<document xmlns='urn:hl7-org:v3'><title>unclosed", "malformed"),
    ("laughs.xml", BILLION_LAUGHS.encode(), "unsafe"),
    ("other.xml", b"<rss><channel/></rss>", "not an HL7 SPL"),
    ("bad.pdf", b"%PDF-1.4\nthis is not really a pdf", "PDF"),
    ("headings-only.md", b"# Title\n## Empty section\n", "no text"),
    ("picture.png", b"\x89PNG\r\n", "unsupported"),
])
def test_unreadable_files_raise_ingest_error_naming_the_file(tmp_path, name, data, reason):
    path = write(tmp_path, name, data)
    with pytest.raises(IngestError, match=reason) as info:
        read_document(path, tmp_path, 10**6)
    assert name in str(info.value)


def test_oversized_file_is_skipped(tmp_path):
    path = write(tmp_path, "huge.txt", "word " * 1000)
    with pytest.raises(IngestError, match="limit"):
        read_document(path, tmp_path, 100)


def test_bad_files_are_skipped_and_the_rest_indexed(tmp_path):
    kb = tmp_path / "kb"
    write(kb, "good.md", MARKDOWN)
    write(kb, "bad.txt", b"\xff\xfe\x00\x00garbage")
    write(kb, "sub/also-good.txt", "The filter is cleaned every week.")
    outside = write(tmp_path, "secret.md", "# Secret\n\nThis file lives outside the knowledge base.")
    os.symlink(outside, kb / "escape.md")
    summary = IndexSummary()
    passages = collect_passages(kb, IngestConfig(180, 10**6), summary)
    assert summary.documents == 2
    assert {p.source for p in passages} == {"good.md", "sub/also-good.txt"}
    assert len(summary.skipped) == 2
    assert any("bad.txt" in s for s in summary.skipped)
    assert any("escape.md" in s and "symlink" in s for s in summary.skipped)
    assert not any("outside the knowledge base" in p.text for p in passages)


def test_long_sections_are_split_at_sentences_within_the_word_limit(tmp_path):
    body = " ".join(f"Sentence number {i} explains one more maintenance step." for i in range(80))
    doc = read_document(write(tmp_path, "long.md", f"# Long\n\n## Steps\n\n{body}\n"), tmp_path, 10**6)
    passages = document_passages(doc, 60)
    assert len(passages) > 5
    assert all(len(p.text.split()) <= 60 for p in passages)
    assert all(p.section == ("Steps",) for p in passages)
    assert " ".join(p.text for p in passages).split() == body.split()


def test_sentence_splitting():
    assert split_sentences("Take it with food. Do not crush it! Is it safe? Yes.") == [
        "Take it with food.", "Do not crush it!", "Is it safe?", "Yes."]
    assert split_sentences("Use 2.5 mg daily.") == ["Use 2.5 mg daily."]


FUZZ_CORPUS = sorted((Path(__file__).parent / "data" / "fuzz-corpus").glob("*"))


@pytest.mark.parametrize("case", FUZZ_CORPUS, ids=[p.name for p in FUZZ_CORPUS])
def test_fuzz_corpus_parses_or_is_skipped_cleanly(tmp_path, case):
    """Inputs the parser fuzzer (benchmarks/fuzz_parsers.py) kept: each must keep behaving."""
    path = tmp_path / case.name
    path.write_bytes(case.read_bytes())
    expected_skip = "skipped" in case.name
    try:
        read_document(path, tmp_path, 50_000_000)
        assert not expected_skip
    except IngestError:
        assert expected_skip


def test_a_50_mb_file_is_skipped_without_reading_it(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    with pytest.raises(IngestError, match="limit"):
        read_document(path, tmp_path, 20_000_000)


def test_deeply_nested_html_is_read_or_skipped(tmp_path):
    html = "<div>" * 50_000 + "<h2>Deep</h2><p>Still readable text.</p>" + "</div>" * 50_000
    doc = read_document(write(tmp_path, "deep.html", html), tmp_path, 10**7)
    assert any("Still readable" in s.text for s in doc.sections)


def test_deeply_nested_spl_is_skipped_or_read(tmp_path):
    inner = "<section><text><paragraph>x</paragraph></text><component>" * 3000 + "</component></section>" * 3000
    xml = f'<document xmlns="urn:hl7-org:v3"><title>Deep</title><component><structuredBody><component>{inner}' \
          "</component></structuredBody></component></document>"
    with pytest.raises(IngestError, match="deep.xml.*nested too deeply"):
        read_document(write(tmp_path, "deep.xml", xml), tmp_path, 10**7)


def test_untitled_spl_sections_are_cited_by_what_they_are(tmp_path):
    """Untitled SPL sections take a heading from their LOINC code's name only when it says
    something: text in an "unclassified" section stays under its parent's heading."""
    def section(code: str, title: str, text: str, children: str = "") -> str:
        title_xml = f"<title>{title}</title>" if title else ""
        return (f'<component><section><code code="x" displayName="{code}"/>{title_xml}'
                f"<text><paragraph>{text}</paragraph></text>{children}</section></component>")

    body = (section("CLINICAL PHARMACOLOGY SECTION", "12.3 Pharmacokinetics", "Absorbed within 2 hours.",
                    section("SPL UNCLASSIFIED SECTION", "", "Food lowers absorption by 9%."))
            + section("SPL MEDGUIDE SECTION", "", "Read this guide before you start.")
            + section("BOXED WARNING SECTION", "", "May cause liver injury."))
    xml = f'<document xmlns="urn:hl7-org:v3"><title>Examplin</title><component><structuredBody>{body}' \
          "</structuredBody></component></document>"
    doc = read_document(write(tmp_path, "examplin.xml", xml), tmp_path, 10**7)
    paths = {s.text: s.path for s in doc.sections}
    assert paths["Food lowers absorption by 9%."] == ("12.3 Pharmacokinetics",)
    assert paths["Read this guide before you start."] == ("Medication Guide",)
    assert paths["May cause liver injury."] == ("Boxed warning",)
