"""One bad file never costs the rest of the knowledge base, and a disk that refuses writes never
costs the previous index. Real files (an AES-256 encrypted PDF, names that are not UTF-8 or hold a
newline), real file systems (a small tmpfs that fills up, one remounted read-only)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid

import pytest
from conftest import ROOT, make_pdf, run_cli

from appliance.errors import IngestError, StorageError
from appliance import runtime
from appliance.config import Config, IngestConfig
from appliance.index import CURRENT, IndexSummary, build_index, collect_passages, load_index
from appliance.ingest import read_document, safe_name

GOOD = "# Lathe\n\n## Oiling\n\nOil the tailstock every 8 hours of running.\n"


def encrypted_pdf(lines: list[str]) -> bytes:
    """A PDF whose trailer names an AES-256 (V5/R6) security handler, as an encrypting writer emits."""
    pdf = make_pdf(lines)
    handler = (b"<< /Filter /Standard /V 5 /R 6 /Length 256 /CF << /StdCF << /CFM /AESV3 /AuthEvent /DocOpen "
               b"/Length 32 >> >> /StmF /StdCF /StrF /StdCF /O <" + b"11" * 48 + b"> /U <" + b"22" * 48 +
               b"> /OE <" + b"33" * 32 + b"> /UE <" + b"44" * 32 + b"> /P -4 /Perms <" + b"55" * 16 + b"> >>")
    body, tail = pdf.split(b"xref\n", 1)
    offset = len(body)
    body += b"6 0 obj\n" + handler + b"\nendobj\n"
    rows = tail.split(b"\n")
    rows[0] = b"0 7"
    rows.insert(7, f"{offset:010d} 00000 n ".encode())
    tail = b"\n".join(rows).replace(b"<< /Size 6", b"<< /Size 7 /Encrypt 6 0 R /ID [<" + b"ab" * 16 + b"> <" +
                                    b"ab" * 16 + b">]")
    tail = re.sub(rb"startxref\n\d+", b"startxref\n" + str(len(body)).encode(), tail)
    return body + b"xref\n" + tail


def small_kb(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "lathe.md").write_text(GOOD)
    shutil.copy(ROOT / "knowledge" / "metformin-guide.md", root / "metformin-guide.md")
    return root


def test_aes256_encrypted_pdf_is_skipped_by_name(tmp_path):
    path = tmp_path / "secret-manual.pdf"
    path.write_bytes(encrypted_pdf(["Confidential maintenance schedule."]))
    with pytest.raises(IngestError, match=r"secret-manual\.pdf: encrypted PDF.*skipped"):
        read_document(path, tmp_path, 10**6)


def test_unreadable_files_of_every_kind_do_not_stop_the_rest(tmp_path):
    kb = small_kb(tmp_path / "kb")
    (kb / "secret.pdf").write_bytes(encrypted_pdf(["Confidential."]))
    (kb / "half.pdf").write_bytes(make_pdf(["Cut short."])[:200])
    (kb / "deep.xml").write_text('<document xmlns="urn:hl7-org:v3">' + "<component>" * 50_000)
    summary = IndexSummary()
    passages = collect_passages(kb, IngestConfig(180, 10**7), summary)
    assert summary.documents == 2 and {p.source for p in passages} == {"lathe.md", "metformin-guide.md"}
    assert sorted(w.split(":")[0].rsplit("/", 1)[-1] for w in summary.skipped) == ["deep.xml", "half.pdf", "secret.pdf"]


def test_file_names_that_are_not_utf8_or_hold_control_characters(tmp_path, encoder):
    kb = small_kb(tmp_path / "kb")
    raw_kb = os.fsencode(kb)
    for name in (b"caf\xe9-manual.md", b"two\nlines.md", b"rtl-\xe2\x80\xaegnp.md", b"bell\x07.txt"):
        with open(raw_kb + b"/" + name, "wb") as fh:
            fh.write(GOOD.replace("Lathe", "Drill").encode())
    (kb / "forged\nWARNING skipped everything.pdf").write_bytes(b"%PDF-1.4 broken")
    index_dir = tmp_path / "index"
    summary = build_index(kb, index_dir, encoder)  # storage only: no speech step
    assert summary.documents == 6
    sources = {p.source for p in load_index(index_dir).passages}
    assert {"caf\\xe9-manual.md", "two\\nlines.md", "rtl-\\u202egnp.md", "bell\\x07.txt"} <= sources
    for line in (index_dir / CURRENT / "passages.jsonl").read_bytes().splitlines():
        json.loads(line.decode("utf-8"))  # strict UTF-8, valid JSON
    assert len(summary.skipped) == 1
    warning = summary.skipped[0]
    assert "\n" not in warning and "forged\\nWARNING" in warning and warning.endswith("skipped")


@pytest.mark.slow  # `appliance index` loads the encoder
def test_cli_index_warnings_stay_one_line_each(tmp_path):
    kb = small_kb(tmp_path / "kb")
    (kb / "evil\nSkipped 0 file(s).pdf").write_bytes(b"not a pdf")
    (kb / "esc\x1b[2Jname.md").write_bytes(b"\xff\xfe not utf-8")
    result = run_cli("appliance", "index", "--kb", str(kb), "--index", str(tmp_path / "ix"), timeout=600)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert len(warnings) == 2 and "\x1b" not in result.stdout + result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("Skipped")] == ["Skipped 2 file(s):"]


def test_safe_name_round_trips_printable_names_unchanged():
    assert safe_name("Owner's manual – oven (EC-60).md") == "Owner's manual – oven (EC-60).md"
    assert safe_name(os.fsdecode(b"a\xffb")) == "a\\xffb"


# --- disk full and read-only: real small file systems ---------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    mounted = []

    def mount(size_kb: int):
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def du(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_disk_full_during_the_speech_adaptation_commits_nothing(tmp_path, encoder, small_fs):
    kb = small_kb(tmp_path / "kb")
    config = Config()
    probe = runtime.build_index(config, kb, tmp_path / "probe", encoder)  # each part's size, on a roomy disk
    version = load_index(tmp_path / "probe")
    asr, total = du(version.speech_adaptation), du(version.path)
    assert probe.passages and asr > 64 * 1024
    fs = small_fs((2 * total + 64 * 1024) // 1024 + 64)
    index_dir = fs / "index"
    runtime.build_index(config, kb, index_dir, encoder)
    before = load_index(index_dir)
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    room = (total - asr) + asr // 3  # the vectors and passages fit, the language model does not
    with open(fs / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - room, 0))
    with pytest.raises(StorageError, match="No space left") as info:
        runtime.build_index(config, kb, index_dir, encoder)
    assert info.value.exit_code == 5 and "previous" in str(info.value)
    after = load_index(index_dir)
    assert after.path == before.path and (after.speech_adaptation / "kb.lm").is_file()
    assert after.passages == before.passages
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-")]  # the partial build is gone
    (fs / "filler").unlink()
    runtime.build_index(config, kb, index_dir, encoder)  # with room again, rebuilds work
    assert load_index(index_dir).path != before.path


def test_read_only_index_folder_exits_5_and_keeps_the_index(tmp_path, encoder, small_fs):
    kb = small_kb(tmp_path / "kb")
    fs = small_fs(16 * 1024)
    index_dir = fs / "index"
    build_index(kb, index_dir, encoder)
    before = load_index(index_dir)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    result = run_cli("appliance", "index", "--kb", str(kb), "--index", str(index_dir), timeout=600)
    assert result.returncode == 5, result.stderr
    assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
    assert load_index(index_dir).passages == before.passages
    answer = run_cli("appliance", "ask", "how often should I oil the tailstock?", "--kb", str(kb), "--index",
                     str(index_dir), "--json", timeout=600)
    assert answer.returncode == 0, answer.stderr  # the previous index still answers
    assert "answering from the index as it is" in answer.stderr  # built without sentence vectors, not rebuildable
    assert json.loads(answer.stdout)["source"]["document"] == "Lathe"
