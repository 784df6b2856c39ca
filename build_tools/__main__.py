"""python -m build_tools COMMAND ...: the offline model build steps."""
from __future__ import annotations

import importlib
import sys

from appliance.errors import ApplianceError
from build_tools.errors import DataError

COMMANDS = {
    "export-retriever": "build_tools.export_retriever",
    "train-reader": "build_tools.train_reader",
    "train-retriever": "build_tools.train_retriever",
    "train-student": "build_tools.train_student",
    "export-reader": "build_tools.export_reader",
    "evaluate-reader": "build_tools.evaluate_reader",
    "evaluate-retriever": "build_tools.evaluate_retriever",
    "tune-fusion": "build_tools.tune_fusion",
    "evaluate-kb": "build_tools.evaluate_kb",
    "tune-threshold": "build_tools.tune_threshold",
    "calibrate": "build_tools.calibrate",
    "distill-reader": "build_tools.compress.distill",
    "distill-retriever": "build_tools.compress.distill_retriever",
    "prune-reader": "build_tools.compress.prune_reader",
    "prune-retriever": "build_tools.compress.prune_retriever",
    "prune-vocab": "build_tools.compress.vocab",
    "quantize": "build_tools.compress.quantize",
    "cluster": "build_tools.compress.cluster",
    "fuse": "build_tools.compress.fuse",
    "compress-export": "build_tools.compress.export",
    "report": "build_tools.compress.report",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print("usage: python -m build_tools {" + ",".join(COMMANDS) + "} [options]", file=sys.stderr)
        sys.exit(2)
    command = sys.argv[1]  # left in sys.argv: manifests record the full command line
    try:
        importlib.import_module(COMMANDS[command]).main(sys.argv[2:])
    except (DataError, ApplianceError) as exc:  # the user's input to fix: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
