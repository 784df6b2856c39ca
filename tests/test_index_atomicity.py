"""A build killed with SIGKILL at any point leaves the previous index intact and loadable, and
readers during a rebuild see the old or the new index, never a mix. Real processes, real kills."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT

from appliance.index import build_index, load_index


def big_kb(root, copies: int):
    root.mkdir()
    for i in range(copies):
        for doc in (ROOT / "knowledge").glob("*.md"):
            shutil.copy(doc, root / f"{doc.stem}-{i}.md")
    return root


def test_sigkill_during_rebuild_keeps_the_previous_index(tmp_path, encoder):
    kb = big_kb(tmp_path / "kb", copies=1)
    index_dir = tmp_path / "index"
    build_index(kb, index_dir, encoder)
    reference = load_index(index_dir)
    rng = random.Random(7)
    delays = sorted(rng.uniform(0.2, 3.0) for _ in range(4))
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "index", "--kb", str(kb), "--index", str(index_dir)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = load_index(index_dir)  # must not raise, whatever the kill interrupted
        assert loaded.passages == reference.passages
        assert loaded.dense.ntotal == len(reference.passages)
    build_index(kb, index_dir, encoder)  # the next build cleans up what the killed ones left
    assert sorted(p.name for p in index_dir.iterdir() if not p.name.startswith("v-")) == ["current"]


def test_readers_during_rebuilds_see_one_consistent_version(tmp_path, encoder):
    kb_a, kb_b = tmp_path / "a", tmp_path / "b"
    kb_a.mkdir()
    kb_b.mkdir()
    for name in ("metformin-guide.md", "lathe-manual.md"):
        shutil.copy(ROOT / "knowledge" / name, kb_a / name)
    shutil.copy(ROOT / "knowledge" / "lathe-manual.md", kb_b / "lathe.md")
    index_dir = tmp_path / "index"
    build_index(kb_a, index_dir, encoder)
    sizes = {len(load_index(index_dir).passages)}
    build_index(kb_b, index_dir, encoder)
    sizes.add(len(load_index(index_dir).passages))
    seen, errors, stop = [], [], threading.Event()

    def read_loop():
        while not stop.is_set():
            try:
                loaded = load_index(index_dir)
                seen.append((len(loaded.passages), loaded.manifest["passages"], loaded.dense.ntotal))
            except Exception as exc:  # any failure to load is a bug here
                errors.append(exc)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for kb in (kb_a, kb_b, kb_a):
            build_index(kb, index_dir, encoder)
    finally:
        stop.set()
        reader.join()
    assert not errors
    assert seen and all(n == m == d and n in sizes for n, m, d in seen)
