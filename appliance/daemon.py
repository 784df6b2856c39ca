"""`appliance serve`: the whole daemon process. The runtime (models and index), the socket API, the
microphone loop in a thread, the systemd handshake (READY, watchdog pings, STOPPING) and the
signals that end it; or, with ``--input``, the same voice pipeline run on WAV files.

Audio devices come and go (USB microphones, sound servers restarting): a missing or lost device
is logged, announced as an ``audio-error`` event and retried with exponential backoff, while the
text API keeps answering.
"""
from __future__ import annotations

import asyncio
import json
import os
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import runtime
from appliance.api import ApiServer
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.pipeline import QAPipeline
from appliance.schema import Answer, Ready
from appliance.schema import AudioError as AudioErrorEvent
from appliance.speech.audio import AudioError
from appliance.speech.devices import MicrophoneSource, SpeakerSink, WavFileSource, WavSink
from appliance.systemd_notify import notify, watchdog_period
from appliance.voice import Turn, VoiceLoop, VoiceParts

log = logging.getLogger("appliance.voice")
VOICE_OUT = Path("run/voice-out")  # `serve --input` answers, unless --output names another folder


@dataclass
class ServeOptions:
    """What the command line may set for one `serve` run (None: the config's value)."""

    kb: Path | None = None
    index: Path | None = None
    socket: Path | None = None
    listen: str | None = None
    voice: bool = True  # False: text API only
    inputs: list[Path] | None = None  # WAV files instead of the microphone
    output: Path | None = None


def serve(config: Config, options: ServeOptions) -> int:
    """Run `appliance serve` until a signal ends it (or, with inputs, until the files are answered)."""
    if options.inputs:
        return serve_files(config, options)
    if options.output:
        raise ApplianceError("--output goes with --input")
    if options.listen:
        config.speech.listen = options.listen
    runtime.preload_speech(config)  # first, while the process is small (its int8 conversion peaks at load)
    pipeline = runtime.load_pipeline(config, options.kb, options.index)
    socket_path = options.socket or config.resolve(config.api.socket)
    stopped = asyncio.run(run_daemon(config, pipeline, socket_path, options.voice and config.speech.enabled))
    if not stopped:
        exit_now()
    return 0


def exit_now() -> None:
    """Leave without interpreter teardown: a voice thread still inside native model loading when the
    interpreter tears down was seen to abort the process (SIGABRT instead of exit 0 on SIGTERM). The
    socket is already closed and removed; nothing else is left to save."""
    log.warning("voice thread still busy after stop; exiting without waiting for it")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def run_daemon(config: Config, pipeline: QAPipeline, socket_path: Path, voice: bool) -> bool:
    """The API until SIGTERM/SIGINT, with the voice loop beside it and systemd told each step.
    True when every voice thread has stopped."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    server = ApiServer(pipeline, socket_path, config.api.max_line_bytes)
    await server.start()  # before the try: a socket another daemon holds is left alone
    services: list[VoiceService] = []
    stopped: list[bool] = []
    pinger = None
    try:
        if voice:
            services.append(start_voice(config, pipeline, server))
        log.info("listening on %s", socket_path)
        notify(f"READY=1\nSTATUS=answering on {socket_path}")
        period = watchdog_period()
        pinger = asyncio.create_task(_watchdog(period)) if period else None
        await server.server.serve_forever()
    except asyncio.CancelledError:
        pass
    finally:
        notify("STOPPING=1")
        if pinger:
            pinger.cancel()
        await server.close()
        stopped = [service.stop() for service in services]
    return all(stopped)


async def _watchdog(period: float) -> None:
    """Ping systemd from the event loop itself: a stuck loop stops the pings and gets restarted."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


def start_voice(config: Config, pipeline: QAPipeline, server: ApiServer) -> VoiceService:
    """The microphone loop, asking through the API's executor (one model call at a time) and
    publishing its events to the API's subscribers."""
    def ask(question: str) -> Answer:
        return server.executor.submit(pipeline.ask, question).result()

    service = VoiceService(config, pipeline, ask, server.publish)
    server.on_listen = service.push_to_talk
    service.start()
    return service


