"""R@1/5/20 of each question's own paragraph among every paragraph of a SQuAD-format file (those
without questions too, plus the paragraphs of any --distractors files), as JSON: the shipped
configuration (a Retriever built from the config's [retriever] section, searched one question at
a time as the appliance does), dense, BM25, the fusion at the shipped setting, and every fusion of
a grid of RRF constants and dense weights and of convex dense shares (reported, not chosen here:
tune-fusion chooses on held-in data)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
from tqdm import tqdm

from appliance import runtime
from appliance.bm25 import BM25
from appliance.config import Config, RetrieverConfig, load_config
from appliance.encoder import SentenceEncoder
from appliance.index import encode_passages, sentence_vectors
from appliance.retriever import Retriever, SearchIndex, convex_fusion, reciprocal_rank_fusion
from build_tools.evaluation_cli import evaluation_parser, run_evaluation
from build_tools.squad import load_paragraphs, load_squad

KS = (1, 5, 20)
RRF_KS = (1, 5, 10, 20, 30, 60, 100)
DENSE_WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
CONVEX_SHARES = (0.5, 0.6, 0.7, 0.8, 0.9)
SENTENCE_LIST_WEIGHTS = (0.5, 0.75, 1.0)  # beside 0: sentences folded into the dense score


@dataclass
class Pool:
    """Passages to search and questions with the passages that answer them."""

    name: str
    texts: list[str]  # what the dense encoder embeds
    questions: list[str]
    gold: list[frozenset[int]]  # passages that answer each question
    bm25_texts: list[str] | None = None  # what BM25 indexes, when it differs from texts
    groups: list[str] = field(default_factory=list)  # per question: its article (SQuAD) or split (KB)
    info: dict = field(default_factory=dict)
    bodies: list[str] | None = None  # the passages without their heading path, when texts carry one
    prefixes: list[str] | None = None  # the heading path each passage's sentences are embedded after

    def sentence_sources(self) -> tuple[list[str], list[str]]:
        """(bodies, prefixes) for ``index.sentence_vectors``: bare sentences unless a prefix is given."""
        return self.bodies or self.texts, self.prefixes or [""] * len(self.texts)

    def subset(self, keep: Callable[[str], bool], name: str) -> tuple[Pool, list[int]]:
        """The same passages with only the questions whose group ``keep`` keeps (and their positions)."""
        idx = [i for i, g in enumerate(self.groups) if keep(g)]
        return Pool(name, self.texts, [self.questions[i] for i in idx], [self.gold[i] for i in idx],
                    self.bm25_texts, [self.groups[i] for i in idx], self.info, self.bodies, self.prefixes), idx


@dataclass
class Ranked:
    """Each question's ranking by each ranker (passage positions, best first)."""

    dense: list[list[int]]
    bm25: list[list[int]]
    shipped: list[list[int]] | None  # Retriever.search, one question at a time (the appliance's path)
    candidates: int  # per ranker, before fusion (retriever.candidates)
    scores: list[tuple[dict[int, float], dict[int, float]]] | None = None  # Retriever.candidate_scores, for convex
    separate: list[tuple[list[int], list[int]]] | None = None  # Retriever.separate_rankings, with sentence vectors

    def subset(self, idx: list[int]) -> Ranked:
        pick = lambda rows: [rows[i] for i in idx] if rows is not None else None  # noqa: E731
        return Ranked(pick(self.dense), pick(self.bm25), pick(self.shipped), self.candidates, pick(self.scores),
                      pick(self.separate))


def squad_pool(data: Path, distractors: Sequence[Path] = (), limit: int = 0,
               keep_article: Callable[[str], bool] | None = None, name: str | None = None) -> Pool:
    """Every paragraph of ``data`` (of the articles ``keep_article`` keeps), then the paragraphs of
    each distractor file not already in the pool; identical paragraphs are pooled once. The
    questions are the answerable ones (first ``limit`` when set)."""
    keep = keep_article or (lambda title: True)
    paragraphs = dict.fromkeys(text for title, text in load_paragraphs(data) if keep(title))
    own = len(paragraphs)
    added = []
    for extra in distractors:
        before = len(paragraphs)
        paragraphs.update(dict.fromkeys(text for _, text in load_paragraphs(extra)))
        added.append({"file": str(extra), "paragraphs": len(paragraphs) - before})
    examples = [ex for ex in load_squad(data) if not ex.is_impossible and keep(ex.title)]
    if limit:
        examples = examples[:limit]
    texts = list(paragraphs)
    position = {text: i for i, text in enumerate(texts)}
    info = {"data": str(data), "paragraphs_of_file": own, "distractors": added,
            "pool": "every paragraph of the file" + (" + the distractor files' paragraphs" if added else "")}
    return Pool(name or Path(data).name, texts, [ex.question for ex in examples],
                [frozenset([position[ex.context]]) for ex in examples], groups=[ex.title for ex in examples],
                info=info)


