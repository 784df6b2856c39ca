"""EM/F1 of a reader on any SQuAD-format file (official SQuAD normalisation), as JSON.

For files with unanswerable questions (SQuAD 2.0 style) the reader abstains below the
threshold and the report adds has-answer F1 and no-answer accuracy.
"""
from __future__ import annotations

import re
import string
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from appliance import runtime
from appliance.config import Config, load_config
from appliance.reader import Reader, SpanPrediction
from build_tools.evaluation_cli import evaluation_parser, run_evaluation
from build_tools.squad import SquadExample, load_squad


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD's evaluate-v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def score(prediction: str, example: SquadExample) -> tuple[float, float]:
    """(EM, F1), max over gold answers; for an unanswerable question only "" is right."""
    golds = example.answers or ("",)
    return max(exact_match(prediction, g) for g in golds), max(f1_score(prediction, g) for g in golds)


def predict_all(reader: Reader, examples: list[SquadExample]) -> list[SpanPrediction | None]:
    predictions: list[SpanPrediction | None] = []
    chunk = 256
    with tqdm(total=len(examples), desc="reading", unit="q") as bar:  # stderr: JSON stays on stdout
        for i in range(0, len(examples), chunk):
            part = examples[i : i + chunk]
            predictions += reader.predict([(ex.question, ex.context) for ex in part], batch_size=32)
            bar.update(len(part))
    return predictions


def report(examples: list[SquadExample], predictions: list[SpanPrediction | None], threshold: float | None) -> dict:
    """Metrics with abstention at ``threshold`` (None: always answer)."""
    totals = {"all": [], "has_answer": [], "no_answer": []}
    for ex, pred in zip(examples, predictions):
        abstain = pred is None or (threshold is not None and pred.confidence < threshold)
        em, f1 = score("" if abstain else pred.text, ex)
        totals["all"].append((em, f1))
        totals["no_answer" if ex.is_impossible else "has_answer"].append((em, f1))
    out: dict = {"questions": len(examples)}
    splits = totals if totals["no_answer"] else {"all": totals["all"]}
    for key, rows in splits.items():
        if rows:
            out[key] = {"count": len(rows), "exact_match": round(100 * sum(r[0] for r in rows) / len(rows), 2),
                        "f1": round(100 * sum(r[1] for r in rows) / len(rows), 2)}
    if "no_answer" in out:
        out["no_answer"]["abstention_accuracy"] = out["no_answer"].pop("exact_match")
        out["no_answer"].pop("f1")
    return out


def evaluate(data: Path, model_dir: Path, onnx_name: str | None, limit: int, threshold: float | None,
             articles: str | None = None, config: Config | None = None) -> dict:
    """The reader as ``config`` (default: the shipped one) sets it up, model from ``model_dir``."""
    examples = select_articles(load_squad(data), articles)
    if limit:
        examples = examples[:limit]
    reader = runtime.open_reader(config or Config(), model_dir, onnx_name)
    started = time.time()
    predictions = predict_all(reader, examples)
    has_impossible = any(ex.is_impossible for ex in examples)
    result = {"data": str(data), "model": str(model_dir / (onnx_name or reader.manifest["roles"]["onnx"])),
              "articles": articles or "all", "seconds": round(time.time() - started, 1)}
    result["always_answer"] = report(examples, predictions, None)
    if has_impossible:
        result["threshold"] = threshold
        result["with_abstention"] = report(examples, predictions, threshold)
    return result


def select_articles(examples: list[SquadExample], articles: str | None) -> list[SquadExample]:
    """'a:b' keeps articles a..b-1 (by order of title in the file): named, reproducible splits."""
    if not articles:
        return examples
    start, _, stop = articles.partition(":")
    titles = list(dict.fromkeys(ex.title for ex in examples))
    keep = set(titles[int(start or 0) : int(stop) if stop else None])
    return [ex for ex in examples if ex.title in keep]


def main(argv: list[str] | None = None) -> None:
    p = evaluation_parser("build_tools evaluate-reader", __doc__, "models/reader")
    p.add_argument("--threshold", type=float, default=None,
                   help="abstention threshold for files with unanswerable questions (default: the config's)")
    p.add_argument("--articles", default=None, help="only articles a:b of the file")
    p.add_argument("--config", type=Path, default=None, help="appliance TOML whose [reader] settings to use")
    args = p.parse_args(argv)
    config = load_config(args.config) if args.config else Config()
    threshold = config.reader.threshold if args.threshold is None else args.threshold
    run_evaluation(args, lambda: evaluate(args.data, args.model, args.onnx, args.limit, threshold, args.articles,
                                          config))

if __name__ == "__main__":
    main()
