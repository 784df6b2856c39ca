"""Choose the abstention threshold on a named validation split of a SQuAD 2.0 file.

The threshold maximises overall F1 (abstaining counts as right on unanswerable questions);
report results on a different split than the one tuned on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from appliance import runtime
from appliance.config import Config
from build_tools.evaluate_reader import predict_all, report, select_articles
from build_tools.manifest import update_manifest
from build_tools.squad import load_squad


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools tune-threshold", description=__doc__)
    p.add_argument("data", type=Path)
    p.add_argument("--model", type=Path, default=Path("models/reader"))
    p.add_argument("--tune-articles", default="0:8")
    p.add_argument("--report-articles", default="8:")
    p.add_argument("--write", action="store_true", help="record the result in the model's manifest")
    args = p.parse_args(argv)
    reader = runtime.open_reader(Config(), args.model)
    examples = load_squad(args.data)
    tune = select_articles(examples, args.tune_articles)
    held = select_articles(examples, args.report_articles)
    tune_preds = predict_all(reader, tune)
    grid = [round(t, 3) for t in np.arange(0.0, 1.0, 0.025)]
    f1s = {t: report(tune, tune_preds, t)["all"]["f1"] for t in grid}
    best = max(grid, key=lambda t: (f1s[t], -t))
    result = {"data": str(args.data), "tuned_on_articles": args.tune_articles, "threshold": best,
              "tune": report(tune, tune_preds, best),
              "held_out_articles": args.report_articles}
    held_preds = predict_all(reader, held)
    result["held_out"] = report(held, held_preds, best)
    if len(tune) + len(held) == len(examples):  # the two splits cover the file
        result["whole_file"] = report(tune + held, tune_preds + held_preds, best)
    if args.write:
        update_manifest(args.model, abstention=result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