def is_qa_pairs(data: Path) -> bool:
    """A JSON list of question/answer rows (MedicationQA, MedQuAD pairs) rather than a SQuAD
    object: told by the first character, so the file is parsed once, by its pool."""
    if Path(data).suffix == ".gz":  # SQuAD train
        return False
    with open(data, encoding="utf-8") as fh:
        return fh.read(4096).lstrip().startswith("[")


def qa_pairs_pool(data: Path, limit: int = 0, name: str | None = None) -> Pool:
    """Every answer of a question/answer list as a passage (identical answers pooled once); each
    question's gold is every answer given to it (a question asked twice has both). Keys
    "question"/"answer" in any case (MedicationQA writes "Question"/"Answer"); rows without an
    answer are left out. The group of a question is its row's focus (the drug) when it has one."""
    rows = [{k.lower(): v for k, v in row.items()} for row in json.loads(Path(data).read_text(encoding="utf-8"))]
    rows = [r for r in rows if str(r.get("question") or "").strip() and str(r.get("answer") or "").strip()]
    texts = list(dict.fromkeys(r["answer"].strip() for r in rows))
    position = {text: i for i, text in enumerate(texts)}
    answers: dict[str, set[int]] = {}
    groups: dict[str, str] = {}
    for r in rows:
        question = r["question"].strip()
        answers.setdefault(question, set()).add(position[r["answer"].strip()])
        groups.setdefault(question, str(r.get("focus (drug)") or r.get("focus") or ""))
    questions = list(answers)[: limit or None]
    info = {"data": str(data), "paragraphs_of_file": len(texts), "distractors": [],
            "pool": "every answer of the file"}
    return Pool(name or Path(data).name, texts, questions, [frozenset(answers[q]) for q in questions],
                groups=[groups[q] for q in questions], info=info)


def open_encoder(config: Config, model: Path | None = None, onnx: str | None = None) -> tuple[SentenceEncoder, Path]:
    """The configured retriever model (paths.retriever_model), or ``model`` in its place, and its ONNX file."""
    encoder = runtime.open_encoder(config, model, onnx)
    return encoder, encoder.files.onnx(onnx)


def rank(pool: Pool, encoder: SentenceEncoder, config: RetrieverConfig, shipped: bool = True) -> Ranked:
    """Dense and BM25 rankings (depth max(20, candidates)), and with ``shipped`` the rankings of a
    Retriever built from ``config`` exactly as the appliance builds one, one question at a time."""
    dense = faiss.IndexFlatIP(encoder.dim)
    dense.add(encode_passages(encoder, pool.texts, True, f"{pool.name}: passages"))
    bm25 = BM25.build(pool.bm25_texts or pool.texts)
    sentences = sentence_vectors(encoder, *pool.sentence_sources(), True) if config.sentence_vectors else None
    retriever = Retriever(encoder, SearchIndex(dense, bm25, sentences), config)
    depth = max(max(KS), config.candidates)
    bm25_rank = [bm25.search(q, depth) for q in pool.questions]
    dense_rank, scores, separate = [], [], [] if sentences is not None else None
    for q in tqdm(pool.questions, desc=f"{pool.name}: dense rankings", unit="q", leave=False):
        vector = encoder.encode([q])  # each question alone, as the box encodes it
        dense_rank.append(retriever.dense_ranking(vector, depth))
        scores.append(retriever.candidate_scores(vector, q, config.candidates))
        if separate is not None:
            separate.append(retriever.separate_rankings(vector, depth))
    shipped_rank = None
    if shipped:
        shipped_rank = [[h.index for h in retriever.search(q, max(KS))]
                        for q in tqdm(pool.questions, desc=f"{pool.name}: shipped retriever", unit="q", leave=False)]
    return Ranked(dense_rank, bm25_rank, shipped_rank, config.candidates, scores, separate)


def recalls(rankings: list[list[int]], gold: Sequence[frozenset[int] | int]) -> dict[str, float]:
    """Share of questions with a gold passage among the first k, for k in KS."""
    sets = [g if isinstance(g, frozenset) else frozenset([g]) for g in gold]
    n = max(len(sets), 1)
    return {f"R@{k}": round(sum(bool(g.intersection(r[:k])) for r, g in zip(rankings, sets)) / n, 4) for k in KS}


FUSION_KEYS = {"rrf": ("rrf_k", "dense_weight", "sentence_list_weight"),  # RetrieverConfig fields
               "convex": ("convex_dense_share",)}


