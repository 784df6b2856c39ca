"""Structure-aware fuzzing of the socket API's JSON lines and of Wyoming events (used by
``benchmarks/fuzz_parsers.py --target api|wyoming``), against real servers in this process with
the real pipeline, synthesizer and recognisers.

An input is one request line (API) or a few events (Wyoming) built from the protocol's own
fields with odd values (NaN, 1e999, lone surrogates, deep nesting, wrong types, zero rates) and
byte mutations. After each input a sentinel (a ping, an unknown event type) must be answered on the same
connection. Findings: a dropped connection, a hang, a reply that is not strict JSON, an
``internal`` error (an unexpected exception in a handler), or for the API a reply count other
than one. Inputs with a new outcome are kept in tests/data/fuzz-api/ or tests/data/fuzz-wyoming/,
which the tests replay.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPORA = {"api": ROOT / "tests" / "data" / "fuzz-api", "wyoming": ROOT / "tests" / "data" / "fuzz-wyoming"}

ODD_VALUES = [0, -1, 1, 2**63, -(2**63), 0.5, True, False, None, "", "x" * 3000, "\ud800", "a\udc00b", "\u202e\x1b[2J",
              [], {}, [[[]]], {"a": {"b": None}}, "ping", 1e308, "how do I clean the filter?", "\x00", "🙂" * 50]
RAW_ODD = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"[" * 3000 + b"]" * 3000, b'"\\ud800"',
           b'"\\u0000"', b"{" * 2000, b"0" * 400, b"1.5e-400", b'"' + b"\\" * 33 + b'"']
QUESTIONS = ["how long should I preheat the oven for bread?", "what does E02 mean?", "", " ", "a " * 249,
             "\ud800?", "?" * 499]


def odd_value(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return rng.choice(RAW_ODD)
    return json.dumps(rng.choice(ODD_VALUES)).encode()


def json_object(rng: random.Random, fields: dict[str, list]) -> bytes:
    """A JSON object whose values are sometimes the protocol's own, sometimes odd, as raw bytes."""
    parts = []
    for key, good in fields.items():
        if rng.random() < 0.15:
            continue  # a missing field
        value = json.dumps(rng.choice(good)).encode() if good and rng.random() < 0.6 else odd_value(rng)
        parts.append(json.dumps(key).encode() + b": " + value)
    if rng.random() < 0.1:
        parts.append(b'"extra": ' + odd_value(rng))
    return b"{" + b", ".join(parts) + b"}"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        choice = rng.randrange(4)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1 and data:
            del data[rng.randrange(len(data)):]
        elif choice == 2:
            data[rng.randrange(len(data) + 1):0] = rng.choice(RAW_ODD)[:200]
        elif data:
            a = rng.randrange(len(data))
            data[a:a] = bytes(data[a:a + rng.randint(1, 16)]) * rng.randint(2, 50)
    return bytes(data).replace(b"\n", b" ")  # one line in, one reply out


def api_input(rng: random.Random) -> bytes:
    fields = {"type": ["ping", "outline", "subscribe", "ask", "listen", "dance"], "id": [1, "a", None, 2.5],
              "question": QUESTIONS, "top_k": [1, 3, 50, 51, 0]}
    line = json_object(rng, fields)
    if b'"ask"' in line and rng.random() < 0.8:  # model calls are slow: most asks lose their type
        line = line.replace(b'"ask"', b'"ping"')
    return mutate_bytes(line, rng) if rng.random() < 0.5 else line


def wyoming_event(rng: random.Random) -> bytes:
    """One event: header line + data + payload, lengths consistent (or invalid and then no body)."""
    kind = rng.choice(["audio-start", "audio-chunk", "audio-stop", "synthesize", "transcript", "transcribe",
                       "describe", "no-such", "run-pipeline"])
    fields = {"rate": [16000, 22050, 8000, 0], "width": [2, 1, 4, 0], "channels": [1, 2, 0], "text": [
        "Hello.", "Preheat for 20 minutes. From the oven manual.", "what does E02 mean?", ""], "language": ["en"]}
    data = json_object(rng, fields)
    payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 640, 3200])))
    header = {"type": kind if rng.random() < 0.9 else rng.choice(["", "\ud800", "x" * 500])}
    data_length, payload_length = len(data), len(payload)
    bad_lengths = rng.random() < 0.1
    if bad_lengths:
        data_length = rng.choice([-1, "3", True, 1 << 30, 2.5])  # all refused before any body is read
    header["data_length"] = data_length
    if payload:
        header["payload_length"] = payload_length
    line = json.dumps(header).encode()
    if rng.random() < 0.2:
        bare = json.dumps({"type": header["type"]}).encode()  # no lengths: nothing may follow it
        line = rng.choice([b"[" * 20_000, b'{"type": ' + odd_value(rng) + b"}", mutate_bytes(bare, rng)])
        return line + b"\n"  # a broken header: nothing follows it
    return line + b"\n" + (b"" if bad_lengths else data + payload)


