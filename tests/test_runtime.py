"""One Config, every front end: the CLI's ask path, the daemon's socket API, the voice parts, the
Wyoming service and the TUI are each built from the same TOML file, the way their commands build
them, and must run the same pipeline settings. The settings are chosen away from the defaults so
that a front end falling back on a default of its own shows up in what it answers: three passages
(retriever.top_k), a fusion and a passage choice of their own, an abstention threshold no answer
reaches, and a question limit the long question breaks."""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from appliance import runtime
from appliance.config import Config, load_config
from appliance.errors import BadQuestionError
from appliance.schema import Answer

QUESTION = "how long should I preheat the oven for bread?"
TOO_LONG = "could you please tell me how long I should preheat the oven before baking bread?"
SETTINGS = """
[paths]
index = "{index}"
[retriever]
top_k = 3
dense_weight = 3.0
rrf_k = 20
candidates = 12
[reader]
threshold = 0.99
rank_weight = 1.0
[ask]
max_question_chars = 60
[speech]
asr = "pocketsphinx"
tts = "espeak"
listen = "always"
vad_threshold = 0.6
end_silence_ms = 480
max_utterance_s = 9.0
no_speech_timeout_s = 4.0
speculate_silence_ms = 128
"""


def comparable(answer: dict) -> dict:
    """An answer without its timings, which differ from run to run."""
    return {k: v for k, v in answer.items() if k != "timings_ms"}


@pytest.fixture(scope="module")
def config_file(kb_index_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("one-config") / "appliance.toml"
    path.write_text(SETTINGS.format(index=kb_index_dir), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def configured(config_file) -> Config:
    return load_config(config_file)


@contextlib.contextmanager
def started(args: list[str], ready) -> subprocess.Popen:
    """A front end as a real process (`python -m appliance ...`), until ``ready()`` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "appliance", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "front end did not come up"
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def reference(configured) -> dict:
    """What the configured pipeline answers, built by the runtime directly."""
    answer = runtime.load_pipeline(configured, build_if_missing=False).ask(QUESTION).to_json()
    assert len(answer["candidates"]) == 3, "retriever.top_k should show in the answer"
    assert answer["abstained"] == (answer["confidence"] < 0.99)
    assert answer["source"]["document"].startswith("Hearthline")
    return answer


def test_cli_ask_runs_the_configured_pipeline(config_file, reference, capsys):
    from appliance.cli import main

    assert main(["ask", "--json", "--config", str(config_file), QUESTION]) == 0
    assert comparable(json.loads(capsys.readouterr().out)) == comparable(reference)
    assert main(["ask", "--config", str(config_file), TOO_LONG]) == BadQuestionError.exit_code


def test_tui_in_process_backend_runs_the_configured_pipeline(configured, reference, tmp_path):
    from appliance.tui import LocalBackend, connect_backend

    backend = connect_backend(configured, None, None, tmp_path / "no-daemon.sock")
    assert isinstance(backend, LocalBackend)
    assert comparable(backend.ask(QUESTION).to_json()) == comparable(reference)
    with pytest.raises(BadQuestionError):
        backend.ask(TOO_LONG)


def test_daemon_api_runs_the_configured_pipeline(config_file, reference, tmp_path):
    from appliance.client import ApiClient, ApiError, socket_in_use

    sock = tmp_path / "appliance.sock"
    args = ["serve", "--no-voice", "--config", str(config_file), "--socket", str(sock)]
    with started(args, lambda: socket_in_use(sock)), ApiClient(sock, timeout=120) as client:
        assert comparable(client.ask(QUESTION).to_json()) == comparable(reference)
        with pytest.raises(ApiError, match="limit is 60"):
            client.ask(TOO_LONG)


def test_wyoming_service_runs_the_configured_pipeline(config_file, reference, tmp_path):
    from wyoming.asr import Transcript
    from wyoming.client import AsyncClient
    from wyoming.handle import Handled, NotHandled

    sock = tmp_path / "wyoming.sock"
    uri = f"unix://{sock}"

    async def handle(text: str):
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Transcript(text=text).event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 120)
                if Handled.is_type(event.type) or NotHandled.is_type(event.type):
                    return event

    with started(["wyoming", "--config", str(config_file), "--uri", uri], sock.exists):
        event = asyncio.run(handle(QUESTION))
        refused = asyncio.run(handle(TOO_LONG))
    assert NotHandled.is_type(event.type) == reference["abstained"]  # the configured threshold decides
    assert event.data["text"] == Answer.from_json(reference).spoken()
    assert event.data["context"]["source"] == reference["source"]["citation"]
    assert event.data["context"]["confidence"] == reference["confidence"]
    assert NotHandled.is_type(refused.type) and "limit is 60" in refused.data["text"]


def test_voice_parts_follow_the_speech_section(configured):
    """The voice loop's settings (the daemon's microphone loop and `serve --input` build them here)."""
    from appliance.index import load_index
    from appliance.speech.vad import EndpointSettings

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")

    parts = runtime.voice_parts(configured, load_index(configured.paths.index))
    sc = configured.speech
    assert parts.endpoint == EndpointSettings(threshold=0.6, end_silence_ms=480, max_utterance_s=9.0,
                                              no_speech_timeout_s=4.0)
    assert parts.endpoint == EndpointSettings.of(sc) and parts.speculate_ms == sc.speculate_silence_ms == 128
    assert parts.wake is None  # listen = "always"
    assert parts.recognizer.name == "pocketsphinx+kb"  # adapted to the configured index's KB
    assert parts.synthesizer.name.startswith("espeak")
