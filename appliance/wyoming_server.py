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
import functools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

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
from appliance.errors import ApplianceError, is_fatal
from appliance.pipeline import QAPipeline
from appliance.speech.audio import SAMPLE_RATE, from_int16_bytes, to_int16_bytes
from appliance.speech.recognizer import Recognizer
from appliance.speech.tts import Synthesizer, sentences

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 16 << 20
TTS_CHUNK_SECONDS = 0.5
MAX_PIECE_CHARS = 300  # a sentence longer than this is synthesised in word-boundary pieces
AUDIO_WIDTHS = (1, 2, 3, 4)  # bytes per sample that the converter handles
AUDIO_RATES = (1000, 192_000)
KEEP_IDLE_RECOGNIZERS = 1  # warm recognisers kept between clients; the rest are freed when clients leave


def speakable_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Sentences, with any longer than ``max_chars`` cut at word boundaries: audio streams piece by
    piece, so the first piece bounds the time to the first chunk and each piece bounds memory."""
    pieces: list[str] = []
    for sentence in sentences(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence:
            pieces.append(sentence)
    return pieces


def audio_format_problem(data: dict) -> str | None:
    """Why an audio-start/-chunk's format cannot be converted (rate 0 crashed the converter), or None."""
    rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
    if not (type(rate) is int and AUDIO_RATES[0] <= rate <= AUDIO_RATES[1]):
        return f"'rate' must be an integer from {AUDIO_RATES[0]} to {AUDIO_RATES[1]} Hz, got {rate!r}"
    if not (type(width) is int and width in AUDIO_WIDTHS):
        return f"'width' must be 1, 2, 3 or 4 bytes, got {width!r}"
    if not (type(channels) is int and channels in (1, 2)):
        return f"'channels' must be 1 or 2, got {channels!r}"
    return None


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do


