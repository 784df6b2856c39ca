"""End-to-end accuracy on knowledge-base questions through the appliance's own pipeline (the
shipped configuration, or --config): retrieval top-1/top-5 of the gold section, answers right,
answers given that are right, abstention on unanswerable and off-topic questions, and how
many would be right if the box said the evidence sentence instead of the span.

Question files: see build_tools/selective.py (tests/data/kb_eval.json; older lists of
{"question", "document", "section", "answer"} count as answerable test questions).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance import runtime
from appliance.config import Config, load_config
from build_tools.selective import kb_records, load_questions, summary

DEFAULT_FILES = [Path(__file__).resolve().parent.parent / "tests" / "data" / "kb_eval.json"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools evaluate-kb", description=__doc__)
    p.add_argument("questions", nargs="*", type=Path, default=DEFAULT_FILES)
    p.add_argument("--split", default="test", help="tune | test | all")
    p.add_argument("--kb", type=Path, default=None, help="knowledge-base folder (default: config)")
    p.add_argument("--index", type=Path, default=None, help="index of the knowledge base (default: config)")
    p.add_argument("--config", type=Path, default=None, help="appliance TOML (e.g. other model paths)")
    p.add_argument("--threshold", type=float, default=None, help="default: the config's reader.threshold")
    args = p.parse_args(argv)
    questions = [q for f in args.questions for q in load_questions(f, args.split)]
    config = load_config(args.config) if args.config else Config()
    pipeline = runtime.load_pipeline(config, kb=args.kb, index=args.index)
    threshold = config.reader.threshold if args.threshold is None else args.threshold
    records = kb_records(pipeline, questions)
    report = {"files": [str(f) for f in args.questions], "split": args.split,
              "calibrated": pipeline.calibrator is not None, **summary(records, threshold)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
