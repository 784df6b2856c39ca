"""Fine-tune MiniLM-L6 with a span head for reading retrieved passages, on CPU or GPU.

The job spans sessions: it resumes from its last checkpoint (model, optimiser, schedule, position
in the data) in a folder outside the repository, and when that is gone warm-starts from the
shipped reader's weights rather than from scratch. Dynamic padding with length-bucketed batches
and bf16 autocast where the CPU has bf16 units (detected) make CPU training practical.

Besides SQuAD v1.1 (+ SQuAD 2.0's first articles + SubjQA), it trains on the no-answer cases the
box meets: the question paired with the passage of its own article that BM25 ranks highest but
that does not hold the answer, labelled no-answer ([CLS]).
"""
from __future__ import annotations

import argparse
import random
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from appliance.reader import heading_prefix
from appliance.windows import load_tokenizer, make_windows
from build_tools.compress.common import run_steps
from build_tools.paths import DEFAULT_TRAIN_FILES, PROJECT_ROOT
from build_tools.shared_norm import build_groups, collate_groups, group_batches, shared_norm_loss
from build_tools.squad import ArticleSearch, SquadExample, label_window, load_squad
from build_tools.unanswerable import synthetic_unanswerables
from build_tools.training import (JobProgress, add_job_arguments, advance_schedule, jemalloc_loaded, log_json,
                                  make_optimiser, resume, save_checkpoint, save_model_dir, shipped_position, start_job)

SHIPPED_READER = PROJECT_ROOT / "models" / "reader"


def build_features(examples: list[SquadExample], tokenizer, max_length: int, stride: int,
                   keep_negative: float = 1.0, seed: int = 0):
    """Labelled windows; windows of answerable questions that miss the answer are kept with
    probability keep_negative (they are many on long contexts and teach little)."""
    rng = random.Random(seed)
    pairs = [(ex.question, ex.context) for ex in examples]
    features = []
    for ex, windows in zip(examples, make_windows(tokenizer, pairs, max_length, stride)):
        if not ex.is_impossible:
            s = ex.answer_starts[0]
            if s < 0 or ex.context[s : s + len(ex.answers[0])] != ex.answers[0]:
                continue  # offsets that do not point at the answer would teach noise
        for w in windows:
            start, end = label_window(w, ex)
            if start == 0 and not ex.is_impossible and rng.random() > keep_negative:
                continue
            features.append((w.input_ids, w.token_type_ids, start, end))
    return features


def bucketed_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, then shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j])
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(features, idx: list[int], device: str):
    width = max(len(features[i][0]) for i in idx)
    ids = np.zeros((len(idx), width), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, i in enumerate(idx):
        n = len(features[i][0])
        ids[row, :n], types[row, :n], mask[row, :n] = features[i][0], features[i][1], 1
    starts = torch.tensor([features[i][2] for i in idx])
    ends = torch.tensor([features[i][3] for i in idx])
    to = lambda a: torch.from_numpy(a).to(device)
    return to(ids), to(types), to(mask), starts.to(device), ends.to(device)


def retrieved_negatives(examples: list[SquadExample], share: float, seed: int) -> list[SquadExample]:
    """For a share of the answerable questions, the same question over the passage of its article
    that BM25 ranks first among those without any gold answer text: labelled no-answer."""
    rng = random.Random(seed)
    search = ArticleSearch(examples)
    negatives = []
    for ex in examples:
        if ex.is_impossible or rng.random() >= share:
            continue
        for text in search.without_answer(ex, 1, 5):
            negatives.append(SquadExample(ex.qid + "-retrieved-neg", ex.question, text, (), (), -1, ex.title))
    return negatives


def heading_of(title: str) -> str:
    """An article title as the box writes a heading ("Frédéric_Chopin" → "Frédéric Chopin")."""
    return " ".join(title.replace("_", " ").split())


def with_headings(examples: list[SquadExample], share: float, seed: int) -> list[SquadExample]:
    """A share of the examples read as the box reads a passage: "Title. context", the answer
    offsets moved past the prefix. The box puts each passage's heading path before it, so the
    reader should learn to use a heading without answering from it. Chosen per paragraph (a
    seeded hash of its text), so a paragraph reads the same for each of its questions."""
    out = []
    for ex in examples:
        heading = heading_of(ex.title)
        if not heading or zlib.crc32(f"{seed}:{ex.context}".encode()) / 2**32 >= share:
            out.append(ex)
            continue
        prefix = heading_prefix(heading)
        out.append(replace(ex, context=prefix + ex.context,
                           answer_starts=tuple(s + len(prefix) if s >= 0 else s for s in ex.answer_starts)))
    return out


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """A fresh bucketed order per epoch, the same on every resume (seeded)."""
    return [b for e in range(epochs) for b in bucketed_batches(lengths, batch_size, seed + 1000 * e)]


def warm_start(model, source: Path) -> str:
    """Initial weights when no checkpoint exists: a trained reader's own weights (a HF model dir,
    such as another job's final/) or else the ONNX reader of a model dir (the shipped one),
    dequantised."""
    from build_tools.onnx_import import load_onnx_weights

    if (source / "model.safetensors").exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(source / "model.safetensors"))
        return str(source / "model.safetensors")
    onnx_files = sorted(source.glob("*.onnx")) if source.is_dir() else []
    if not onnx_files:
        return "base model"
    load_onnx_weights(model, onnx_files[0])
    return str(onnx_files[0])


