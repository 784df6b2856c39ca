"""The socket API answers every request line with exactly one valid JSON line, whatever the line
holds, and never drops a client: a real ApiServer on a real Unix socket with the real pipeline."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from tests.test_api import raw_exchange
from conftest import run_cli
from test_api import RunningServer

LONG_QUESTION = " ".join(["a"] * 249)  # 497 characters: under the 500-character limit


def strict_json(line: bytes):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)  # strict UTF-8, no NaN/Infinity


def exchange(path, payload: bytes, timeout: float = 120) -> list:
    return raw_exchange(path, payload, strict_json, timeout)


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    running = RunningServer(pipeline, tmp_path_factory.mktemp("api-bad") / "a.sock", max_line_bytes=1 << 20)
    yield running
    running.stop()


ODD_LINES = [
    (b"[" * 100_000 + b"\n", "malformed"),
    (b'{"type": "ping", "id": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "malformed"),
    (b'{"type": "ping", "id": NaN}\n', "bad_request"),
    (b'{"type": "ping", "id": -Infinity}\n', "bad_request"),
    (b'{"type": "ping", "id": 1e999}\n', "bad_request"),
    (b'{"type": "ask", "question": "\\ud800 what?", "id": "\\udc00"}\n', None),
    (b'{"type": "dance\\ud800", "id": 3}\n', "unknown_type"),
    (b'{"type": "ask", "question": "' + LONG_QUESTION.encode() + b'", "id": "long"}\n', "BadQuestionError"),
    (b'{"type": "ask", "question": "hi", "top_k": 1e999}\n', "bad_request"),
    (b"\xff\xfe\x00garbage\n", "malformed"),
    (b'{"type": ' + b'"x' * 1000 + b"\n", "malformed"),
]


@pytest.mark.parametrize("line, code", ODD_LINES, ids=range(len(ODD_LINES)))
def test_each_odd_line_gets_one_valid_reply_and_the_connection_survives(server, line, code):
    replies = exchange(server.server.socket_path, line + b'{"type": "ping", "id": "after"}\n')
    assert len(replies) == 2, replies
    assert replies[1] == {"type": "pong", "id": "after"}
    if code is None:
        assert replies[0]["type"] in ("answer", "error")
    else:
        assert replies[0]["type"] == "error" and replies[0]["code"] == code, replies[0]


def test_lone_surrogates_are_escaped_not_fatal(server):
    reply = exchange(server.server.socket_path, b'{"type": "ping", "id": "a\\ud800b"}\n')[0]
    assert reply == {"type": "pong", "id": "a\ud800b"}


def test_long_question_is_a_clear_error_not_a_tokenizer_panic(pipeline):
    from appliance.errors import BadQuestionError

    with pytest.raises(BadQuestionError, match="tokens long; the limit is 100"):
        pipeline.ask(LONG_QUESTION)
    at_limit = " ".join(["the"] * 100)  # exactly at the token limit: answered or abstained, never an error
    assert len(pipeline.reader.tokenizer.encode(at_limit, add_special_tokens=False).ids) == 100
    assert pipeline.ask(at_limit).question == at_limit
    with pytest.raises(BadQuestionError, match="101 tokens"):
        pipeline.ask(at_limit + " the")


def test_cli_long_question_exits_2(tmp_path, kb_index_dir):
    result = run_cli("appliance", "ask", LONG_QUESTION, "--index", str(kb_index_dir))
    assert result.returncode == 2, result.stderr
    assert "limit is 100" in result.stderr and "Traceback" not in result.stderr


def test_queued_clients_get_an_error_line_on_shutdown(pipeline, tmp_path):
    """Clients waiting in the one-at-a-time queue when the server stops get a reply, not a bare EOF."""
    running = RunningServer(pipeline, tmp_path / "s.sock")
    path = Path(running.server.socket_path)
    results: dict[int, list] = {}

    def client(i: int) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(120)
            sock.connect(str(path))
            sock.sendall(json.dumps({"type": "ask", "id": i, "question": f"how do I clean filter {i}?"}).encode()
                         + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            results[i] = [strict_json(line) for line in data.splitlines()]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    while len(running.server._pending) < 6 and any(t.is_alive() for t in threads):
        threading.Event().wait(0.01)
    running.stop()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(6))
    for i, replies in results.items():
        assert len(replies) == 1 and replies[0]["id"] == i, replies
        assert replies[0]["type"] == "answer" or replies[0]["code"] == "shutting_down"
    assert sum(r[0]["type"] == "error" for r in results.values()) >= 4  # one model call at a time


FUZZ_API = sorted((Path(__file__).parent / "data" / "fuzz-api").glob("*.jsonl"))


@pytest.mark.parametrize("case", FUZZ_API, ids=[p.name for p in FUZZ_API])
def test_fuzz_api_corpus_gets_one_reply_each(server, case):
    """Lines the protocol fuzzer (benchmarks/fuzz_parsers.py --target api) kept: each must keep behaving."""
    replies = exchange(server.server.socket_path, case.read_bytes().rstrip(b"\n") + b'\n{"type": "ping", "id": "s"}\n')
    assert len(replies) == 2 and replies[1] == {"type": "pong", "id": "s"}, replies
    assert replies[0].get("code") != "internal", replies[0]
