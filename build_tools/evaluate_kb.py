"""End-to-end accuracy on knowledge-base questions: retrieval top-1/top-5 of the gold section
and answer accuracy of the whole pipeline, for a grid of retrieval and passage-choice settings.

Question files are JSON lists of {"question", "document", "section", "answer"} (see
tests/data/kb_questions_*.json); "answer" is a short span that a right answer contains.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.config import Config, load_config
from appliance.pipeline import QAPipeline, choose_span
from build_tools.evaluate_reader import f1_score

OFF_TOPIC = [  # nothing in a kitchen/machine/medication knowledge base answers these
    "who won the football world cup in 1998?", "what is the capital of australia?", "how do I change a car tyre?",
    "what is the best pizza topping?", "how tall is mount everest?", "who wrote hamlet?",
    "what's the weather tomorrow?", "how do I reset my wifi router?", "what is the speed of light?",
    "can you play some music?",
]
DEFAULT_FILES = sorted((Path(__file__).resolve().parent.parent / "tests" / "data").glob("kb_questions_*.json"))


def is_right(prediction: str, gold: str) -> bool:
    p, g = prediction.lower().strip(), gold.lower()
    return bool(p) and (g in p or (p in g and len(p) > 2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools evaluate-kb", description=__doc__)
    p.add_argument("questions", nargs="*", type=Path, default=DEFAULT_FILES)
    p.add_argument("--index", type=Path, default=None, help="index of the knowledge base (default: config)")
    p.add_argument("--modes", default="hybrid:1,hybrid:2,dense:1", help="mode:dense_weight,...")
    p.add_argument("--rank-weights", default="0,1,1.5,2,99")
    p.add_argument("--threshold", type=float, default=Config().reader.threshold)
    p.add_argument("--config", type=Path, default=None, help="appliance TOML (e.g. other model paths)")
    args = p.parse_args(argv)
    questions = [q for f in args.questions for q in json.loads(f.read_text(encoding="utf-8"))]
    config = load_config(args.config) if args.config else Config()
    pipeline = QAPipeline(config, index=args.index)
    retriever, passages = pipeline.retriever, pipeline.index.passages
    threshold = args.threshold
    report: dict = {"questions": len(questions), "threshold": threshold, "settings": {}}
    for setting in args.modes.split(","):
        mode, _, weight = setting.partition(":")
        retriever.mode, retriever.dense_weight = mode, float(weight or 1)
        top1 = top5 = 0
        rows = {float(w): [] for w in args.rank_weights.split(",")}
        for q in questions:
            hits = [passages[h.index] for h in retriever.search(q["question"], config.retriever.top_k)]
            gold = [h.source == q["document"] and h.section[-1:] == (q["section"],) for h in hits]
            top1 += gold[0]
            top5 += any(gold)
            predictions = pipeline.reader.predict([(q["question"], h.text) for h in hits])
            for weight_, row in rows.items():
                choice = choose_span(predictions, weight_)
                text = choice[0].text if choice else ""
                answered = bool(choice) and choice[0].confidence >= threshold
                row.append((is_right(text, q["answer"]), f1_score(text, q["answer"]), answered))
        off_topic = {weight_: 0 for weight_ in rows}
        for question in OFF_TOPIC:
            hits = [passages[h.index] for h in retriever.search(question, config.retriever.top_k)]
            predictions = pipeline.reader.predict([(question, h.text) for h in hits])
            for weight_ in rows:
                choice = choose_span(predictions, weight_)
                off_topic[weight_] += bool(choice) and choice[0].confidence >= threshold
        n = len(questions)
        report["settings"][setting] = {
            "retrieval_top1": round(top1 / n, 3), "retrieval_top5": round(top5 / n, 3),
            "answers": {str(w): {"right_if_always_answering": round(sum(r[0] for r in row) / n, 3),
                                 "f1": round(sum(r[1] for r in row) / n, 3),
                                 "answered": round(sum(r[2] for r in row) / n, 3),
                                 "right_and_answered": round(sum(r[0] and r[2] for r in row) / n, 3),
                                 "off_topic_answered": f"{off_topic[w]}/{len(OFF_TOPIC)}"}
                        for w, row in rows.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