# What makes two runs of the job the same schedule: the same windows, in the same order, at the same
# rate (see training.shipped_position).
SCHEDULE = ("features_per_epoch", "retrieved_negatives", "synthetic_unanswerables", "epochs", "planned_steps",
            "max_length", "stride", "batch_size", "lr", "warmup", "keep_negative", "seed", "shared_norm", "heading_share")
RECORD_DEFAULTS = {"synthetic_unanswerables": 0, "warmup": 0.03, "seed": 13, "shared_norm": 0, "heading_share": 0.0}  # older records lack


def export_snapshot(checkpoint: Path, base: Path, out: Path) -> None:
    """Write the model of a running job's checkpoint as a model dir (for evaluation mid-training)."""
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(base)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    save_model_dir(model, out, base / "tokenizer.json", state.get("record", {}))
    log_json(snapshot=str(out), step=state["step"])


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What the reader is trained on, windowed how; train-student takes the same, so its student
    sees the teacher's own windows."""
    p.add_argument("--data", nargs="+", default=[str(f) for f in DEFAULT_TRAIN_FILES])
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N examples (smoke tests)")
    p.add_argument("--keep-negative", type=float, default=0.3,
                   help="share of answer-less windows of answerable questions to keep")
    p.add_argument("--retrieved-negatives", type=float, default=0.25,
                   help="share of answerable questions also paired with a retrieved passage lacking the answer")
    p.add_argument("--synthetic-unanswerable", type=float, default=0.0,
                   help="share of answerable questions also asked changed (a name, number or word the paragraph "
                        "lacks) over their own paragraph, labelled no-answer (build_tools/unanswerable.py)")
    p.add_argument("--heading-share", type=float, default=0.0,
                   help="share of paragraphs read with their article's title in front (\"Title. context\"), as the "
                        "box reads each passage with its heading path")
    p.add_argument("--shared-norm", type=int, default=0, metavar="PASSAGES",
                   help="train each question over its paragraph and PASSAGES-1 BM25-retrieved ones of its article "
                        "with one softmax across all their windows (build_tools/shared_norm.py; 0 = one window "
                        "at a time, with --keep-negative and --retrieved-negatives)")
    p.add_argument("--group-windows", type=int, default=8, help="at most this many windows per question (--shared-norm)")


@dataclass(frozen=True)
class TrainingData:
    """Labelled windows and the seeded order the job walks through them in, across its epochs."""

    examples: int
    retrieved_negatives: int
    synthetic_unanswerables: int
    features: list  # (input_ids, token_type_ids, start, end), or shared_norm.Group per question
    steps_per_epoch: int
    batches: list[list[int]]  # every epoch's batches, one after the other
    windows: int  # per epoch


def training_data(args, tokenizer) -> TrainingData:
    """The same windows in the same order for the same arguments, so a resumed job goes on where
    it stopped."""
    examples = [ex for f in args.data for ex in load_squad(f)]
    random.Random(args.seed).shuffle(examples)
    if args.limit:
        examples = examples[: args.limit]
    if getattr(args, "shared_norm", 0):
        if args.heading_share > 0:
            raise SystemExit("--heading-share is not supported with --shared-norm")
        return grouped_training_data(args, tokenizer, examples)
    negatives = retrieved_negatives(examples, args.retrieved_negatives, args.seed)
    made = synthetic_unanswerables(examples, args.synthetic_unanswerable, args.seed) \
        if args.synthetic_unanswerable > 0 else []
    read = with_headings(examples + negatives + made, args.heading_share, args.seed)
    features = build_features(read, tokenizer, args.max_length, args.stride,
                              args.keep_negative, args.seed)
    lengths = [len(f[0]) for f in features]
    return TrainingData(len(examples), len(negatives), len(made), features,
                        len(bucketed_batches(lengths, args.batch_size, args.seed)),
                        epoch_batches(lengths, args.batch_size, args.seed, args.epochs), len(features))


