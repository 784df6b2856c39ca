"""Blocking client of the local JSON-lines API (used by the TUI and by other programs). Needs only
the standard library and ``appliance.schema``: no models, numpy or faiss."""
from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.schema import Answer, Ask, GetOutline, OutlineDocument


def socket_in_use(path: Path) -> bool:
    """True when a live server answers on ``path`` (a stale file from a crash does not count)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


class ApiError(ApplianceError):
    """The server answered with an error response."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class ApiClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0):
        self.socket_path = Path(socket_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.socket_path))
        except OSError as exc:
            self.sock.close()
            raise ApplianceError(f"cannot connect to the appliance server at {socket_path}: {exc}") from None
        self.stream = self.sock.makefile("rwb")
        self.ids = itertools.count(1)

    def request(self, message: dict) -> dict:
        message = {"id": next(self.ids), **message}
        try:
            self.stream.write(json.dumps(message).encode("utf-8") + b"\n")
            self.stream.flush()
            line = self.stream.readline()
        except OSError as exc:
            raise ApplianceError(f"the appliance server at {self.socket_path} went away: {exc}") from None
        if not line:
            raise ApplianceError(f"the appliance server at {self.socket_path} closed the connection")
        response = json.loads(line)
        if response.get("type") == "error":
            raise ApiError(response["error"], response.get("code", "error"))
        return response

    def ask(self, question: str, top_k: int | None = None) -> Answer:
        return Answer.from_json(self.request(Ask(question=question, top_k=top_k).to_json())["answer"])

    def outline(self) -> list[OutlineDocument]:
        return [OutlineDocument.from_json(d) for d in self.request(GetOutline().to_json())["documents"]]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