class _Loop:
    """A server coroutine on its own event loop in a thread."""

    def __init__(self, coro_factory):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, args=(coro_factory,), daemon=True).start()
        self.ready.wait(60)

    def _run(self, coro_factory):
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(coro_factory(self.ready))
        self.loop.run_forever()


def _strict(line: bytes):
    def refuse(constant):
        raise ValueError(f"{constant} in a reply")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


def fuzz_api(pipeline, tmp: Path, rng: random.Random, deadline: float, keep_bytes: int) -> dict:
    import socket

    from appliance.api import ApiServer

    server = ApiServer(pipeline, tmp / "fuzz.sock", 1 << 20)

    async def start(ready):
        await server.start()
        ready.set()

    _Loop(start)
    corpus = CORPORA["api"]
    corpus.mkdir(parents=True, exist_ok=True)
    known = {p.name.split("-", 1)[1] for p in corpus.glob("*-*")}
    tried, findings = 0, []
    sock = None
    while time.time() < deadline:
        if sock is None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(120)
            sock.connect(str(server.socket_path))
            stream = sock.makefile("rb")
        line = api_input(rng)
        tried += 1
        sentinel = f"sentinel-{tried}"
        problem, outcome = None, "?"
        try:
            sock.sendall(line + b"\n" + json.dumps({"type": "ping", "id": sentinel}).encode() + b"\n")
            replies = []
            while True:
                raw = stream.readline()
                if not raw:
                    raise ConnectionError("connection closed")
                reply = _strict(raw)
                if reply.get("id") == sentinel and reply.get("type") == "pong":
                    break
                if reply.get("type") != "event":  # after a subscribe, answers to others arrive as events
                    replies.append(reply)
            if len(replies) != 1:
                problem = f"{len(replies)} replies"
            elif replies[0].get("code") == "internal":
                problem = f"internal error: {replies[0].get('error')}"
            outcome = "_".join(str(r.get("code") or r.get("type")) for r in replies)
        except (OSError, ValueError) as exc:
            problem, sock = f"{type(exc).__name__}: {exc}"[:300], None
        _keep(corpus, known, line, problem, outcome, ".jsonl", keep_bytes, findings)
    return {"inputs": tried, "corpus": len(list(corpus.glob("*"))), "findings": findings}


def fuzz_wyoming(config, pipeline, tmp: Path, rng: random.Random, deadline: float, keep_bytes: int) -> dict:
    from wyoming.event import async_read_event

    from appliance.runtime import wyoming_service
    from appliance.wyoming_server import run_wyoming

    config.speech.tts = "espeak"  # the handlers are what is fuzzed: a fast voice gives many more inputs per second
    service = wyoming_service(config, pipeline)
    path = tmp / "wyoming.sock"

    async def start(ready):
        task = asyncio.ensure_future(run_wyoming(f"unix://{path}", service))
        while not path.exists():
            await asyncio.sleep(0.05)
        ready.set()
        await task

    _Loop(start)
    corpus = CORPORA["wyoming"]
    corpus.mkdir(parents=True, exist_ok=True)
    known = {p.name.split("-", 1)[1] for p in corpus.glob("*-*")}
    tried, findings = 0, []

    async def session():
        nonlocal tried
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        while time.time() < deadline:
            data = b"".join(wyoming_event(rng) for _ in range(rng.randint(1, 3)))
            tried += 1
            problem, outcome = None, []
            sentinel = f"fuzz-sentinel-{tried}"  # answered by an "unsupported event type" error naming it
            try:
                writer.write(data + json.dumps({"type": sentinel}).encode() + b"\n")
                await writer.drain()
                while True:
                    event = await asyncio.wait_for(async_read_event(reader), 300)
                    if event is None:
                        raise ConnectionError("connection closed")
                    if event.type == "error" and sentinel in event.data.get("text", ""):
                        break
                    outcome.append(event.data.get("code") if event.type == "error" else event.type)
                    if event.type == "error" and event.data.get("code") == "internal":
                        problem = f"internal error: {event.data.get('text')}"
            except (OSError, ValueError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:300]
            _keep(corpus, known, data, problem, "_".join(sorted(set(map(str, outcome)))) or "none", ".bin",
                  keep_bytes, findings)
            if problem:
                writer.close()
                reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        writer.close()

    asyncio.run(session())
    return {"inputs": tried, "corpus": len(list(corpus.glob("*"))), "findings": findings,
            "clients_open_after": service.clients, "idle_recognisers": len(service.idle)}


def _keep(corpus: Path, known: set[str], data: bytes, problem: str | None, outcome: str, suffix: str,
          keep_bytes: int, findings: list) -> None:
    digest = hashlib.sha256(data).hexdigest()[:12]
    if problem:
        (corpus / f"finding-{digest}{suffix}").write_bytes(data)
        findings.append({"file": f"finding-{digest}{suffix}", "problem": problem})
        return
    slug = "".join(c if c.isalnum() else "_" for c in outcome)[:48] + suffix
    if len(data) <= keep_bytes and slug not in known:
        known.add(slug)
        (corpus / f"{digest}-{slug}").write_bytes(data)
