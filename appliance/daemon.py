"""The microphone side of `appliance serve`: a thread running the voice loop on live audio.

Audio devices come and go (USB microphones, sound servers restarting): a missing or lost device
is logged, announced as an ``audio-error`` event and retried with exponential backoff, while the
text API keeps answering.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from appliance.answer import Answer
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.pipeline import QAPipeline
from appliance.speech.audio import AudioError
from appliance.speech.devices import MicrophoneSource, SpeakerSink
from appliance.voice import VoiceLoop, VoiceParts, build_parts

log = logging.getLogger("appliance.voice")


class VoiceService:
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

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)

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
        self.publish({"event": "audio-error", "error": message, "retry_in_s": delay})
        self.stop_event.wait(delay)

    def _listen(self) -> None:
        if self._parts is None:  # load the speech models first: answer the moment a microphone appears
            self._parts = build_parts(self.config, self.pipeline.index.path)
        source = self.open_source()
        sink = None
        try:
            sink = self.open_sink()
            sc = self.config.speech
            self.loop = VoiceLoop(self._parts, self.ask, sink, sc.listen, sc.barge_in, self.publish)
            log.info("listening (%s mode)", sc.listen)
            self.publish({"event": "ready", "listen": sc.listen})
            for _turn in self.loop.run(source.frames(), self.stop_event):
                pass
        finally:
            source.close()
            if sink is not None and hasattr(sink, "close"):
                sink.close()
