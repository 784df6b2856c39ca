"""The local JSON-lines API on a real Unix socket, and `appliance serve` as a real process."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT

from appliance.api import ApiServer
from appliance.client import ApiClient, ApiError
from appliance.errors import ApplianceError


class RunningServer:
    """An ApiServer on its own event loop in a background thread."""

    def __init__(self, pipeline, path, max_line_bytes=4096):
        self.server = ApiServer(pipeline, path, max_line_bytes)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "appliance.sock"
    running = RunningServer(pipeline, path)
    yield running
    running.stop()


def raw_exchange(path, payload: bytes, parse=json.loads, timeout: float = 30) -> list:
    """Send ``payload``, close the sending side, parse every reply line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [parse(line) for line in data.splitlines()]


def test_ask_over_the_socket(server):
    with ApiClient(server.server.socket_path) as client:
        answer = client.ask("how long should I preheat the oven for bread?", top_k=3)
        assert answer.source is not None and len(answer.candidates) == 3
        assert client.request({"type": "ping"})["type"] == "pong"
        outline = client.outline()
        assert len(outline) == 7 and any(s.path == ("Preheating",) for d in outline for s in d.sections)


def test_socket_is_0660(server):
    mode = stat.S_IMODE(os.stat(server.server.socket_path).st_mode)
    assert mode == 0o660


def test_malformed_requests_get_errors_and_the_connection_survives(server):
    replies = raw_exchange(server.server.socket_path, b"{not json\n[1,2]\n"
                           b'{"type":"dance"}\n{"type":"ask","question":5}\n'
                           b'{"type":"ask","question":"hi","top_k":0}\n{"type":"ask","question":"   ","id":7}\n'
                           b'{"type":"ping","id":"last"}\n')
    assert [r["type"] for r in replies] == ["error"] * 6 + ["pong"]
    assert [r["code"] for r in replies[:6]] == ["malformed", "malformed", "unknown_type", "bad_question",
                                                "bad_request", "BadQuestionError"]
    assert replies[5]["id"] == 7 and "empty" in replies[5]["error"]


def test_oversized_line_is_refused_and_closed(server):
    replies = raw_exchange(server.server.socket_path, b'{"type":"ask","question":"' + b"x" * 10000 + b'"}\n'
                           b'{"type":"ping"}\n')
    assert replies[0]["code"] == "line_too_long" and len(replies) == 1
    with ApiClient(server.server.socket_path) as client:  # the server is still up
        assert client.request({"type": "ping"})["type"] == "pong"


def test_client_sees_server_errors_as_exceptions(server):
    with ApiClient(server.server.socket_path) as client, pytest.raises(ApiError, match="empty"):
        client.ask("")


def test_concurrent_clients_all_get_answers(server):
    def one(i):
        with ApiClient(server.server.socket_path) as client:
            return client.ask(f"what does fault code E0{i % 8 + 1} mean?").question

    with ThreadPoolExecutor(8) as pool:
        questions = list(pool.map(one, range(12)))
    assert len(questions) == 12


def test_second_server_on_a_live_socket_is_refused(server, pipeline):
    other = ApiServer(pipeline, server.server.socket_path)
    with pytest.raises(ApplianceError, match="already listening"):
        asyncio.run(other.start())


def test_connecting_to_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ApplianceError, match="cannot connect"):
        ApiClient(tmp_path / "none.sock")


def test_serve_process_answers_and_stops_cleanly_on_sigterm(tmp_path, kb_index_dir):
    sock = tmp_path / "run" / "appliance.sock"
    sock.parent.mkdir()
    sock.write_text("stale file from a crash")  # replaced, not an error
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--socket", str(sock),
                             "--index", str(kb_index_dir)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with ApiClient(sock, timeout=60) as client:
                    answer = client.ask("can I take ibuprofen with alcohol?")
                break
            except ApplianceError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        else:
            pytest.fail("server did not come up")
        assert answer.source.document.startswith("Ibuprofen")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not sock.exists()
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_slow_and_vanished_clients_do_not_hurt_others(server):
    path = str(server.server.socket_path)
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(path)
    slow.sendall(b'{"type": "ping", "id": "sl')  # half a request, then silence
    for _ in range(5):  # clients that ask and vanish before the answer
        gone = socket.socket(socket.AF_UNIX)
        gone.connect(path)
        gone.sendall(b'{"type": "ask", "question": "how do I clean the oven?"}\n')
        gone.close()
    with ApiClient(server.server.socket_path) as client:
        assert client.request({"type": "ping"})["type"] == "pong"
    slow.sendall(b'ow"}\n')
    slow.settimeout(10)
    assert json.loads(slow.makefile("rb").readline())["id"] == "slow"
    slow.close()


def test_fifty_concurrent_clients_each_get_an_answer_or_a_clear_error(server):
    questions = ["how long should I preheat the oven for bread?", "", "what does E03 mean?", "🙂" * 3]

    def one(i):
        with ApiClient(server.server.socket_path, timeout=120) as client:
            try:
                return client.ask(questions[i % len(questions)]).abstained in (True, False)
            except ApiError as exc:
                return "empty" in str(exc)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert all(results) and len(results) == 50
