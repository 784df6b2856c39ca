"""R@1/5/20 of each question's own paragraph among all paragraphs of a SQuAD-format file,
for dense, BM25 and fused (reciprocal rank) retrieval, as JSON."""
from __future__ import annotations

import time
from pathlib import Path

import faiss

from appliance.bm25 import BM25
from appliance.config import Config
from appliance.encoder import SentenceEncoder
from appliance.retriever import Retriever, SearchIndex, reciprocal_rank_fusion
from build_tools.evaluation_cli import evaluation_parser, run_evaluation
from build_tools.squad import load_squad

KS = (1, 5, 20)


def recalls(rankings: list[list[int]], gold: list[int]) -> dict[str, float]:
    return {f"R@{k}": round(sum(g in r[:k] for r, g in zip(rankings, gold)) / max(len(gold), 1), 4) for k in KS}


def evaluate(data: Path, model_dir: Path, onnx_name: str | None, limit: int) -> dict:
    examples = [ex for ex in load_squad(data) if not ex.is_impossible]
    if limit:
        examples = examples[:limit]
    paragraphs = list(dict.fromkeys(ex.context for ex in load_squad(data)))
    position = {text: i for i, text in enumerate(paragraphs)}
    gold = [position[ex.context] for ex in examples]
    questions = [ex.question for ex in examples]
    cfg = Config().retriever
    started = time.time()
    encoder = SentenceEncoder(model_dir, cfg, onnx_name)
    dense = faiss.IndexFlatIP(encoder.dim)
    dense.add(encoder.encode(paragraphs))
    bm25 = BM25.build(paragraphs)
    retriever = Retriever(encoder, SearchIndex(dense, bm25), cfg)
    depth = max(max(KS), cfg.candidates)
    dense_rank = retriever.dense_rankings(questions, depth)
    bm25_rank = [bm25.search(q, depth) for q in questions]
    fused_rank = [[d for d, _ in reciprocal_rank_fusion([a, b], cfg.rrf_k, [cfg.dense_weight, 1.0])]
                  for a, b in zip(dense_rank, bm25_rank)]  # the shipped fusion (retriever.dense_weight)
    return {
        "data": str(data), "encoder": str(model_dir / (onnx_name or encoder.manifest["roles"]["onnx"])),
        "questions": len(questions), "paragraphs": len(paragraphs), "candidates_per_ranker": depth,
        "dense": recalls(dense_rank, gold), "bm25": recalls(bm25_rank, gold), "fused": recalls(fused_rank, gold),
        "fusion": {"rrf_k": cfg.rrf_k, "dense_weight": cfg.dense_weight},
        "seconds": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = evaluation_parser("build_tools evaluate-retriever", __doc__, "models/retriever").parse_args(argv)
    run_evaluation(args, lambda: evaluate(args.data, args.model, args.onnx, args.limit))

if __name__ == "__main__":
    main()
