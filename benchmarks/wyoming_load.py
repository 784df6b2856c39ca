"""Wyoming server under remote load, by hand (never timed in tests): a real `appliance wyoming`
process on a Unix socket, measured from outside through /proc.

1. ``synthesize`` of ~10 KB of text: time from the request to the first audio chunk, total time,
   and the server's RSS growth (peak during the request − RSS before it).
2. N clients (default 30) connect at once, each transcribes a spoken question, and leave: the
   server's RSS before, at its peak and after they have gone.

    python -m benchmarks.wyoming_load [--index index] [--clients 30] [--text-bytes 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.info import Describe
from wyoming.tts import Synthesize

from appliance.speech.audio import SAMPLE_RATE, joined, to_int16_bytes

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "Preheat the oven for twenty minutes before baking bread.",
    "Clean the dishwasher filter every week and rinse it under running water.",
    "Fault code E02 on the conveyor means the belt tension sensor is open.",
    "Oil the tailstock of the lathe every eight hours of running.",
    "Do not take ibuprofen with alcohol, because it raises the risk of stomach bleeding.",
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class PeakRss:
    """A process's peak RSS from now on: the kernel's high-water mark, reset here (writing 5 to
    /proc/PID/clear_refs), so no peak falls between samples; where that is not allowed, RSS sampled
    every 20 ms in a thread. ``exact`` says which."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, hwm_mb(self.pid)) if self.exact else self.peak


def start_server(sock: Path, index: Path | None, clients: int, text_chars: int, log,
                 tts: str = "auto") -> subprocess.Popen:
    config = sock.parent / "bench.toml"
    config.write_text(f"[wyoming]\nmax_clients = {clients + 2}\nmax_text_chars = {max(text_chars, 20_000)}\n"
                      f"[speech]\ntts = {json.dumps(tts)}\n")
    command = [sys.executable, "-m", "appliance", "wyoming", "--uri", f"unix://{sock}", "--config", str(config)]
    if index:
        command += ["--index", str(index)]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=log)
    deadline = time.time() + 300
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("the wyoming server did not start; see its log")
        time.sleep(0.2)
    return proc


async def synthesize(uri: str, text: str) -> dict:
    async with AsyncClient.from_uri(uri) as client:
        started = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        first, audio_bytes = None, 0
        while True:
            event = await client.read_event()
            if event is None or event.type == "error":
                raise SystemExit(f"synthesize failed: {event and event.data}")
            if event.type == "audio-chunk":
                first = first or time.perf_counter() - started
                audio_bytes += len(AudioChunk.from_event(event).audio)
            if event.type == "audio-stop":
                return {"first_chunk_s": round(first, 3), "total_s": round(time.perf_counter() - started, 2),
                        "audio_bytes": audio_bytes}


async def transcribe(uri: str, pcm: bytes) -> str:
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
        for i in range(0, len(pcm), 4096):
            await client.write_event(AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=pcm[i:i + 4096]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            if event is None or event.type in ("transcript", "error"):
                return event.type if event else "closed"


def spoken_question() -> bytes:
    from appliance.speech.tts import EspeakSynthesizer

    question = "How long should I preheat the oven?"
    audio = joined(EspeakSynthesizer().synthesize(question), SAMPLE_RATE)
    return to_int16_bytes(np.concatenate([np.zeros(4800, np.float32), audio, np.zeros(8000, np.float32)]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--index", type=Path, help="index directory (default: the config's)")
    p.add_argument("--clients", type=int, default=30)
    p.add_argument("--text-bytes", type=int, default=10_000)
    p.add_argument("--tts", default="auto", help="speech.tts of the server: auto (Piper when installed) | espeak")
    args = p.parse_args(argv)
    text = ""
    while len(text) < args.text_bytes:
        text += " ".join(SENTENCES) + " "
    text = text[: args.text_bytes].rsplit(". ", 1)[0] + "."
    pcm = spoken_question()
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "wyoming.sock"
        with open(Path(tmp) / "server.log", "w") as log:
            proc = start_server(sock, args.index, args.clients, len(text), log, args.tts)
        uri = f"unix://{sock}"
        try:
            async def warm():  # first use of each engine allocates what it keeps
                async with AsyncClient.from_uri(uri) as client:
                    await client.write_event(Describe().event())
                    await client.read_event()
                await synthesize(uri, "Hello. This warms the voice up.")
                await transcribe(uri, pcm)

            asyncio.run(warm())
            time.sleep(1)
            before_synth = rss_mb(proc.pid)
            sampler = PeakRss(proc.pid)
            synth = asyncio.run(synthesize(uri, text))
            synth_peak, sampler_exact = sampler.stop(), sampler.exact
            time.sleep(1)
            before_clients = rss_mb(proc.pid)
            sampler = PeakRss(proc.pid)

            async def crowd():
                return await asyncio.gather(*(transcribe(uri, pcm) for _ in range(args.clients)))

            started = time.perf_counter()
            outcomes = asyncio.run(crowd())
            crowd_s = time.perf_counter() - started
            clients_peak = sampler.stop()
            time.sleep(3)
            after_clients = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps({
        "synthesize": {"tts": args.tts, "text_chars": len(text), **synth, "rss_before_mb": round(before_synth, 1),
                       "rss_peak_mb": round(synth_peak, 1), "rss_growth_mb": round(synth_peak - before_synth, 1),
                       "peak_from": "VmHWM" if sampler_exact else "20 ms samples"},
        "clients": {"n": args.clients, "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
                    "seconds": round(crowd_s, 1), "rss_before_mb": round(before_clients, 1),
                    "rss_peak_mb": round(clients_peak, 1), "rss_after_mb": round(after_clients, 1),
                    "after_vs_before": round(after_clients / before_clients, 3)},
    }, indent=2))


if __name__ == "__main__":
    main()
