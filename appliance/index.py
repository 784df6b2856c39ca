"""Build and load the knowledge-base index atomically.

Layout: ``INDEX/current`` is a symlink to ``INDEX/v-<timestamp>/`` holding passages.jsonl,
dense.faiss, bm25.json and manifest.json, plus whatever the build's extra steps write (the KB
speech adaptation, composed in by ``appliance.runtime``). A build writes a new version in a
temporary directory, runs the steps on it, renames it, then swaps the symlink with one rename: a
crash at any point leaves the previous index intact, and a reader sees either the old or the new
version, never a mix. Storage only: this module knows nothing of speech.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from appliance.bm25 import BM25, TOKENS_VERSION
from appliance.config import IngestConfig
from appliance.encoder import SentenceEncoder
from appliance.errors import IndexMissingError, IngestError, StorageError
from appliance.ingest import (Passage, document_passages, escapes_root, iter_kb_files, read_document, safe_name,
                              split_sentences)
from appliance.retriever import SentenceVectors

log = logging.getLogger(__name__)
CURRENT = "current"
FILES = ("passages.jsonl", "dense.faiss", "bm25.json", "manifest.json")  # + sentences.faiss/.npy when asked for
SPEECH_ADAPTATION = "asr_adaptation"  # the manifest entry of the KB speech adaptation step
# What the document readers make of a KB: raised whenever formats/ingest change the passages an
# index holds (2: untitled SPL sections named from their codes), so older indexes are rebuilt.
PASSAGES_VERSION = 2
# An extra build step: writes into the staged version folder, returns its manifest record (None:
# skipped). Whatever a step raises fails the whole build, so a version is never committed half-written.
IndexStep = Callable[[list[Passage], Path], "dict | None"]


@dataclass
class IndexSummary:
    documents: int = 0
    passages: int = 0
    skipped: list[str] = field(default_factory=list)  # one warning per skipped file
    seconds: float = 0.0
    path: str = ""


@dataclass
class IndexVersion:
    """One committed version, loaded: what retrieval searches and what the voice stack adapts to."""

    passages: list[Passage]
    dense: faiss.Index
    bm25: BM25
    manifest: dict
    path: Path
    sentences: SentenceVectors | None = None

    @property
    def speech_adaptation(self) -> Path | None:
        """The folder of the KB speech adaptation built with this version; None when none was."""
        record = self.manifest.get(SPEECH_ADAPTATION)
        return self.path / record.get("dir", "asr") if isinstance(record, dict) else None  # "asr": older records


def collect_passages(kb_dir: Path, ingest: IngestConfig, summary: IndexSummary) -> list[Passage]:
    passages: list[Passage] = []
    for path in iter_kb_files(kb_dir):
        if escapes_root(path, kb_dir):
            summary.skipped.append(f"{safe_name(path)}: symlink leaves the knowledge-base root, not followed")
            continue
        try:
            doc = read_document(path, kb_dir, ingest.max_file_bytes)
        except IngestError as exc:
            summary.skipped.append(str(exc))
            continue
        summary.documents += 1
        passages += document_passages(doc, ingest.max_passage_words)
    return passages


def encode_passages(encoder: SentenceEncoder, texts: list[str], show: bool = False,
                    label: str = "encoding passages") -> np.ndarray:
    """Passages in chunks of 64, as every index is built: the int8 encoder quantises activations per
    batch, so evaluations that encode otherwise measure other vectors (2 of 131 KB test questions moved
    with chunks of 256)."""
    batch = 64
    chunks = range(0, len(texts), batch)
    if show and len(texts) > batch * 4:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=label, unit="batch", leave=False)
    parts = [encoder.encode(texts[i : i + batch]) for i in chunks]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def sentence_texts(bodies: Sequence[str], prefixes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sentences of each passage of more than one, each after its passage's heading path as
    ``Passage.search_text`` writes it ("prefix. sentence"; a bare sentence without a prefix), and
    the passage each belongs to. A one-sentence passage's own vector already is its sentence's."""
    texts, owner = [], []
    for i, (body, prefix) in enumerate(zip(bodies, prefixes)):
        sentences = split_sentences(body)
        if len(sentences) > 1:
            texts += [f"{prefix}. {s}" if prefix else s for s in sentences]
            owner += [i] * len(sentences)
    return texts, np.asarray(owner, dtype=np.int64)


