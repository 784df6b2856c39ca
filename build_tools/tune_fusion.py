"""tune-fusion: choose the hybrid retriever's fusion (reciprocal rank fusion's constant and dense
weight, or the convex combination of normalised scores and its dense share) on held-in data only,
then report the choice against the shipped setting on data it was not chosen on.

Tune data: the tune split of the knowledge-base questions (tests/data/kb_eval.json, the split
rule written in that file) and the tune articles of SQuAD dev-42 (TUNE_RULE below: a quarter of
the articles by a hash of the title; every question is still searched against all paragraphs of
the file). The objective is the mean over the two tune sets of (R@1 + R@5) / 2. The shipped
setting stays unless the best of the grid beats it by more than --margin on that objective.

Reported: dev-42 (all questions, and the test articles alone), the KB test split, and
out-of-domain files nothing here is trained or tuned on (by default NQ-QED dev: real search
queries over 1,343 Wikipedia paragraphs, and MedicationQA: 651 distinct consumers' questions
about their medicines over its 653 distinct answers; --ood FILE+OTHER widens a SQuAD-format
FILE's pool with OTHER's paragraphs as distractors; a JSON list of question/answer rows is
pooled by its answers): dense, BM25,
the shipped retriever (the config's [retriever] section, searched one question at a time as the
appliance does), the fusion at the shipped weights and at the chosen ones. With
--heading-variants also KB top-1/top-5 with and without the heading path in the text each
ranker indexes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

from appliance.config import Config, IngestConfig, RetrieverConfig, load_config
from appliance.index import IndexSummary, collect_passages
from build_tools.evaluate_retriever import (FUSION_KEYS, Pool, Ranked, fuse, fusion_of, fusion_settings, is_qa_pairs,
                                            open_encoder, qa_pairs_pool, rank, recalls, setting_of, squad_pool)
from build_tools.paths import PROJECT_ROOT, SHARED_DATA, SQUAD_DIR
from build_tools.selective import load_questions

TUNE_RULE = "tune when int(hashlib.sha256(title.encode('utf-8')).hexdigest(), 16) % 4 == 0"
DEFAULT_SQUAD = SQUAD_DIR / "dev-v1.1-42-articles.json"
DEFAULT_KB = PROJECT_ROOT / "knowledge"
DEFAULT_QUESTIONS = PROJECT_ROOT / "tests" / "data" / "kb_eval.json"
EXTRA = SHARED_DATA / "qa-extra"
# MedicationQA (MedInfo 2019): real consumers' questions about their medicines, each against every
# answer of the set; nothing of it is in the retriever's training data (MedQuAD's questions are
# NIH-written and share no question or answer with it).
# PolicyQA is not used by default: its questions are generic ("what information do you collect?")
# and each of its 20 privacy policies answers them, so the one gold paragraph is one of many right
# ones (dense and BM25 alike find it in the first 5 for 2% of the questions).
DEFAULT_OOD = [str(EXTRA / "nq-qed-dev.squad.json"), str(SHARED_DATA / "medical" / "medication-qa.json")]


def is_tune_article(title: str) -> bool:
    """TUNE_RULE: a fixed quarter of SQuAD articles, by title alone."""
    return int(hashlib.sha256(title.encode("utf-8")).hexdigest(), 16) % 4 == 0


def kb_pool(kb_dir: Path, questions_file: Path, ingest: IngestConfig, dense_heading: bool = True,
            bm25_heading: bool = True) -> Pool:
    """The knowledge base's passages as the index builds them, with (``Passage.search_text``) or
    without the heading path, and its answerable questions; gold = every passage of the gold
    section (document and last heading, as evaluate-kb counts it). Groups are the splits."""
    passages = collect_passages(kb_dir, ingest, IndexSummary())
    text = lambda p, heading: p.search_text() if heading else p.text  # noqa: E731
    questions = [q for q in load_questions(questions_file) if q["kind"] == "answerable"]
    gold = [frozenset(i for i, p in enumerate(passages)
                      if p.source == q.get("document") and p.section[-1:] == (q.get("section"),)) for q in questions]
    return Pool("kb", [text(p, dense_heading) for p in passages], [q["question"] for q in questions], gold,
                [text(p, bm25_heading) for p in passages], [q["split"] for q in questions],
                {"kb": str(kb_dir), "questions_file": str(questions_file), "passages": len(passages),
                 "heading_path": {"dense": dense_heading, "bm25": bm25_heading},
                 "questions_without_gold_passage": sum(not g for g in gold)},
                [p.text for p in passages], [p.citation if dense_heading else "" for p in passages])


def objective(scores: list[dict[str, float]]) -> float:
    return round(sum((r["R@1"] + r["R@5"]) / 2 for r in scores) / max(len(scores), 1), 4)


def distance(setting: dict, shipped: dict) -> tuple:
    """How far a setting is from the shipped one (another fusion is farthest): ties on the objective
    go to the nearest, the dense weight before the RRF constant."""
    if setting["fusion"] != shipped["fusion"]:
        return (1,)
    return (0, *(abs(setting[k] - shipped[k]) for k in reversed(FUSION_KEYS[setting["fusion"]])))


def choose(tune: list[tuple[Pool, Ranked]], shipped: RetrieverConfig, margin: float) -> dict:
    """Every grid setting's objective on the tune sets; the best, and whether it replaces the shipped one."""
    grid = []
    current_setting = fusion_of(shipped)
    scored = all(ranked.scores is not None for _, ranked in tune)  # convex settings need every set's scores
    for setting in [s for s in fusion_settings(tune[0][1], shipped) if scored or s["fusion"] == "rrf"]:
        per_set = {pool.name: recalls(fuse(ranked, setting), pool.gold) for pool, ranked in tune}
        grid.append({**setting, "objective": objective(list(per_set.values())), **per_set})
    best = max(grid, key=lambda g: (g["objective"], tuple(-x for x in distance(setting_of(g), current_setting))))
    current = next(g for g in grid if setting_of(g) == current_setting)
    change = best["objective"] - current["objective"] > margin
    chosen = best if change else current
    return {"tune_sets": [f"{p.name} ({len(p.questions)} questions)" for p, _ in tune],
            "objective": "mean over the tune sets of (R@1 + R@5) / 2", "margin": margin,
            "shipped": current, "best": best, "chosen": setting_of(chosen),
            "changes_the_shipped_setting": change,
            "grid": sorted(grid, key=lambda g: -g["objective"])}