def setting_of(entry: dict) -> dict:
    """The fusion setting a grid entry or a configuration's fields hold (without measurements)."""
    return {"fusion": entry["fusion"], **{k: entry[k] for k in FUSION_KEYS[entry["fusion"]]}}


def fusion_of(config: RetrieverConfig) -> dict:
    """A configuration's fusion as a setting of the grid."""
    return setting_of(asdict(config))


def fusion_settings(ranked: Ranked, shipped: RetrieverConfig | None = None) -> list[dict]:
    """The grid: RRF constants × dense weights (× the sentence list's weights where the separate
    rankings were kept), and convex shares where the scores were kept."""
    lists = (0.0, *SENTENCE_LIST_WEIGHTS) if ranked.separate is not None else (0.0,)
    grid = [{"fusion": "rrf", "rrf_k": k, "dense_weight": w, "sentence_list_weight": s}
            for k in RRF_KS for w in DENSE_WEIGHTS for s in lists]
    if ranked.scores is not None:
        grid += [{"fusion": "convex", "convex_dense_share": a} for a in CONVEX_SHARES]
    if shipped is not None and fusion_of(shipped) not in grid:
        grid.append(fusion_of(shipped))
    return grid


def fuse(ranked: Ranked, setting: dict) -> list[list[int]]:
    """The appliance's fusion at ``setting``: RRF over each ranker's first ``candidates`` passages, or
    the convex combination of their scores (``Retriever.candidate_scores``)."""
    if setting["fusion"] == "convex":
        if ranked.scores is None:
            raise ValueError("convex fusion needs the rankers' scores (rank() keeps them)")
        return [[p for p, _ in convex_fusion(d, b, setting["convex_dense_share"])] for d, b in ranked.scores]
    c, k, w, s = ranked.candidates, setting["rrf_k"], setting["dense_weight"], setting.get("sentence_list_weight", 0)
    if s > 0:
        if ranked.separate is None:
            raise ValueError("a sentence list needs the separate rankings (rank() keeps them with sentence vectors)")
        return [[d for d, _ in reciprocal_rank_fusion([p[:c], q[:c], b[:c]], k, [w, s, 1.0])]
                for (p, q), b in zip(ranked.separate, ranked.bm25)]
    return [[d for d, _ in reciprocal_rank_fusion([a[:c], b[:c]], k, [w, 1.0])]
            for a, b in zip(ranked.dense, ranked.bm25)]


def fusion_grid(ranked: Ranked, gold) -> list[dict]:
    return [{**setting, **recalls(fuse(ranked, setting), gold)} for setting in fusion_settings(ranked)]


def report(pool: Pool, ranked: Ranked, config: RetrieverConfig, grid: bool = True) -> dict:
    out = {"questions": len(pool.questions), "paragraphs": len(pool.texts), **pool.info,
           "candidates_per_ranker": ranked.candidates}
    if ranked.shipped is not None:
        out["shipped"] = {"mode": config.mode, **fusion_of(config),
                          "sentence_vectors": config.sentence_vectors, "sentence_weight": config.sentence_weight,
                          "sentence_count_penalty": config.sentence_count_penalty,
                          **recalls(ranked.shipped, pool.gold)}
    out.update(dense=recalls(ranked.dense, pool.gold), bm25=recalls(ranked.bm25, pool.gold),
               fused=recalls(fuse(ranked, fusion_of(config)), pool.gold), fusion=fusion_of(config))
    if grid:
        out["fusion_grid"] = fusion_grid(ranked, pool.gold)
    return out


def evaluate(data: Path, model_dir: Path | None, onnx_name: str | None, limit: int, distractors: Sequence[Path] = (),
             config: Config | None = None, grid: bool = True) -> dict:
    config = config or Config()
    started = time.time()
    pool = squad_pool(data, distractors, limit)
    encoder, onnx_path = open_encoder(config, model_dir, onnx_name)
    result = {"encoder": str(onnx_path),
              **report(pool, rank(pool, encoder, config.retriever), config.retriever, grid)}
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    p = evaluation_parser("build_tools evaluate-retriever", __doc__, "models/retriever")
    p.add_argument("--distractors", nargs="*", type=Path, default=[],
                   help="SQuAD-format files whose paragraphs join the pool (for files with few paragraphs)")
    p.add_argument("--config", type=Path, default=None,
                   help="appliance TOML whose [retriever] section is the configuration reported (default: shipped)")
    p.add_argument("--no-grid", action="store_true", help="leave out the grid of fusion settings")
    args = p.parse_args(argv)
    config = load_config(args.config) if args.config else Config()
    run_evaluation(args, lambda: evaluate(args.data, args.model, args.onnx, args.limit, args.distractors, config,
                                          not args.no_grid))


if __name__ == "__main__":
    main()
