"""Mutational fuzzing of the knowledge-base parsers (SPL XML, HTML, PDF, Markdown), outside CI;
``--target api`` / ``--target wyoming`` fuzz the socket API's and the Wyoming server's message
handlers instead (structure-aware, see benchmarks/fuzz_protocols.py).

Seeds are real documents; mutations flip bytes, truncate, splice, duplicate and nest markup.
The only acceptable outcomes are a parsed document or an IngestError: anything else (another
exception, a hang) is a finding, saved to tests/data/fuzz-corpus/ where a test replays it.

    python -m benchmarks.fuzz_parsers --seconds 300 [--seed 1] [--target parsers|api|wyoming]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import tempfile
import time
from pathlib import Path

from appliance.errors import IngestError
from appliance.ingest import read_document

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "fuzz-corpus"
SEED_DIRS = [ROOT / "knowledge", ROOT.parent / "shared" / "data" / "kb" / "fda-spl"]


def seeds() -> dict[str, list[bytes]]:
    by_suffix: dict[str, list[bytes]] = {".md": [], ".xml": [], ".html": [], ".pdf": []}
    for directory in SEED_DIRS:
        for path in sorted(directory.glob("*")):
            if path.suffix in by_suffix:
                by_suffix[path.suffix].append(path.read_bytes()[:200_000])
    by_suffix[".html"].append(b"<html><head><title>t</title></head><body><h1>A</h1><h2>B</h2><p>text</p></body></html>")
    from tests.conftest import make_pdf  # the same minimal PDF writer the tests use

    by_suffix[".pdf"].append(make_pdf(["Check the oil every 40 hours.", "Replace the filter yearly."]))
    return by_suffix


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif choice == 2:  # splice from another seed
            other = rng.choice(pool)
            if other:
                a = rng.randrange(len(other))
                data[rng.randrange(len(data) + 1) : 0] = other[a : a + rng.randint(1, 2000)]
        elif choice == 3 and data:  # duplicate a chunk many times
            a = rng.randrange(len(data))
            chunk = bytes(data[a : a + rng.randint(1, 64)])
            data[a:a] = chunk * rng.randint(2, 200)
        elif choice == 4:  # deep nesting
            tag = rng.choice([b"div", b"section", b"component", b"b", b"ul"])
            depth = rng.randint(100, 20000)
            data[rng.randrange(len(data) + 1) : 0] = b"<" + tag + b">" * 1 + (b"<" + tag + b">") * depth
        else:  # odd characters
            data[rng.randrange(len(data) + 1) : 0] = rng.choice(
                [b"\x00", b"\xff\xfe", "\u202e".encode(), b"&lol;", b"<!ENTITY x SYSTEM 'file:///etc/passwd'>", b"]]>"])
    return bytes(data)


class Timeout(Exception):
    pass


def run_one(path: Path, data: bytes, limit_s: float) -> tuple[str | None, str]:
    """(finding or None, outcome signature): the signature tells new behaviour from old."""
    path.write_bytes(data)

    def on_alarm(*_):
        raise Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        doc = read_document(path, path.parent, 50_000_000)
    except IngestError as exc:
        return None, f"{path.suffix} skipped: " + str(exc).split(": ", 1)[-1].split("(")[0][:40]
    except Timeout:
        return f"took over {limit_s} s", "timeout"
    except Exception as exc:  # the finding itself
        return f"{type(exc).__name__}: {exc}"[:300], f"crash {type(exc).__name__}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return None, f"{path.suffix} parsed, {min(len(doc.sections), 3)} sections"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-input-limit", type=float, default=10.0)
    p.add_argument("--keep-bytes", type=int, default=16_000, help="largest input kept in the corpus")
    p.add_argument("--target", choices=["parsers", "api", "wyoming"], default="parsers")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    if args.target != "parsers":
        return fuzz_protocol(args, rng)
    pools = seeds()
    everything = [d for group in pools.values() for d in group]
    CORPUS.mkdir(parents=True, exist_ok=True)
    tried, findings = 0, []
    known = {path.name.split("-", 1)[1] for path in CORPUS.glob("*-*")}
    deadline = time.time() + args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        while time.time() < deadline:
            suffix = rng.choice([s for s, group in pools.items() if group])
            data = mutate(rng.choice(pools[suffix]), rng, everything)
            problem, outcome = run_one(Path(tmp) / f"input{suffix}", data, args.per_input_limit)
            tried += 1
            digest = hashlib.sha256(data).hexdigest()[:12]
            if problem:
                (CORPUS / f"finding-{digest}{suffix}").write_bytes(data)
                findings.append({"file": f"finding-{digest}{suffix}", "problem": problem})
            elif len(data) <= args.keep_bytes and _slug(outcome) not in known:
                known.add(_slug(outcome))  # a new kind of behaviour: keep it as a regression case
                (CORPUS / f"{digest}-{_slug(outcome)}").write_bytes(data)
    print(json.dumps({"inputs": tried, "seconds": args.seconds, "corpus": len(known), "findings": findings},
                     indent=2))


def fuzz_protocol(args, rng: random.Random) -> None:
    from appliance import runtime
    from appliance.config import load_config
    from benchmarks.fuzz_protocols import fuzz_api, fuzz_wyoming

    config = load_config(None)
    pipeline = runtime.load_pipeline(config)  # loading is not counted in the run's seconds
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        deadline = started + args.seconds
        if args.target == "api":
            result = fuzz_api(pipeline, Path(tmp), rng, deadline, args.keep_bytes)
        else:
            result = fuzz_wyoming(config, pipeline, Path(tmp), rng, deadline, args.keep_bytes)
        elapsed = time.time() - started
    print(json.dumps({"target": args.target, "seconds": round(elapsed, 1),
                      "inputs_per_s": round(result["inputs"] / elapsed, 1), **result}, indent=2))


def _slug(outcome: str) -> str:
    """File-name form of an outcome; ends with the input's suffix so replays parse it the same way."""
    suffix = outcome.split()[0] if outcome.startswith(".") else ".bin"
    words = "".join(c if c.isalnum() else "_" for c in outcome.split(" ", 1)[-1]).strip("_")[:48]
    return f"{words}{suffix}"


if __name__ == "__main__":
    main()
