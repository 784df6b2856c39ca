"""What the two evaluation commands share: their common arguments and how results come out."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from build_tools.manifest import record_metrics


def evaluation_parser(prog: str, doc: str, default_model: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("data", type=Path, help="SQuAD-format JSON (v1.1 or v2.0, optionally .gz)")
    p.add_argument("--model", type=Path, default=Path(default_model))
    p.add_argument("--onnx", default=None, help="ONNX file in the model dir (default: its manifest's)")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions")
    p.add_argument("--record", nargs="?", type=Path, const=True, default=None, metavar="MODEL_DIR",
                   help="also store the result under metrics in manifest.json of MODEL_DIR (default: --model)")
    return p


def run_evaluation(args: argparse.Namespace, evaluate: Callable[[], dict]) -> None:
    """Print the result as JSON (and record it); a file that is not SQuAD-format exits 2."""
    try:
        result = evaluate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.record:
        record_metrics(args.model if args.record is True else args.record, result)
    print(json.dumps(result, indent=2))
