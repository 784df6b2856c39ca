"""Fine-tune all-MiniLM-L6-v2 as a question → passage retriever, on CPU or GPU.

Contrastive training (MultipleNegativesRankingLoss, in plain torch): each question is scored
against every passage of its batch, the positives of the other questions (in-batch negatives)
and one BM25 hard negative per question, and trained to put its own passage first (cross-entropy
over scale × cosine). Embeddings are made exactly as the runtime encoder makes them: the
tokenizer truncated to --max-length, token types 0, mean pooling over real tokens, L2
normalisation.

Pairs: SQuAD v1.1 train question → its paragraph, with the paragraph of the same article that BM25
ranks first among those without any gold answer text as the hard negative; MedQuAD question →
answer, with the answer BM25 ranks first among the other questions' answers. Batches never hold
the same passage twice, nor one question's hard negative as another's positive (that would teach
a false negative), and are bucketed by length (dynamic padding). Half of the SQuAD paragraphs carry
their article's title in front, as the box indexes a passage under its document and section
path: trained on plain paragraphs only, the model unlearnt using that path (measured at step 1,127
of the first job: KB dense top-5 0.931 with it, 0.916 without, where stock reads 0.977 and 0.924).

The job spans sessions like train-reader: its folder lives outside the repository; it resumes
model, optimiser, schedule and position in the seeded data order from the checkpoint (written
every --checkpoint-every-min minutes and on SIGTERM); without a checkpoint it warm-starts from the
shipped retriever when that is one we trained (its manifest keeps the run's record; a run of the
same schedule goes on from the step it was shipped at), else from the base model. The prepared
pairs are cached in the job folder, so a resume does not redo BM25.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from appliance.bm25 import BM25
from appliance.windows import load_tokenizer
from build_tools.compress.common import batch_inputs, run_steps
from build_tools.errors import DataError, read_json
from build_tools.paths import PROJECT_ROOT, SHARED_DATA, SQUAD_DIR
from build_tools.squad import ArticleSearch, load_squad
from build_tools.training import (JobProgress, add_job_arguments, advance_schedule, jemalloc_loaded, log_json,
                                  make_optimiser, resume, save_checkpoint, save_model_dir, shipped_position,
                                  shipped_training, start_job)

SHIPPED_RETRIEVER = PROJECT_ROOT / "models" / "retriever"

DEFAULT_SQUAD = [SQUAD_DIR / "train-v1.1.json.gz"]
DEFAULT_MEDQUAD = [SHARED_DATA / "medical" / "medquad_pairs_with_answers.json"]
PAIRS_FILE = "pairs.json"


@dataclass
class Pairs:
    """Questions, the passages they are paired with (each text once) and one hard negative each."""

    questions: list[str]
    passages: list[str]
    positive: list[int]  # per question: position in passages
    negative: list[int]  # per question: position in passages, -1 when none was found
    lengths: list[int]  # per question: tokens of its longest passage (for length buckets)
    sources: dict[str, int]


def _clean(text: str) -> str:
    return " ".join(text.split())


def with_title(text: str, title: str, share: float) -> str:
    """The paragraph as the box indexes a passage ("document > section. text"), with its article's
    title in front, for a share of the paragraphs (chosen by the text's hash: the same every run)."""
    chosen = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF < share
    return f"{title.replace('_', ' ')}. {text}" if chosen and title else text


def squad_pairs(paths: list[Path], negatives: bool, title_share: float = 0.0) -> list[tuple[str, str, str | None]]:
    """(question, paragraph, hard negative) for every answerable question of the files; a share of
    the paragraphs carry their article's title in front (``with_title``)."""
    examples = [ex for path in paths for ex in load_squad(path) if not ex.is_impossible]
    search = ArticleSearch(examples)
    out = []
    for ex in examples:
        found = search.without_answer(ex, 1, 10) if negatives else []
        negative = with_title(found[0], ex.title, title_share) if found else None
        out.append((ex.question, with_title(ex.context, ex.title, title_share), negative))
    return out


def medquad_rows(path: Path) -> list[dict]:
    what = "MedQuAD-style JSON list of {question, answer}"
    rows = read_json(path, what)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: not a readable {what} (not a list of objects)")
    return rows


def medquad_pairs(paths: list[Path], negatives: bool) -> list[tuple[str, str, str | None]]:
    """(question, answer, hard negative) for MedQuAD rows; the negative is never an answer given to
    the same question text (MedQuAD repeats questions across sources)."""
    rows = [r for path in paths for r in medquad_rows(path)]
    pairs = list(dict.fromkeys((_clean(r["question"]), _clean(r["answer"])) for r in rows
                               if _clean(r.get("question", "")) and _clean(r.get("answer", ""))))
    answers = list(dict.fromkeys(a for _, a in pairs))
    answered: dict[str, set[str]] = {}
    for q, a in pairs:
        answered.setdefault(q, set()).add(a)
    index = BM25.build(answers) if negatives else None
    out = []
    for q, a in pairs:
        negative = None
        if index is not None:
            for i in index.search(q, 10):
                if answers[i] not in answered[q]:
                    negative = answers[i]
                    break
        out.append((q, a, negative))
    return out


def prepare_pairs(squad: list[Path], medquad: list[Path], negatives: bool, tokenizer, max_length: int,
                  title_share: float = 0.0) -> Pairs:
    from_squad, from_medquad = squad_pairs(squad, negatives, title_share), medquad_pairs(medquad, negatives)
    triples = from_squad + from_medquad
    sources = {"squad": len(from_squad), "medquad": len(from_medquad)}
    passages: dict[str, int] = {}
    for _, pos, neg in triples:
        for text in (pos, neg):
            if text is not None and text not in passages:
                passages[text] = len(passages)
    texts = list(passages)
    tokenizer.enable_truncation(max_length)
    tokens = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    positive = [passages[p] for _, p, _ in triples]
    negative = [passages[n] if n is not None else -1 for _, _, n in triples]
    lengths = [max(tokens[p], tokens[n] if n >= 0 else 0) for p, n in zip(positive, negative)]
    return Pairs([q for q, _, _ in triples], texts, positive, negative, lengths, sources)


def cached_pairs(out: Path, settings: dict, make) -> tuple[Pairs, bool]:
    """The pairs of an earlier start of this job when they were made with the same settings."""
    path = out / PAIRS_FILE
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                return Pairs(**data["pairs"]), True
        except (OSError, ValueError, TypeError):
            pass
    pairs = make()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "settings": settings, "pairs": pairs.__dict__}), encoding="utf-8")
    tmp.replace(path)
    return pairs, False


