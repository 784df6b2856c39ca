"""Wyoming protocol server: the appliance as Home Assistant's speech-to-text, text-to-speech and
conversation agent over its knowledge base.

Events in, events out (JSON header line + optional data + PCM payload), per the `wyoming`
package: describe → info; transcribe + audio-start/chunk/stop → transcript (KB-adapted ASR);
synthesize → audio-start/chunk/stop; transcript → handled (spoken answer and source) or
not-handled (the reader abstained). Malformed or unexpected events get an ``error`` event and
the connection goes on.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize

from appliance import __version__
from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.pipeline import QAPipeline
from appliance.speech.adapt import Adaptation
from appliance.speech.asr import Recognizer, create_recognizer
from appliance.speech.audio import SAMPLE_RATE, from_int16_bytes, to_int16_bytes
from appliance.speech.tts import Synthesizer, create_synthesizer

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 16 << 20
TTS_CHUNK_SECONDS = 0.5


class WyomingService:
    """What all connections share: the QA pipeline, the synthesizer and a pool of recognisers
    (a recogniser holds one utterance's state, so each live transcription borrows its own)."""

    def __init__(self, config: Config, pipeline: QAPipeline, synthesizer: Synthesizer, make_recognizer):
        self.config, self.pipeline, self.synthesizer = config, pipeline, synthesizer
        self.make_recognizer = make_recognizer
        self.idle: list[Recognizer] = []
        self.qa = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa")  # one model call at a time
        self.speech = ThreadPoolExecutor(max_workers=2, thread_name_prefix="speech")
        self.asr_name = "pocketsphinx"  # set from the first recogniser built

    def borrow(self) -> Recognizer:
        return self.idle.pop() if self.idle else self.make_recognizer()

    def give_back(self, recognizer: Recognizer) -> None:
        self.idle.append(recognizer)

    def info(self) -> Info:
        attribution = Attribution(name="appliance", url="https://example.invalid/appliance")
        return Info(
            asr=[AsrProgram(name="appliance-asr", description="Offline ASR adapted to the knowledge base",
                            attribution=Attribution(name="CMU Sphinx", url="https://cmusphinx.github.io"),
                            installed=True, version=__version__,
                            models=[AsrModel(name=self.asr_name, description="en-us acoustic model + KB language model",
                                             attribution=Attribution(name="CMU Sphinx",
                                                                     url="https://cmusphinx.github.io"),
                                             installed=True, languages=["en"], version=__version__)])],
            tts=[TtsProgram(name="appliance-tts", description=f"{self.synthesizer.name} voice",
                            attribution=attribution, installed=True, version=__version__,
                            voices=[TtsVoice(name=self.synthesizer.name, description=self.synthesizer.name,
                                             attribution=attribution, installed=True, languages=["en-us"],
                                             version=__version__)])],
            handle=[HandleProgram(name="appliance-qa", description="Answers from the appliance's knowledge base",
                                  attribution=attribution, installed=True, version=__version__,
                                  models=[HandleModel(name="knowledge-base", description="extractive QA with sources",
                                                      attribution=attribution, installed=True, languages=["en"],
                                                      version=__version__)])],
        )


async def read_event(reader: asyncio.StreamReader) -> Event | str | None:
    """The next event; an error message (str) for a malformed one, leaving the stream usable when
    the header line was bad; None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    try:
        header = json.loads(line)
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            return "an event header must be a JSON object with a string 'type'"
        data = header.get("data") or {}
        data_length, payload_length = header.get("data_length") or 0, header.get("payload_length") or 0
        if not isinstance(data, dict) or not all(isinstance(n, int) and 0 <= n <= MAX_PAYLOAD_BYTES
                                                 for n in (data_length, payload_length)):
            return "bad 'data', 'data_length' or 'payload_length'"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"malformed event header: {exc}"
    if data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return f"malformed event data: {exc}"
        if not isinstance(extra, dict):
            return "event data must be a JSON object"
        data.update(extra)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


class ApplianceEventHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: WyomingService):
        super().__init__(reader, writer)
        self.service = service
        self.recognizer: Recognizer | None = None
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)

    async def run(self) -> None:
        """Like the base class, but a malformed event is answered instead of ending the connection."""
        try:
            while True:
                try:
                    event = await read_event(self.reader)
                except (ValueError, asyncio.LimitOverrunError):
                    await self.write_event(Error(text="event header line too long", code="too_long").event())
                    break
                if event is None:
                    break
                if isinstance(event, str):
                    await self.write_event(Error(text=event, code="malformed").event())
                    continue
                try:
                    if not await self.handle_event(event):
                        break
                except (KeyError, TypeError, ValueError) as exc:
                    await self.write_event(Error(text=f"bad {event.type} event: {exc}", code="bad_event").event())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        if self.recognizer is not None:  # an unfinished transcription: the recogniser is reusable after start()
            self.service.give_back(self.recognizer)
            self.recognizer = None

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.service.info().event())
        elif Transcribe.is_type(event.type):
            pass  # one model and language; the audio that follows is what matters
        elif AudioStart.is_type(event.type):
            await self._start_transcription()
        elif AudioChunk.is_type(event.type):
            await self._feed(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._finish_transcription()
        elif Synthesize.is_type(event.type):
            await self._synthesize(Synthesize.from_event(event).text)
        elif Transcript.is_type(event.type):
            await self._answer(Transcript.from_event(event).text)
        else:
            await self.write_event(Error(text=f"unsupported event type {event.type!r}", code="unsupported").event())
        return True

    async def _in_thread(self, pool, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args))

    async def _start_transcription(self) -> None:
        if self.recognizer is None:
            self.recognizer = await self._in_thread(self.service.speech, self.service.borrow)
        await self._in_thread(self.service.speech, self.recognizer.start)

    async def _feed(self, chunk: AudioChunk) -> None:
        if self.recognizer is None:
            await self.write_event(Error(text="audio-chunk before audio-start", code="no_audio_start").event())
            return
        pcm = self.converter.convert(chunk).audio
        await self._in_thread(self.service.speech, self.recognizer.feed, from_int16_bytes(pcm[: len(pcm) // 2 * 2]))

    async def _finish_transcription(self) -> None:
        if self.recognizer is None:
            await self.write_event(Error(text="audio-stop before audio-start", code="no_audio_start").event())
            return
        transcript = await self._in_thread(self.service.speech, self.recognizer.finish)
        self.service.give_back(self.recognizer)
        self.recognizer = None
        await self.write_event(Transcript(text=transcript.text).event())

    async def _synthesize(self, text: str) -> None:
        if not text.strip():
            await self.write_event(Error(text="nothing to synthesize", code="empty_text").event())
            return
        parts = await self._in_thread(self.service.speech, lambda: list(self.service.synthesizer.synthesize(text)))
        rate = parts[0].rate
        samples = np.concatenate([p.samples for p in parts])
        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        step = int(rate * TTS_CHUNK_SECONDS)
        for i in range(0, len(samples), step):
            await self.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                              audio=to_int16_bytes(samples[i:i + step])).event())
        await self.write_event(AudioStop().event())

    async def _answer(self, question: str) -> None:
        try:
            answer = await self._in_thread(self.service.qa, self.service.pipeline.ask, question)
        except ApplianceError as exc:
            await self.write_event(NotHandled(text=f"I can't answer that: {exc}").event())
            return
        context = {"source": answer.source.citation if answer.source else None, "confidence": answer.confidence}
        if answer.abstained:
            await self.write_event(NotHandled(text=answer.spoken(), context=context).event())
        else:
            await self.write_event(Handled(text=answer.spoken(), context={**context, "answer": answer.text}).event())


def build_service(config: Config, pipeline: QAPipeline) -> WyomingService:
    from appliance.index import ADAPTATION_DIR

    sc = config.speech
    adaptation = Adaptation(pipeline.index.path / ADAPTATION_DIR) if sc.adapt else None
    vosk = config.resolve(Path(sc.vosk_model)) if sc.vosk_model else None
    piper = config.resolve(Path(sc.piper_voice)) if sc.piper_voice else None
    service = WyomingService(config, pipeline, create_synthesizer(sc.tts, piper),
                             lambda: create_recognizer(vosk, adaptation))
    first = service.make_recognizer()  # load once now: a broken model fails at start, not mid-call
    service.asr_name = first.name
    service.give_back(first)
    return service


async def run_wyoming(uri: str, service: WyomingService) -> None:
    server = AsyncServer.from_uri(uri)
    log.info("wyoming server on %s", uri)
    await server.run(partial(ApplianceEventHandler, service=service))