def release_memory() -> None:
    """Hand freed heap back to the system: glibc keeps what worker threads freed in their own
    arenas, so without this RSS stays at its peak after a long synthesis or a crowd of clients."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class WyomingService:
    """What all connections share: the QA pipeline, the synthesizer and a pool of recognisers
    (a recogniser holds one utterance's state, so each live transcription borrows its own)."""

    def __init__(self, config: Config, pipeline: QAPipeline, synthesizer: Synthesizer, make_recognizer):
        self.config, self.pipeline, self.synthesizer = config, pipeline, synthesizer
        self.make_recognizer = make_recognizer
        self.idle: list[Recognizer] = []
        self.clients = 0  # open connections, capped by wyoming.max_clients
        self.qa = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa")  # one model call at a time
        self.speech = ThreadPoolExecutor(max_workers=2, thread_name_prefix="speech")
        self.asr_name = "pocketsphinx"  # set from the first recogniser built

    def borrow(self) -> Recognizer:
        return self.idle.pop() if self.idle else self.make_recognizer()

    def give_back(self, recognizer: Recognizer) -> None:
        """Keep a warm one for the next client; free the rest (30 clients must not pin 30 recognisers)."""
        if len(self.idle) < KEEP_IDLE_RECOGNIZERS:
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
    except RecursionError:
        return "malformed event header: nested too deeply"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"malformed event header: {exc}"
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        return "an event header must be a JSON object with a string 'type'"
    data = header.get("data") or {}
    data_length, payload_length = header.get("data_length") or 0, header.get("payload_length") or 0
    if not isinstance(data, dict) or not all(type(n) is int and 0 <= n <= MAX_PAYLOAD_BYTES
                                             for n in (data_length, payload_length)):
        return "bad 'data', 'data_length' or 'payload_length'"
    raw = await reader.readexactly(data_length) if data_length else b""
    payload = await reader.readexactly(payload_length) if payload_length else None  # read even if the data is bad
    if raw:
        try:
            extra = json.loads(raw)
        except RecursionError:
            return "malformed event data: nested too deeply"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return f"malformed event data: {exc}"
        if not isinstance(extra, dict):
            return "event data must be a JSON object"
        data.update(extra)
    return Event(type=header["type"], data=data, payload=payload)


class ApplianceEventHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: WyomingService):
        super().__init__(reader, writer)
        self.service = service
        self.recognizer: Recognizer | None = None
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)

    async def error(self, text: str, code: str) -> None:
        """An error event; text that UTF-8 cannot carry (a lone surrogate from the client) is escaped."""
        await self.write_event(Error(text=text.encode("utf-8", "backslashreplace").decode("utf-8"), code=code).event())

    async def run(self) -> None:
        """Like the base class, but a malformed event is answered instead of ending the connection;
        connections over ``wyoming.max_clients`` are told so and closed."""
        service = self.service
        if service.clients >= service.config.wyoming.max_clients:
            try:
                await self.error(f"too many clients (the limit is {service.config.wyoming.max_clients}); "
                                 "try again later", "too_many_clients")
            except ConnectionError:
                pass
            finally:
                self.writer.close()
            return
        service.clients += 1
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
                    await self.error(f"bad {event.type} event: {exc}", "bad_event")
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise
                except BaseException as exc:  # a bug or a library panic: this client hears of it, others go on
                    if is_fatal(exc):
                        raise
                    log.exception("wyoming %s event failed", event.type)
                    await self.error(f"internal error handling {event.type}: {type(exc).__name__}", "internal")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            service.clients -= 1
            await self.disconnect()
            self.writer.close()
            if service.clients == 0:
                release_memory()

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
            if problem := audio_format_problem(event.data):
                await self.error(f"bad audio-start: {problem}", "bad_audio_format")
            else:
                await self._start_transcription()
        elif AudioChunk.is_type(event.type):
            if problem := audio_format_problem(event.data):
                await self.error(f"bad audio-chunk: {problem}", "bad_audio_format")
            else:
                await self._feed(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._finish_transcription()
        elif Synthesize.is_type(event.type):
            await self._synthesize(event.data.get("text"))
        elif Transcript.is_type(event.type):
            await self._answer(Transcript.from_event(event).text)
        else:
            await self.error(f"unsupported event type {event.type!r}", "unsupported")
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
        frame = chunk.width * chunk.channels
        chunk.audio = (chunk.audio or b"")[: len(chunk.audio or b"") // frame * frame]  # whole frames only
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

    async def _synthesize(self, text) -> None:
        """Audio streams out as the synthesizer makes it (a sentence, or a Piper decoder window):
        the first chunk leaves once the first of it is made, and memory holds one sentence's audio,
        not the whole text's."""
        limit = self.service.config.wyoming.max_text_chars
        if not isinstance(text, str):
            await self.error(f"'text' must be a string, got {type(text).__name__}", "bad_text")
            return
        if len(text) > limit:
            await self.error(f"text of {len(text)} characters is over the {limit}-character limit", "text_too_long")
            return
        pieces = speakable_pieces(text)
        if not pieces:
            await self.error("nothing to synthesize", "empty_text")
            return
        rate = None
        for piece in pieces:
            speech = iter(self.service.synthesizer.synthesize(piece))
            try:
                while (audio := await self._in_thread(self.service.speech, next, speech, None)) is not None:
                    if rate is None:
                        rate = audio.rate
                        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                    step = int(rate * TTS_CHUNK_SECONDS)
                    for i in range(0, len(audio.samples), step):
                        await self.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                                          audio=to_int16_bytes(audio.samples[i:i + step])).event())
            finally:
                # each sentence's buffers go back to the system, not to a thread's arena
                await self._in_thread(self.service.speech, release_memory)
        if rate is None:
            await self.error("the synthesizer produced no audio", "empty_audio")
            return
        await self.write_event(AudioStop().event())

    async def _answer(self, question: str) -> None:
        try:
            answer = await self._in_thread(self.service.qa, self.service.pipeline.ask, question)
        except ApplianceError as exc:
            reason = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
            await self.write_event(NotHandled(text=f"I can't answer that: {reason}").event())
            return
        context = {"source": answer.source.citation if answer.source else None, "confidence": answer.confidence}
        if answer.abstained:
            await self.write_event(NotHandled(text=answer.spoken(), context=context).event())
        else:
            await self.write_event(Handled(text=answer.spoken(), context={**context, "answer": answer.text}).event())


async def run_wyoming(uri: str, service: WyomingService) -> None:
    server = AsyncServer.from_uri(uri)
    log.info("wyoming server on %s", uri)
    await server.run(partial(ApplianceEventHandler, service=service))