def conflict_free_batches(pairs: Pairs, order: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches from ``order``; a pair whose passage (positive or hard negative) or
    question is already in the batch waits for the next one."""
    pending = deque(order)
    batches = []
    while pending:
        batch, used, waiting = [], set(), []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            keys = pair_keys(pairs, i)
            if keys & used:
                waiting.append(i)
                continue
            batch.append(i)
            used |= keys
        pending.extendleft(reversed(waiting))
        batches.append(batch)
    return batches


def pair_keys(pairs: Pairs, i: int) -> set:
    """What must not repeat inside a batch: its passages and its question text."""
    keys = {("p", pairs.positive[i]), ("q", pairs.questions[i])}
    if pairs.negative[i] >= 0:
        keys.add(("p", pairs.negative[i]))
    return keys


def epoch_batches(pairs: Pairs, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, cut conflict-free batches, shuffle them."""
    rng = random.Random(seed)
    order = list(range(len(pairs.questions)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: pairs.lengths[j])
        batches += conflict_free_batches(pairs, part, batch_size)
    rng.shuffle(batches)
    return batches


def embed(model, tokenizer, texts: list[str], max_length: int, device: str) -> torch.Tensor:
    """Unit vectors as appliance.encoder makes them: mean over real tokens, then L2 normalisation."""
    ids, mask = batch_inputs(tokenizer, texts, max_length)
    ids, mask = ids.to(device), mask.to(device)
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    summed = (hidden.float() * mask[..., None]).sum(1)
    pooled = summed / mask.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(pooled, dim=-1, eps=1e-12)


def ranking_loss(questions: torch.Tensor, passages: torch.Tensor, scale: float) -> torch.Tensor:
    """MultipleNegativesRankingLoss: question i's positive is passage i; every other passage of
    the batch (the others' positives, then the hard negatives) is a negative."""
    scores = scale * questions @ passages.T
    return F.cross_entropy(scores, torch.arange(len(questions), device=scores.device))


def export_snapshot(checkpoint: Path, base: Path, out: Path) -> None:
    """Write the model of a running job's checkpoint as a model dir (export-retriever --base DIR)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    save_model_dir(model, out, base / "tokenizer.json", state.get("record", {}))
    log_json(snapshot=str(out), step=state["step"])


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="build_tools train-retriever", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", nargs="*", default=[str(f) for f in DEFAULT_SQUAD], help="SQuAD-format files")
    p.add_argument("--medquad", nargs="*", default=[str(f) for f in DEFAULT_MEDQUAD],
                   help="MedQuAD JSON lists of {question, answer}")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text (the runtime's retriever.max_length)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per batch (each brings 2 passages)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--scale", type=float, default=20.0, help="cosine scale of the ranking loss")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="train on the first N pairs of the shuffled data only")
    p.add_argument("--no-hard-negatives", action="store_true", help="in-batch negatives only")
    p.add_argument("--title-share", type=float, default=0.5,
                   help="share of SQuAD paragraphs trained with their article's title in front, as the box indexes "
                        "passages under their document and section (without it the model unlearns using them)")
    p.add_argument("--warm-start", default=str(SHIPPED_RETRIEVER),
                   help="model dir whose ONNX weights start a job that has no checkpoint, when its manifest shows we "
                        "trained it ('none' = the base model)")
    add_job_arguments(p, "retriever")
    return p.parse_args(argv)


# What makes two runs of the job the same schedule (see training.shipped_position).
SCHEDULE = ("pairs_per_epoch", "hard_negatives", "title_share", "epochs", "planned_steps", "max_length",
            "batch_size", "lr", "warmup", "scale", "seed")
RECORD_DEFAULTS = {"warmup": 0.1, "seed": 13, "title_share": 0.0}  # fields older records lack


def warm_start(model, source: Path, record: dict, scheduler) -> tuple[int, dict]:
    """(step, record) for a job without checkpoint: the shipped retriever's weights when we trained
    it, at the step its run reached when the schedule is this one; the base model otherwise."""
    from build_tools.onnx_import import load_onnx_weights

    onnx_files = sorted(source.glob("*.onnx")) if source.is_dir() else []
    trained = shipped_training(source)
    # a model blended with the stock weights (export-retriever --blend-stock) is no point of any schedule
    if not trained or not onnx_files or trained.get("blend_stock"):
        return 0, {**record, "warm_start": record["base"]}
    load_onnx_weights(model, onnx_files[0], unused=("pooler.",))
    record = {**record, "warm_start": str(onnx_files[0])}
    position = shipped_position(source, record, SCHEDULE, RECORD_DEFAULTS)
    if not position:
        return 0, record
    advance_schedule(scheduler, position[0])
    log_json(continues_at_step=position[0], of=record["planned_steps"], from_manifest=position[1]["continued_from"])
    return position


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoModel

    job = start_job(args, "retriever", export_snapshot, args.squad + args.medquad)
    if job is None:
        return
    base, out, ckpt, device, use_bf16, stop = job.base, job.out, job.checkpoint, job.device, job.bf16, job.stop
    t0 = time.time()

    tokenizer = load_tokenizer(base / "tokenizer.json")
    files = [Path(f) for f in args.squad + args.medquad]
    settings = {"squad": args.squad, "medquad": args.medquad, "hard_negatives": not args.no_hard_negatives,
                "title_share": args.title_share, "max_length": args.max_length,
                "tokenizer": hashlib.sha256((base / "tokenizer.json").read_bytes()).hexdigest(),
                "files": {str(f): f.stat().st_size for f in files}}
    pairs, cached = cached_pairs(out, settings, lambda: prepare_pairs(
        [Path(f) for f in args.squad], [Path(f) for f in args.medquad], not args.no_hard_negatives, tokenizer,
        args.max_length, args.title_share))
    if args.limit:  # a seeded sample, the same on every start
        keep = sorted(random.Random(args.seed).sample(range(len(pairs.questions)), min(args.limit,
                                                                                        len(pairs.questions))))
        pairs = Pairs([pairs.questions[i] for i in keep], pairs.passages, [pairs.positive[i] for i in keep],
                      [pairs.negative[i] for i in keep], [pairs.lengths[i] for i in keep],
                      {**pairs.sources, "limit": len(keep)})
    batches = [b for e in range(args.epochs) for b in epoch_batches(pairs, args.batch_size, args.seed + 1000 * e)]
    steps_per_epoch = len(batches) // args.epochs
    total_steps = min(args.max_steps or len(batches), len(batches))
    log_json(pairs=len(pairs.questions), passages=len(pairs.passages), sources=pairs.sources,
             hard_negatives=sum(n >= 0 for n in pairs.negative), pairs_cached=cached,
             steps_per_epoch=steps_per_epoch, total_steps=total_steps, bf16=use_bf16, device=device,
             jemalloc=jemalloc_loaded(), threads=args.threads, prep_s=round(time.time() - t0, 1), out=str(out))

    model = AutoModel.from_pretrained(base, attn_implementation="sdpa",
                                      attention_probs_dropout_prob=args.attention_dropout)
    opt = make_optimiser(model, args.lr, args.warmup, total_steps, args.train_word_embeddings)
    record = {"base": str(base), "squad": args.squad, "medquad": args.medquad, "pairs_per_epoch": len(pairs.questions),
              "sources": pairs.sources, "hard_negatives": not args.no_hard_negatives,
              "title_share": args.title_share, "epochs": args.epochs,
              "planned_steps": total_steps, "max_length": args.max_length, "batch_size": args.batch_size,
              "lr": args.lr, "warmup": args.warmup, "scale": args.scale, "seed": args.seed,
              "attention_dropout": args.attention_dropout,
              "pairs_trained": 0, "train_minutes": 0.0, "sessions": []}
    step, record = resume(ckpt, model, opt.optimizer, opt.scheduler, record, unit="pairs")
    if not ckpt.exists():
        step, record = warm_start(model, Path(args.warm_start), record, opt.scheduler) \
            if args.warm_start != "none" else (0, {**record, "warm_start": str(base)})
        log_json(warm_start=record["warm_start"])
    model.to(device).train()
    progress = JobProgress(record, step, steps_per_epoch, unit="pairs", bf16=use_bf16, device=device,
                           jemalloc=jemalloc_loaded())

    def train_step(i: int) -> tuple[float, int]:
        torch.manual_seed(args.seed + i)  # dropout masks depend on the step alone: a resumed job repeats them
        batch = batches[i]
        questions = [pairs.questions[j] for j in batch]
        passages = [pairs.passages[pairs.positive[j]] for j in batch]
        passages += [pairs.passages[pairs.negative[j]] for j in batch if pairs.negative[j] >= 0]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
            q = embed(model, tokenizer, questions, args.max_length, device)
            p = embed(model, tokenizer, passages, args.max_length, device)
        loss = ranking_loss(q, p, args.scale)
        loss.backward()
        opt.step()
        progress.count(len(batch))
        return loss.item(), len(batch)

    def checkpoint(i: int) -> None:
        save_checkpoint(ckpt, model, opt.optimizer, opt.scheduler, i, {"record": progress.at(i)})

    step = run_steps(train_step, step, total_steps, args.time_budget_min, args.checkpoint_every_min, checkpoint,
                     lambda line: print(line, flush=True), steps_per_epoch, stop, unit="pairs")
    if step >= total_steps:
        save_model_dir(model, out / "final", base / "tokenizer.json", record)
        log_json(saved=str(out / "final"), steps=step)


if __name__ == "__main__":
    main()