def sentence_vectors(encoder: SentenceEncoder, bodies: Sequence[str], prefixes: Sequence[str],
                     show: bool = False) -> SentenceVectors:
    texts, owner = sentence_texts(bodies, prefixes)
    dense = faiss.IndexFlatIP(encoder.dim)
    if texts:
        dense.add(encode_passages(encoder, texts, show, "encoding sentences"))
    return SentenceVectors(dense, owner)


def build_index(kb_dir: Path, index_dir: Path, encoder: SentenceEncoder, ingest: IngestConfig | None = None,
                progress: bool = False, steps: Mapping[str, IndexStep] | None = None,
                sentences: bool = False) -> IndexSummary:
    """Index the KB as a new version and make it current; ``steps`` add their output to the version
    before it is committed (name → step; each record lands in the manifest under its name);
    ``sentences`` adds each passage's sentence vectors (``retriever.sentence_vectors``)."""
    started = time.time()
    ingest = ingest or IngestConfig()
    summary = IndexSummary()
    passages = _passages_to_index(kb_dir, ingest, summary)
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}"
    tmp = _staging_dir(index_dir, stamp)
    try:
        records = _write_search_files(tmp, passages, encoder, sentences, progress)
        records |= {name: step(passages, tmp) for name, step in (steps or {}).items()}
        manifest = {
            **records, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kb": str(kb_dir.resolve()),
            "documents": summary.documents, "passages": len(passages), "skipped": len(summary.skipped),
            "encoder_sha256": encoder.sha256, "passages_version": PASSAGES_VERSION,
            "bm25_tokens": TOKENS_VERSION, "max_passage_words": ingest.max_passage_words,
            "build_seconds": round(time.time() - started, 2),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _commit_version(tmp, index_dir, stamp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _storage_error(index_dir, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_old_versions(index_dir)
    summary.passages, summary.seconds, summary.path = len(passages), round(time.time() - started, 2), str(index_dir)
    return summary


def _passages_to_index(kb_dir: Path, ingest: IngestConfig, summary: IndexSummary) -> list[Passage]:
    """The KB's passages, each skipped file logged; an error before anything is written when none
    can be read, so the index in use stays."""
    if not kb_dir.is_dir():
        raise IndexMissingError(f"knowledge-base directory not found: {kb_dir}")
    passages = collect_passages(kb_dir, ingest, summary)
    for warning in summary.skipped:
        log.warning("skipped %s", warning)
    if not passages:
        raise IndexMissingError(f"no readable documents in {kb_dir}; nothing indexed (index left as it was)")
    return passages


def _staging_dir(index_dir: Path, stamp: str) -> Path:
    """A fresh folder for the new version beside the others (left-overs of killed builds removed)."""
    tmp = index_dir / f".tmp-{stamp}"
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(index_dir)
        tmp.mkdir()
    except OSError as exc:
        raise _storage_error(index_dir, exc) from None
    return tmp


def _write_search_files(tmp: Path, passages: list[Passage], encoder: SentenceEncoder, sentences: bool,
                        progress: bool) -> dict:
    """Passage vectors (and sentence vectors when asked), BM25 and the passages themselves; what the
    manifest records of them."""
    search_texts = [p.search_text() for p in passages]
    vectors = encode_passages(encoder, search_texts, progress)
    dense = faiss.IndexFlatIP(vectors.shape[1])
    dense.add(vectors)
    _write_faiss(dense, tmp / "dense.faiss")
    records: dict = {"dim": int(vectors.shape[1])}
    if sentences:
        units = sentence_vectors(encoder, [p.text for p in passages], [p.citation for p in passages], progress)
        _write_faiss(units.dense, tmp / "sentences.faiss")
        np.save(tmp / "sentences.npy", units.owner)
        records["sentence_vectors"] = len(units.owner)
    BM25.build(search_texts).save(tmp / "bm25.json")
    with open(tmp / "passages.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in passages)
    return records


def _commit_version(tmp: Path, index_dir: Path, stamp: str) -> None:
    """Everything on disk first, then one rename and one symlink swap: a reader of the index sees
    the old version or the new one, never a part of either."""
    _fsync_dir_files(tmp)
    final = index_dir / f"v-{stamp}"
    os.rename(tmp, final)
    _swap_current(index_dir, final.name)


def _storage_error(index_dir: Path, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    return StorageError(f"cannot write the index at {index_dir} ({reason}); nothing was committed and the previous "
                        f"index, if any, is still in use. Free space or make the folder writable, then rebuild.")


def _write_faiss(dense: faiss.Index, path: Path) -> None:
    """faiss reports a failed write as RuntimeError; say what the file system said instead."""
    try:
        faiss.write_index(dense, str(path))
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"writing {path.name} failed ({str(exc).strip().splitlines()[-1][:200]})") from None


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_dir_files(path)
            continue
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_current(index_dir: Path, target: str) -> None:
    link = index_dir / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
    os.replace(link, index_dir / CURRENT)


def _remove_stale_builds(index_dir: Path) -> None:
    """Leftovers of a build that was killed: never referenced by ``current``."""
    for path in index_dir.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in index_dir.glob(".current-*"):
        path.unlink(missing_ok=True)


def _remove_old_versions(index_dir: Path, keep_previous: int = 1) -> None:
    """Drop versions older than the current one and its predecessor: a reader that resolved the
    previous link a moment ago can still finish reading it."""
    current = os.readlink(index_dir / CURRENT)
    others = sorted((p for p in index_dir.glob("v-*") if p.name != current), key=lambda p: p.stat().st_mtime)
    for path in others[: max(len(others) - keep_previous, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def index_exists(index_dir: Path) -> bool:
    return (index_dir / CURRENT / "manifest.json").is_file()


def load_index(index_dir: Path, attempts: int = 3) -> IndexVersion:
    """Load the version ``current`` points at (resolved once, so files come from one version).

    If that version disappears while it is being read (two rebuilds in quick succession), the
    link is resolved again; a reader never combines files of two versions.
    """
    link = index_dir / CURRENT
    for attempt in range(attempts):
        try:
            version = index_dir / os.readlink(link)
        except OSError:
            raise IndexMissingError(f"no index at {index_dir}; build it with: appliance index --index {index_dir}") from None
        try:
            return _load_version(version)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            moved = os.readlink(link) != version.name if link.is_symlink() else True
            if moved and attempt + 1 < attempts:
                continue
            raise IndexMissingError(f"index at {index_dir} is unreadable ({exc}); rebuild it with: "
                                    f"appliance index --index {index_dir}") from None
    raise AssertionError("unreachable")


def _load_version(version: Path) -> IndexVersion:
    manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    with open(version / "passages.jsonl", encoding="utf-8") as fh:
        passages = [Passage.from_json(json.loads(line)) for line in fh]
    dense = faiss.read_index(str(version / "dense.faiss"))
    bm25 = BM25.load(version / "bm25.json")
    if dense.ntotal != len(passages) or manifest.get("passages") != len(passages):
        raise ValueError(f"{version} is inconsistent: {dense.ntotal} vectors, {len(passages)} passages")
    sentences = _load_sentences(version, len(passages)) if "sentence_vectors" in manifest else None
    return IndexVersion(passages, dense, bm25, manifest, version, sentences)


def _load_sentences(version: Path, passages: int) -> SentenceVectors:
    dense = faiss.read_index(str(version / "sentences.faiss"))
    owner = np.load(version / "sentences.npy", allow_pickle=False).astype(np.int64)
    if dense.ntotal != len(owner) or (len(owner) and not 0 <= owner.min() <= owner.max() < passages):
        raise ValueError(f"{version} is inconsistent: {dense.ntotal} sentence vectors, {len(owner)} owners")
    return SentenceVectors(dense, owner)