class VoiceService:
    """The voice loop on live audio, in its own thread, surviving lost devices."""

    def __init__(self, config: Config, pipeline: QAPipeline, ask: Callable[[str], Answer],
                 publish: Callable[[dict], None], open_source: Callable[[], object] | None = None,
                 open_sink: Callable[[], object] | None = None, first_retry_s: float = 1.0):
        sc = config.speech
        self.config, self.pipeline, self.ask, self.publish = config, pipeline, ask, publish
        self.open_source = open_source or (lambda: MicrophoneSource(sc.input_device or None))
        self.open_sink = open_sink or (lambda: SpeakerSink(sc.output_device or None))
        self.first_retry_s = first_retry_s
        self.stop_event = threading.Event()
        self.loop: VoiceLoop | None = None
        self.failures = 0  # audio-device failures so far (opening or mid-stream)
        self._parts: VoiceParts | None = None
        self._thread = threading.Thread(target=self._run, name="voice", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """True when the thread has ended (False: still loading models after ``timeout``)."""
        self.stop_event.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def push_to_talk(self) -> bool:
        if self.loop is None:
            return False
        self.loop.push_to_talk()
        return True

    def _run(self) -> None:
        delay = self.first_retry_s
        while not self.stop_event.is_set():
            try:
                self._listen()
                delay = self.first_retry_s  # the stream ran and ended normally
            except AudioError as exc:
                self._fail(f"audio device: {exc}", delay)
                delay = min(delay * 2, self.config.speech.retry_max_s)
            except ApplianceError as exc:  # a speech model that cannot load: retrying soon will not help
                self._fail(f"voice disabled: {exc}", self.config.speech.retry_max_s)

    def _fail(self, message: str, delay: float) -> None:
        self.failures += 1
        self.loop = None
        log.error("%s; retrying in %.1f s (text API still up)", message, delay)
        self.publish(AudioErrorEvent(message, delay).to_json())
        self.stop_event.wait(delay)

    def _listen(self) -> None:
        if self._parts is None:  # load the speech models first: answer the moment a microphone appears
            self._parts = runtime.voice_parts(self.config, self.pipeline.index)
        source = self.open_source()
        sink = None
        try:
            sink = self.open_sink()
            sc = self.config.speech
            self.loop = VoiceLoop(self._parts, self.ask, sink, sc.listen, sc.barge_in, self.publish)
            log.info("listening (%s mode)", sc.listen)
            self.publish(Ready(sc.listen).to_json())
            for _turn in self.loop.run(source.frames(), self.stop_event):
                pass
        finally:
            source.close()
            if sink is not None and hasattr(sink, "close"):
                sink.close()


# --- serve --input: the voice pipeline on WAV files -------------------------------------------

def serve_files(config: Config, options: ServeOptions) -> int:
    """One JSON line per question on stdout, answers as WAVs in the output folder."""
    missing = [str(p) for p in options.inputs if not p.is_file()]
    if missing:
        raise ApplianceError(f"input file(s) not found: {', '.join(missing)}")
    pipeline = runtime.load_pipeline(config, options.kb, options.index)
    out_dir = options.output or config.resolve(VOICE_OUT)
    for turn in answer_files(config, pipeline, options.inputs, out_dir, options.listen or "always"):
        print(json.dumps({"heard": turn.transcript, "said": turn.spoken, "barged_in": turn.barged_in,
                          "timings_ms": turn.timings_ms}, ensure_ascii=False), flush=True)
    return 0


def answer_files(config: Config, pipeline: QAPipeline, inputs: list[Path], out_dir: Path, listen: str,
                 on_event: Callable[[dict], None] | None = None) -> list[Turn]:
    """The live pipeline run on WAV files; answers are written as WAVs in ``out_dir``."""
    parts = runtime.voice_parts(config, pipeline.index)
    sink = WavSink(out_dir)
    turns: list[Turn] = []
    for path in inputs:
        loop = VoiceLoop(parts, pipeline.ask, sink, listen, config.speech.barge_in, on_event)
        for turn in loop.run(WavFileSource(path).frames()):
            turn.timings_ms = dict(turn.timings_ms)
            turns.append(turn)
            _record(out_dir, path, turn, sink.written[-1] if sink.written else None)
    return turns


def _record(out_dir: Path, source: Path, turn: Turn, audio: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "turns.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"input": str(source), "audio": str(audio) if audio else None, **turn.to_json()},
                            ensure_ascii=False) + "\n")