def grouped_training_data(args, tokenizer, examples: list[SquadExample]) -> TrainingData:
    """Shared normalisation: one group of windows per question, whole groups per batch."""
    groups = build_groups(examples, tokenizer, args.max_length, args.stride, args.shared_norm, args.group_windows)
    per_epoch = [group_batches(groups, args.batch_size, args.seed + 1000 * e) for e in range(args.epochs)]
    return TrainingData(len(groups), 0, 0, groups, len(per_epoch[0]), [b for e in per_epoch for b in e],
                        sum(len(g.windows) for g in groups))


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="build_tools train-reader", description=__doc__)
    p.add_argument("--warm-start", default=str(SHIPPED_READER),
                   help="model dir whose ONNX weights start a job that has no checkpoint ('none' = base model)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03)
    add_data_arguments(p)
    add_job_arguments(p, "reader")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoModelForQuestionAnswering

    job = start_job(args, "reader", export_snapshot, args.data)
    if job is None:
        return
    torch.manual_seed(args.seed)
    t0 = time.time()
    data = training_data(args, load_tokenizer(job.base / "tokenizer.json"))
    features, batches = data.features, data.batches
    total_steps = min(args.max_steps or len(batches), len(batches))
    log_json(examples=data.examples, retrieved_negatives=data.retrieved_negatives,
             synthetic_unanswerables=data.synthetic_unanswerables, features=len(features),
             windows=data.windows, steps_per_epoch=data.steps_per_epoch, total_steps=total_steps, bf16=job.bf16, device=job.device,
             jemalloc=jemalloc_loaded(), threads=args.threads, prep_s=round(time.time() - t0, 1), out=str(job.out))

    model = AutoModelForQuestionAnswering.from_pretrained(job.base, attn_implementation="sdpa",
                                                          attention_probs_dropout_prob=args.attention_dropout)
    opt = make_optimiser(model, args.lr, args.warmup, total_steps, args.train_word_embeddings)
    record = {"base": str(job.base), "data": args.data, "features_per_epoch": len(features),
              "retrieved_negatives": data.retrieved_negatives,
              "synthetic_unanswerables": data.synthetic_unanswerables, "epochs": args.epochs, "planned_steps": total_steps,
              "max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size, "lr": args.lr,
              "warmup": args.warmup, "keep_negative": args.keep_negative, "seed": args.seed,
              "attention_dropout": args.attention_dropout, "shared_norm": args.shared_norm,
              "heading_share": args.heading_share,
              "windows_per_epoch": data.windows, "windows_trained": 0, "train_minutes": 0.0, "sessions": []}
    step, record = resume(job.checkpoint, model, opt.optimizer, opt.scheduler, record)
    if not job.checkpoint.exists():
        record["warm_start"] = warm_start(model, Path(args.warm_start)) if args.warm_start != "none" else "base model"
        log_json(warm_start=record["warm_start"])
        position = shipped_position(Path(args.warm_start), record, SCHEDULE, RECORD_DEFAULTS) \
            if args.warm_start != "none" else None
        if position:
            step, record = position
            advance_schedule(opt.scheduler, step)
            log_json(continues_at_step=step, of=total_steps, from_manifest=record["continued_from"])
    model.to(job.device).train()
    loss_fn = torch.nn.CrossEntropyLoss()
    progress = JobProgress(record, step, data.steps_per_epoch, bf16=job.bf16, device=job.device,
                           jemalloc=jemalloc_loaded(), attention_dropout=args.attention_dropout)

    def grouped_step(i: int) -> tuple[float, int]:
        ids, types, mask, allowed, gold_start, gold_end, group_of = collate_groups(features, batches[i], job.device)
        with torch.autocast(job.device, dtype=torch.bfloat16, enabled=job.bf16):
            outputs = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        n = len(batches[i])
        loss = (shared_norm_loss(outputs.start_logits.float(), allowed, gold_start, group_of, n)
                + shared_norm_loss(outputs.end_logits.float(), allowed, gold_end, group_of, n)) / 2
        loss.backward()
        opt.step()
        progress.count(len(ids))
        return loss.item(), len(ids)

    def train_step(i: int) -> tuple[float, int]:
        if args.shared_norm:
            return grouped_step(i)
        ids, types, mask, starts, ends = collate(features, batches[i], job.device)
        with torch.autocast(job.device, dtype=torch.bfloat16, enabled=job.bf16):
            outputs = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        loss = (loss_fn(outputs.start_logits.float(), starts) + loss_fn(outputs.end_logits.float(), ends)) / 2
        loss.backward()
        opt.step()
        progress.count(len(batches[i]))
        return loss.item(), len(batches[i])

    def checkpoint(i: int) -> None:
        save_checkpoint(job.checkpoint, model, opt.optimizer, opt.scheduler, i, {"record": progress.at(i)})

    step = run_steps(train_step, step, total_steps, args.time_budget_min, args.checkpoint_every_min, checkpoint,
                     lambda line: print(line, flush=True), data.steps_per_epoch, job.stop)
    if step >= total_steps:
        save_model_dir(model, job.out / "final", job.base / "tokenizer.json", record)
        log_json(saved=str(job.out / "final"), steps=step)


if __name__ == "__main__":
    main()
