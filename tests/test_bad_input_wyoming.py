"""The Wyoming server (the one network-facing part) answers every malformed event with an error
event and goes on serving; synthesis streams sentence by sentence under a text-length cap; the
number of clients is capped and recognisers are freed when clients leave. A real server (real
pipeline, synthesizer and recognisers) on a real socket, driven by raw bytes and the wyoming client."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wyoming")
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncClient  # noqa: E402
from wyoming.event import async_read_event  # noqa: E402

from appliance.config import Config  # noqa: E402
from appliance.speech.audio import SAMPLE_RATE, to_int16_bytes  # noqa: E402
from appliance.runtime import wyoming_service  # noqa: E402
from appliance.wyoming_server import TTS_CHUNK_SECONDS, run_wyoming, speakable_pieces  # noqa: E402

MAX_CLIENTS = 4
MAX_TEXT = 3000


class ServerThread:
    def __init__(self, service, path):
        self.service, self.uri = service, f"unix://{path}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not path.exists():
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.path = path

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(run_wyoming(self.uri, self.service))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def stop(self):
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    config = Config()
    config.wyoming.max_clients, config.wyoming.max_text_chars = MAX_CLIENTS, MAX_TEXT
    running = ServerThread(wyoming_service(config, pipeline), tmp_path_factory.mktemp("wy") / "w.sock")
    yield running
    running.stop()


async def send_raw(server, chunks: list[bytes], replies: int, timeout: float = 120) -> list:
    """Write raw bytes, then read ``replies`` events (decoded by the wyoming package itself)."""
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        events = []
        for _ in range(replies):
            event = await asyncio.wait_for(async_read_event(reader), timeout)
            assert event is not None, f"connection closed after {events}"
            events.append(event)
        return events
    finally:
        writer.close()


def header(kind: str, data: dict | None = None, payload: bytes = b"") -> bytes:
    out = {"type": kind}
    body = json.dumps(data).encode() if data is not None else b""
    if body:
        out["data_length"] = len(body)
    if payload:
        out["payload_length"] = len(payload)
    return json.dumps(out).encode() + b"\n" + body + payload


DESCRIBE = header("describe")
PCM = to_int16_bytes(np.zeros(1600, dtype=np.float32))

BAD_EVENTS = {
    "chunk-rate-0": [header("audio-start", {"rate": 16000, "width": 2, "channels": 1}),
                     header("audio-chunk", {"rate": 0, "width": 2, "channels": 1}, PCM)],
    "chunk-width-0": [header("audio-start", {"rate": 16000, "width": 2, "channels": 1}),
                      header("audio-chunk", {"rate": 16000, "width": 0, "channels": 1}, PCM)],
    "chunk-channels-7": [header("audio-start", {"rate": 16000, "width": 2, "channels": 1}),
                         header("audio-chunk", {"rate": 16000, "width": 2, "channels": 7}, PCM)],
    "chunk-rate-string": [header("audio-start", {"rate": 16000, "width": 2, "channels": 1}),
                          header("audio-chunk", {"rate": "fast", "width": 2, "channels": 1}, PCM)],
    "start-rate-0": [header("audio-start", {"rate": 0, "width": 2, "channels": 1})],
    "synthesize-number": [header("synthesize", {"text": 5})],
    "synthesize-null": [header("synthesize", {"text": None})],
    "synthesize-list": [header("synthesize", {"text": ["Hello."]})],
    "synthesize-missing": [header("synthesize", {"voice": {"name": "x"}})],
    "synthesize-too-long": [header("synthesize", {"text": "Stop. " * (MAX_TEXT // 6 + 1)})],
    "synthesize-blank": [header("synthesize", {"text": " \n "})],
    "nested-header": [b"[" * 50_000 + b"\n"],
    "nested-data": [b'{"type": "synthesize", "data_length": 60002}\n' + b"[" * 30_001 + b"]" * 30_001],
    "data-not-json": [b'{"type": "describe", "data_length": 3}\nabc'],
    "bad-lengths": [b'{"type": "describe", "data_length": -1}\n', b'{"type": "describe", "payload_length": true}\n'],
    "lone-surrogate-type": [b'{"type": "\\ud800x"}\n'],
    "transcript-number": [header("transcript", {"text": 42})],
}


@pytest.mark.parametrize("name", BAD_EVENTS)
def test_bad_event_gets_an_error_and_the_connection_survives(server, name):
    chunks = BAD_EVENTS[name]
    start_ok = chunks[0].startswith(b'{"type": "audio-start"') and name.startswith("chunk")
    expected = len(chunks) - start_ok  # a valid audio-start has no reply
    events = asyncio.run(send_raw(server, [*chunks, DESCRIBE], expected + 1))
    assert all(e.type in ("error", "not-handled") for e in events[:-1]), [(e.type, e.data) for e in events]
    assert events[-1].type == "info"


def test_over_long_text_names_the_limit(server):
    events = asyncio.run(send_raw(server, [header("synthesize", {"text": "x " * MAX_TEXT})], 1))
    assert events[0].data["code"] == "text_too_long" and str(MAX_TEXT) in events[0].data["text"]


def test_long_text_streams_sentence_by_sentence(server):
    text = " ".join(f"Step {i}: check the oil level and wipe the filter." for i in range(24))
    assert len(speakable_pieces(text)) == 24

    async def run():
        async with AsyncClient.from_uri(server.uri) as client:
            started = time.perf_counter()
            await client.write_event(header_event("synthesize", {"text": text}))
            arrivals = []
            while True:
                event = await asyncio.wait_for(client.read_event(), 300)
                arrivals.append((event.type, time.perf_counter() - started, event))
                if event.type in ("audio-stop", "error"):
                    return arrivals

    arrivals = asyncio.run(run())
    kinds = [k for k, _, _ in arrivals]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop" and "error" not in kinds
    first_chunk = next(t for k, t, _ in arrivals if k == "audio-chunk")
    total = arrivals[-1][1]
    assert first_chunk < total / 4, f"first chunk at {first_chunk:.2f} s of {total:.2f} s: not streamed"
    seconds = sum(len(AudioChunk.from_event(e).audio) for k, _, e in arrivals if k == "audio-chunk") / 2
    rate = AudioStart.from_event(arrivals[0][2]).rate
    assert seconds / rate > 24  # every sentence was spoken
    sizes = [len(AudioChunk.from_event(e).audio) for k, _, e in arrivals if k == "audio-chunk"]
    assert len(sizes) > 24 and max(sizes) <= 2 * int(rate * TTS_CHUNK_SECONDS)  # many chunks, each bounded


def test_short_text_streams_the_synthesizers_audio(server):
    """What goes out for a short answer is what the synthesizer makes of it unstreamed (the voice
    samples its durations, so the length is compared, within a few per cent)."""
    text = "Preheat the oven for twenty minutes before baking bread."
    direct = [sum(len(a.samples) for a in server.service.synthesizer.synthesize(text))
              for _ in range(3)]

    async def run():
        async with AsyncClient.from_uri(server.uri) as client:
            await client.write_event(header_event("synthesize", {"text": text}))
            samples = 0
            while True:
                event = await asyncio.wait_for(client.read_event(), 120)
                if event.type == "audio-chunk":
                    samples += len(AudioChunk.from_event(event).audio) // 2
                if event.type in ("audio-stop", "error"):
                    return event.type, samples

    streamed = [asyncio.run(run()) for _ in range(3)]
    assert all(kind == "audio-stop" for kind, _ in streamed)
    assert abs(np.mean([n for _, n in streamed]) / np.mean(direct) - 1) < 0.05, (streamed, direct)


def header_event(kind: str, data: dict):
    from wyoming.event import Event

    return Event(type=kind, data=data)


def test_speakable_pieces_cut_long_sentences_at_words():
    pieces = speakable_pieces("word " * 400 + "end. Next one.")
    assert all(len(p) <= 300 for p in pieces) and pieces[-1] == "Next one."
    assert " ".join(pieces).split() == ("word " * 400 + "end. Next one.").split()
    assert speakable_pieces("x" * 700) == ["x" * 300, "x" * 300, "x" * 100]


def test_clients_over_the_limit_are_refused_and_the_rest_keep_working(server):
    async def run():
        held = [await asyncio.open_unix_connection(str(server.path)) for _ in range(MAX_CLIENTS)]
        for reader, writer in held:  # each is really being served
            writer.write(DESCRIBE)
            assert (await asyncio.wait_for(async_read_event(reader), 60)).type == "info"
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        refused = await asyncio.wait_for(async_read_event(reader), 60)
        assert await asyncio.wait_for(reader.read(), 60) == b""  # and closed
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.5)
        return refused

    refused = asyncio.run(run())
    assert refused.type == "error" and refused.data["code"] == "too_many_clients"
    assert server.service.clients == 0
    assert asyncio.run(send_raw(server, [DESCRIBE], 1))[0].type == "info"


def test_recognisers_are_freed_when_clients_leave(server):
    speech = to_int16_bytes(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))

    async def transcribe(leave_early: bool):
        async with AsyncClient.from_uri(server.uri) as client:
            await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=speech).event())
            if leave_early:
                return None  # vanish mid-utterance
            await client.write_event(AudioStop().event())
            return await asyncio.wait_for(client.read_event(), 120)

    async def many():
        return await asyncio.gather(*(transcribe(i % 2 == 0) for i in range(MAX_CLIENTS)))

    for _ in range(2):
        results = asyncio.run(many())
        assert [r.type for r in results if r is not None] == ["transcript"] * (MAX_CLIENTS // 2)
    deadline = time.time() + 30
    while server.service.clients and time.time() < deadline:
        time.sleep(0.1)
    assert server.service.clients == 0
    assert len(server.service.idle) <= 1  # not one kept per client that ever connected
    assert asyncio.run(send_raw(server, [DESCRIBE], 1))[0].type == "info"


FUZZ_WYOMING = sorted((Path(__file__).parent / "data" / "fuzz-wyoming").glob("*.bin"))


@pytest.mark.parametrize("case", FUZZ_WYOMING, ids=[p.name for p in FUZZ_WYOMING])
def test_fuzz_wyoming_corpus_is_answered_and_the_connection_survives(server, case):
    """Events the protocol fuzzer (benchmarks/fuzz_parsers.py --target wyoming) kept."""
    async def run():
        reader, writer = await asyncio.open_unix_connection(str(server.path), limit=1 << 24)
        try:
            writer.write(case.read_bytes() + b'{"type": "replay-sentinel"}\n')  # answered by an error naming it
            await writer.drain()
            seen = []
            while True:
                event = await asyncio.wait_for(async_read_event(reader), 120)
                assert event is not None, f"connection closed after {seen}"
                if event.type == "error" and "replay-sentinel" in event.data.get("text", ""):
                    return seen
                seen.append(event.data.get("code") if event.type == "error" else event.type)
        finally:
            writer.close()

    assert "internal" not in asyncio.run(run())
