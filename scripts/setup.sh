#!/usr/bin/env bash
# Create .venv and install the appliance (runtime + test tools). Idempotent, offline-friendly:
# only the package registry is contacted, and only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import appliance, onnxruntime, tokenizers, faiss, pypdf, defusedxml, pytest" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]"
fi
