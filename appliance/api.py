"""Local API: JSON lines over a Unix socket (mode 0660, never TCP).

Requests are one JSON object per line with a ``type``: ``ask`` (``question``, optional
``top_k``), ``outline`` (the knowledge base's documents and sections), ``ping``, ``subscribe``
(from then on the connection also receives ``{"type": "event", ...}`` lines: listening, partial,
heard, answered, speaking, barge-in, done, audio-error) or ``listen`` (push-to-talk: start hearing
a question now). Every request gets exactly one response line, echoing its ``id``; bad requests
get ``{"type": "error"}`` and the connection stays usable, except after an over-long line, which
closes it. The daemon (``appliance.daemon``) runs this server; message shapes are in
``appliance.schema``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from appliance.client import socket_in_use
from appliance.config import LIMITS, ApiConfig
from appliance.errors import ApplianceError, is_fatal
from appliance.pipeline import QAPipeline
from appliance.schema import REQUEST_TYPES, Answered, kb_outline
from appliance.schema import error_reply as error

log = logging.getLogger(__name__)


MAX_EVENT_BACKLOG = 1 << 20  # a subscriber that lets this much pile up unread is dropped


def encode_line(message: dict) -> bytes:
    """One JSON line that is always valid: no NaN/Infinity, and a lone surrogate (which UTF-8
    cannot carry) sent as its JSON escape."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"
    except (ValueError, TypeError, RecursionError) as exc:  # not JSON-representable: say so, validly
        log.error("reply not JSON-representable: %s", exc)
        return encode_line(error("internal error: reply could not be encoded", "internal"))


def valid_id(request_id: Any) -> bool:
    """An id is echoed back, so it must be representable: finite numbers, strings, null, ..."""
    try:
        json.dumps(request_id, allow_nan=False)
        return True
    except (ValueError, TypeError, RecursionError):
        return False


def _request_id(line: bytes) -> Any:
    """The id of a request line, for a reply sent without parsing it again; None when unusable."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return None
    request_id = request.get("id") if isinstance(request, dict) else None
    return request_id if valid_id(request_id) else None


class ApiServer:
    def __init__(self, pipeline: QAPipeline, socket_path: Path, max_line_bytes: int = ApiConfig.max_line_bytes):
        self.pipeline = pipeline
        self.socket_path = Path(socket_path)
        self.max_line_bytes = max_line_bytes
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa")  # one model call at a time
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.StreamWriter] = set()
        self.subscribers: set[asyncio.StreamWriter] = set()
        self.on_listen: Callable[[], bool] | None = None  # push-to-talk hook, set when a microphone loop runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[asyncio.StreamWriter, bytes] = {}  # request line each client waits on
        self._stopping = False
        self._outline = [d.to_json() for d in kb_outline(pipeline.index.passages)]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            if socket_in_use(self.socket_path):
                raise ApplianceError(f"another appliance server is already listening on {self.socket_path}")
            self.socket_path.unlink()
        old_umask = os.umask(0o117)  # the socket is born 0660: no window where others could connect
        try:
            self.server = await asyncio.start_unix_server(self._serve_client, path=str(self.socket_path),
                                                          limit=self.max_line_bytes)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o660)

    async def close(self) -> None:
        self._stopping = True
        for writer, line in list(self._pending.items()):  # queued clients get an answer, not a bare EOF
            self._pending.pop(writer, None)
            if not writer.is_closing():
                writer.write(encode_line(error("the server is shutting down; ask again when it is back",
                                               "shutting_down", _request_id(line))))
        if self.server:
            self.server.close()
            for writer in list(self.clients):  # Python 3.11's wait_closed does not end open connections
                writer.close()
            await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, error(f"request line over {self.max_line_bytes} bytes", "line_too_long"))
                    break
                if not line or self._stopping:
                    break
                self._pending[writer] = line
                try:
                    response = await self.respond(line)
                finally:
                    answered_by_shutdown = writer not in self._pending
                    self._pending.pop(writer, None)
                if answered_by_shutdown:
                    break
                if response.get("type") == "subscribed":
                    self.subscribers.add(writer)
                await self._send(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # shutdown: end quietly (a cancelled handler task is reported as an error by asyncio)
        finally:
            self.clients.discard(writer)
            self.subscribers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def publish(self, event: dict) -> None:
        """Send an event to every subscriber; callable from any thread (the voice loop's)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._broadcast, event)

    def _broadcast(self, event: dict) -> None:
        line = encode_line({"type": "event", **event})
        for writer in list(self.subscribers):
            if writer.is_closing() or writer.transport.get_write_buffer_size() > MAX_EVENT_BACKLOG:
                self.subscribers.discard(writer)  # gone or not reading: stop queueing for it
                writer.close()
                continue
            writer.write(line)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict) -> None:
        writer.write(encode_line(message))
        await writer.drain()

    async def respond(self, line: bytes) -> dict:
        """Exactly one reply per request line, whatever the line holds."""
        try:
            return await self._respond(line)
        except BaseException as exc:
            if is_fatal(exc):
                raise
            log.exception("request failed")
            return error(f"internal error: {type(exc).__name__}", "internal")

    async def _respond(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(f"malformed JSON: {exc}", "malformed")
        except RecursionError:
            return error("malformed JSON: nested too deeply", "malformed")
        if not isinstance(request, dict):
            return error("a request must be a JSON object", "malformed")
        request_id, kind = request.get("id"), request.get("type")
        if not valid_id(request_id):
            return error("'id' must be a string, a finite number, true/false or null", "bad_request")
        if kind == "ping":
            return {"type": "pong", "id": request_id}
        if kind == "outline":
            return {"type": "outline", "id": request_id, "documents": self._outline}
        if kind == "subscribe":
            return {"type": "subscribed", "id": request_id}
        if kind == "listen":
            if self.on_listen is None or not self.on_listen():
                return error("no microphone loop is running (speech disabled or no audio device)", "no_audio",
                             request_id)
            return {"type": "listening", "id": request_id}
        if kind != "ask":
            return error(f"unknown request type {kind!r} ({', '.join(REQUEST_TYPES)})", "unknown_type", request_id)
        question, top_k = request.get("question"), request.get("top_k")
        if not isinstance(question, str):
            return error("'question' must be a string", "bad_question", request_id)
        low, high = LIMITS["retriever.top_k"]
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not low <= top_k <= high):
            return error(f"'top_k' must be an integer from {low} to {high}", "bad_request", request_id)
        try:
            answer = await asyncio.get_running_loop().run_in_executor(self.executor, self.pipeline.ask, question, top_k)
        except ApplianceError as exc:
            return error(str(exc), type(exc).__name__, request_id)
        except BaseException as exc:  # a bug or a library panic must not take the daemon down
            if is_fatal(exc):
                raise
            log.exception("ask failed")
            return error(f"internal error: {type(exc).__name__}", "internal", request_id)
        log.info(json.dumps({"event": "answered", "abstained": answer.abstained, "confidence": answer.confidence,
                             **{f"{k}_ms": v for k, v in answer.timings_ms.items()}}))
        if self.subscribers:  # serialise the answer a second time only when someone listens
            self.publish(Answered(answer, via="api").to_json())
        return {"type": "answer", "id": request_id, "answer": answer.to_json()}
