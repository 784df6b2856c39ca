#!/usr/bin/env bash
# Set up, then answer a sample question from the bundled knowledge base (builds the index first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
QUESTION=${1:-"how long should I preheat the oven for bread?"}
.venv/bin/appliance ask "$QUESTION"
