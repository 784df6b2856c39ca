"""The voice loop: input frames → VAD/wake → ASR → question answering → TTS → output.

One state machine driven by 32 ms input frames, the same for a live microphone and for a WAV file
(``appliance serve --input``). While the answer plays, the input is still watched: speech there
(barge-in) stops the playback and becomes the next question.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from appliance.config import SpeechConfig
from appliance.errors import ApplianceError
from appliance.schema import Answer, Answered, BargeIn, Done, Heard, Listening, Partial, Speaking, VoiceEvent, Wake
from appliance.speech.audio import CHUNK_SAMPLES, SAMPLE_RATE, Audio
from appliance.speech.devices import Sink
from appliance.speech.recognizer import Recognizer
from appliance.speech.tts import Synthesizer
from appliance.speech.vad import Endpointer, EndpointSettings, SileroVad
from appliance.speech.wake import WakePhraseSpotter

log = logging.getLogger("appliance.voice")

FRAME_S = CHUNK_SAMPLES / SAMPLE_RATE
LISTEN_MODES = ("wake", "push-to-talk", "always")
NOT_HEARD = "Sorry, I didn't catch a question."
FAILED = "Sorry, something went wrong answering that."


@dataclass
class Turn:
    """One question and what the box did about it."""
    transcript: str
    answer: Answer | None
    spoken: str
    barged_in: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"transcript": self.transcript, "spoken": self.spoken, "barged_in": self.barged_in,
                "timings_ms": self.timings_ms, "answer": self.answer.to_json() if self.answer else None}


@dataclass
class VoiceParts:
    """Everything the loop needs, built once by ``runtime.voice_parts`` (models are loaded there,
    not per question)."""
    recognizer: Recognizer
    vad: SileroVad
    synthesizer: Synthesizer
    endpoint: EndpointSettings
    wake: WakePhraseSpotter | None = None
    speculate_ms: int = 0  # a recogniser with speculate() starts decoding after this much silence


class VoiceLoop:
    def __init__(self, parts: VoiceParts, ask: Callable[[str], Answer], sink: Sink, listen: str = SpeechConfig.listen,
                 barge_in: bool = SpeechConfig.barge_in, on_event: Callable[[dict], None] | None = None):
        if listen not in LISTEN_MODES:
            raise ApplianceError(f"unknown listen mode {listen!r} ({', '.join(LISTEN_MODES)})")
        if listen == "wake" and parts.wake is None:
            raise ApplianceError("listen mode 'wake' needs a wake phrase spotter")
        self.parts, self.ask, self.sink = parts, ask, sink
        self.listen, self.barge_in = listen, barge_in
        self.on_event = on_event or (lambda event: None)
        self._talk = threading.Event()  # push-to-talk trigger
        parts.vad.reset()  # a new stream: no state carried over from a lost one
        self._endpointer = Endpointer(parts.endpoint)
        self._barge = Endpointer(parts.endpoint)
        self._preroll: collections.deque = collections.deque(maxlen=10)  # 320 ms before VAD fired
        self._state = "waiting"
        self._speech: Iterator[Audio] | None = None
        self._turn: Turn | None = None
        self._speculating = False  # the recogniser is decoding the utterance heard so far
        self._last_voiced: float | None = None  # when the last speech frame of the question was heard

    def _emit(self, event: VoiceEvent) -> None:
        """Listeners get the wire form (what socket subscribers receive)."""
        self.on_event(event.to_json())

    def push_to_talk(self) -> None:
        """Start listening for a question now (API 'listen' request, a button)."""
        self._talk.set()

    def run(self, frames: Iterable[np.ndarray], stop: threading.Event | None = None) -> Iterator[Turn]:
        """Process frames until they end (or ``stop``); yields each finished turn."""
        stop = stop or threading.Event()
        for frame in frames:
            if stop.is_set():
                break
            yield from self._step(frame)
        if self._state == "hearing":
            self._respond()
        if self._state == "speaking":
            yield from self._drain()

    # -- states ------------------------------------------------------------------------------

    def _step(self, frame: np.ndarray) -> Iterator[Turn]:
        probability = self.parts.vad.probability(frame)
        if self._state == "waiting":
            self._wait(frame, probability)
        elif self._state == "hearing":
            self._hear(frame)
            if probability >= self.parts.endpoint.threshold:
                self._last_voiced = time.perf_counter()
            if self._endpointer.update(probability) in ("end", "timeout"):
                self._respond()
            else:
                self._speculate()
        else:
            yield from self._play(frame, probability)

    def _wait(self, frame: np.ndarray, probability: float) -> None:
        self._preroll.append(frame)
        if self.listen == "wake":
            if self.parts.wake.detect(frame):
                self._emit(Wake())
                self._start_hearing([])
        elif self.listen == "always":
            if self._endpointer.update(probability) == "start":
                self._start_hearing(list(self._preroll))
        elif self._talk.is_set():
            self._start_hearing([])

    def _start_hearing(self, preroll: list[np.ndarray]) -> None:
        self._talk.clear()
        if self.parts.wake is not None:
            self.parts.wake.pause()
        self._endpointer.reset()
        if preroll:  # "always" mode: speech already started; the end-pointer must know
            self._endpointer.in_speech = self._endpointer.heard_speech = True
        self._preroll.clear()
        self.parts.recognizer.start()
        self._speculating = False
        self._state = "hearing"
        self._emit(Listening())
        for frame in preroll:
            self._hear(frame)

    def _hear(self, frame: np.ndarray) -> None:
        partial = self.parts.recognizer.feed(frame)
        if partial is not None:
            self._emit(Partial(partial.text))

    def _speculate(self) -> None:
        """A short pause: start decoding (Whisper); speech resumed: that decode is not the question."""
        recognizer, ms = self.parts.recognizer, self.parts.speculate_ms
        if ms <= 0 or not hasattr(recognizer, "speculate"):
            return
        silence = self._endpointer.silence_ms
        if not self._speculating and self._endpointer.in_speech and silence >= ms:
            recognizer.speculate()
            self._speculating = True
        elif self._speculating and silence == 0:
            recognizer.discard()
            self._speculating = False

    def _respond(self) -> None:
        """End of the question: transcript → answer → the first sentence of speech queued."""
        end_of_speech = time.perf_counter()
        speculated, self._speculating = self._speculating, False
        transcript = self.parts.recognizer.finish().text.strip()
        heard = time.perf_counter()
        timings = {"asr_final": _ms(heard - end_of_speech)}
        if self.parts.speculate_ms > 0 and hasattr(self.parts.recognizer, "speculate"):
            timings["asr_speculative_hit"] = float(speculated)
        self._emit(Heard(transcript))
        answer = None
        if not transcript:
            spoken = NOT_HEARD
        else:
            try:
                answer = self.ask(transcript)
                spoken = answer.spoken()
                timings.update(answer.timings_ms)
                self._emit(Answered(answer))
            except ApplianceError as exc:
                log.warning("could not answer %r: %s", transcript, exc)
                spoken = FAILED
        answered = time.perf_counter()
        self._turn = Turn(transcript, answer, spoken, timings_ms=timings)
        self._speech = iter(self.parts.synthesizer.synthesize(spoken))
        self._state = "speaking"
        self._barge.reset()
        if self._top_up():
            first = time.perf_counter()
            timings["tts_first_audio"] = _ms(first - answered)
            timings["end_of_speech_to_first_audio"] = _ms(first - end_of_speech)
            if self._last_voiced is not None:
                timings["last_voice_to_first_audio"] = _ms(first - self._last_voiced)
        self._last_voiced = None
        timings["endpoint_silence"] = float(self.parts.endpoint.end_silence_ms)
        self._emit(Speaking(spoken))
        log.info(json.dumps({"event": "question", "transcript": transcript, "abstained": answer.abstained if answer
                             else None, **{f"{k}_ms": v for k, v in timings.items()}}))

    def _top_up(self) -> bool:
        """Synthesize the next sentence when less than a second is left to play."""
        if self._speech is None or self.sink.buffered_seconds() >= 1.0:
            return False
        audio = next(self._speech, None)
        if audio is None:
            self._speech = None
            self.sink.flush()
            return False
        self.sink.play(audio)
        return True

    def _play(self, frame: np.ndarray, probability: float) -> Iterator[Turn]:
        self.sink.advance(FRAME_S)
        self._top_up()
        if self.barge_in and self._barge.update(probability) == "start":
            self.sink.stop()
            self._speech = None
            self._turn.barged_in = True
            self._emit(BargeIn())
            yield self._finish_turn()
            self._start_hearing(list(self._preroll) + [frame])
            return
        self._preroll.append(frame)
        if self._speech is None and not self.sink.playing():
            yield self._finish_turn()
            self._state = "waiting"
            self._endpointer.reset()

    def _drain(self) -> Iterator[Turn]:
        while self._speech is not None or self.sink.playing():
            self.sink.advance(FRAME_S)
            self._top_up()
        yield self._finish_turn()
        self._state = "waiting"

    def _finish_turn(self) -> Turn:
        self.sink.finish()
        turn, self._turn = self._turn, None
        self._preroll.clear()
        self._emit(Done(turn.barged_in))
        return turn


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