def describe(pool: Pool, ranked: Ranked, shipped: RetrieverConfig, chosen: dict,
             also: tuple[tuple[int, float], ...] = ()) -> dict:
    out = {"questions": len(pool.questions), "passages": len(pool.texts),
           "dense": recalls(ranked.dense, pool.gold), "bm25": recalls(ranked.bm25, pool.gold)}
    if ranked.shipped is not None:
        out["shipped_retriever"] = recalls(ranked.shipped, pool.gold)
    out["fused_shipped"] = recalls(fuse(ranked, fusion_of(shipped)), pool.gold)
    out["fused_chosen"] = recalls(fuse(ranked, chosen), pool.gold)
    for k, w in also:
        out[f"fused_rrf_k_{k}_dense_weight_{w:g}"] = recalls(fuse(ranked, {"fusion": "rrf", "rrf_k": k,
                                                                            "dense_weight": w}), pool.gold)
    return out


def fusion_setting(text: str) -> tuple[int, float]:
    k, w = text.split(":")
    return int(k), float(w)


def heading_variants(encoder, kb_dir: Path, questions_file: Path, config: Config) -> dict:
    """KB top-1/top-5 (tune and test) for each placement of the heading path."""
    out = {}
    for dense_heading, bm25_heading in ((True, True), (False, False), (True, False), (False, True)):
        pool = kb_pool(kb_dir, questions_file, config.ingest, dense_heading, bm25_heading)
        ranked = rank(pool, encoder, config.retriever)
        label = f"dense {'with' if dense_heading else 'without'}, bm25 {'with' if bm25_heading else 'without'}"
        out[label] = {}
        for split in ("tune", "test"):
            part, idx = pool.subset(lambda g, s=split: g == s, split)
            sub = ranked.subset(idx)
            out[label][split] = {"questions": len(part.questions),
                                 "shipped_retriever": recalls(sub.shipped, part.gold),
                                 "dense": recalls(sub.dense, part.gold), "bm25": recalls(sub.bm25, part.gold)}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools tune-fusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD, help="SQuAD-format file split by TUNE_RULE")
    p.add_argument("--kb", type=Path, default=DEFAULT_KB)
    p.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="KB questions with tune/test splits")
    p.add_argument("--ood", nargs="*", default=DEFAULT_OOD,
                   help="out-of-domain SQuAD-format files (FILE+OTHER adds OTHER's paragraphs to FILE's pool "
                        "as distractors) or question/answer lists (default: NQ-QED dev, MedicationQA)")
    p.add_argument("--model", type=Path, default=None, help="retriever model dir (default: the config's)")
    p.add_argument("--config", type=Path, default=None, help="appliance TOML (default: the shipped configuration)")
    p.add_argument("--margin", type=float, default=0.005,
                   help="the best setting replaces the shipped one only when its objective is higher by more")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions of each SQuAD file")
    p.add_argument("--heading-variants", action="store_true", help="also KB retrieval with/without heading paths")
    p.add_argument("--also", nargs="*", type=fusion_setting, default=[(60, 2.0)], metavar="K:W",
                   help="also report the fusion at these RRF constants and dense weights (default 60:2, the "
                        "setting shipped before tune-fusion chose one)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = p.parse_args(argv)

    started = time.time()
    config = load_config(args.config) if args.config else Config()
    shipped = config.retriever
    encoder, onnx_path = open_encoder(config, args.model)
    squad = squad_pool(args.squad, limit=args.limit, name="dev")
    squad_ranked = rank(squad, encoder, shipped)
    kb = kb_pool(args.kb, args.questions, config.ingest)
    kb_ranked = rank(kb, encoder, shipped)

    def part(pool: Pool, ranked: Ranked, keep, name: str) -> tuple[Pool, Ranked]:
        sub, idx = pool.subset(keep, name)
        return sub, ranked.subset(idx)

    squad_tune = part(squad, squad_ranked, is_tune_article, f"{args.squad.name} tune articles")
    squad_test = part(squad, squad_ranked, lambda t: not is_tune_article(t), f"{args.squad.name} test articles")
    kb_tune = part(kb, kb_ranked, lambda s: s == "tune", "KB tune split")
    kb_test = part(kb, kb_ranked, lambda s: s == "test", "KB test split")
    choice = choose([squad_tune, kb_tune], shipped, args.margin)
    chosen = choice["chosen"]

    also = tuple(args.also)
    results = {f"{args.squad.name} (all questions, full pool)": describe(squad, squad_ranked, shipped, chosen, also)}
    for pool, ranked in (squad_test, kb_test, squad_tune, kb_tune):
        results[pool.name] = describe(pool, ranked, shipped, chosen, also)
    for spec in args.ood:
        data, *distractors = [Path(f) for f in spec.split("+")]
        pool = qa_pairs_pool(data) if is_qa_pairs(data) else squad_pool(data, distractors, limit=args.limit)
        widened = " + " + ", ".join(d.name for d in distractors) if distractors else ""
        results[f"{data.name} (out of domain, full pool{widened})"] = {
            **describe(pool, rank(pool, encoder, shipped), shipped, chosen, also),
            "paragraphs_of_file": pool.info["paragraphs_of_file"], "distractors": pool.info["distractors"]}
    report = {"encoder": str(onnx_path), "squad_tune_rule": TUNE_RULE,
              "shipped": {**fusion_of(shipped), "candidates": shipped.candidates},
              "choice": {k: v for k, v in choice.items() if k != "grid"}, "results": results,
              "grid_top10": choice["grid"][:10]}
    if args.heading_variants:
        report["kb_heading_path"] = heading_variants(encoder, args.kb, args.questions,
                                                     replace(config, retriever=replace(shipped, **chosen)))
    report["seconds"] = round(time.time() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
