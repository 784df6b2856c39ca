"""Distil the trained reader into a shallower student, as a job that spans sessions like train-reader.

The teacher is the reader job's finished model (train-reader's final/) unless --teacher names
another (a HF checkpoint, or a model dir holding an ONNX reader, whose weights are dequantised).
The student starts from a subset of the teacher's layers (plus its embeddings and span head) and
learns the teacher's start/end distributions at temperature T (KL, Hinton et al.) mixed with the
gold spans, on the teacher's own training windows: SQuAD, SQuAD 2.0's first articles, SubjQA and
the retrieved passages that lack the answer, so it also inherits the teacher's no-answer behaviour.
Checkpoints, resume, bf16 detection and the progress line are train-reader's.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from appliance.windows import load_tokenizer
from build_tools.compress.common import count_parameters, run_steps
from build_tools.compress.distill import distill_loss, hidden_loss, make_student
from build_tools.train_reader import add_data_arguments, collate, training_data, warm_start
from build_tools.training import (JobProgress, add_job_arguments, default_train_dir, jemalloc_loaded, log_json,
                                  make_optimiser, resume, save_checkpoint, save_model_dir, start_job)


def default_teacher() -> Path:
    """The reader job's finished model: the student is distilled from the new reader."""
    return default_train_dir("reader") / "final"


def load_teacher(path: Path, base: Path, attention_dropout: float):
    """A HF checkpoint as is; a model dir with an ONNX reader (the shipped one) through the base
    model's architecture with the ONNX weights dequantised into it."""
    from transformers import AutoModelForQuestionAnswering

    kwargs = {"attn_implementation": "sdpa", "attention_probs_dropout_prob": attention_dropout}
    if (path / "config.json").exists():
        return AutoModelForQuestionAnswering.from_pretrained(path, **kwargs)
    if path.is_dir() and any(path.glob("*.onnx")):
        model = AutoModelForQuestionAnswering.from_pretrained(base, **kwargs)
        warm_start(model, path)
        return model
    raise SystemExit(f"no teacher at {path}: the student is distilled from the trained reader; let train-reader "
                     "finish (scripts/train.sh) or pass --teacher DIR (a HF checkpoint or a model dir with an "
                     "ONNX reader, such as models/reader)")


def layer_list(layers: str) -> list[int]:
    """--layers "0,2,5" as the teacher layers the student keeps."""
    return [int(i) for i in layers.split(",")]


def student_of(teacher, layers: str):
    return make_student(teacher, layer_list(layers))


def export_snapshot(checkpoint: Path, base: Path, out: Path) -> None:
    """The student of a running job's checkpoint as a model dir (for evaluation mid-training)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    record = state.get("record", {})
    student = student_of(load_teacher(Path(record["teacher"]), base, 0.0), record["layers"])
    student.load_state_dict(state["model"])
    save_model_dir(student, out, Path(record["tokenizer"]), record)
    log_json(snapshot=str(out), step=state["step"])


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="build_tools train-student", description=__doc__)
    p.add_argument("--teacher", default=None,
                   help="the reader to distil (default: the reader job's final/, "
                        f"{default_teacher()})")
    p.add_argument("--layers", default="0,2,5",
                   help="teacher layers the student starts from, in order (shape chosen by benchmarks/student_shapes)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft (KL) loss; 1-alpha for the gold spans")
    p.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of the layer-wise loss: each student layer's output against the output of "
                        "the teacher layer it was copied from (0: span distributions only)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.03)
    add_data_arguments(p)
    add_job_arguments(p, "student")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    job = start_job(args, "student", export_snapshot, args.data)
    if job is None:
        return
    torch.manual_seed(args.seed)
    teacher_dir = Path(args.teacher) if args.teacher else default_teacher()
    teacher = load_teacher(teacher_dir, job.base, args.attention_dropout)
    tokenizer_json = teacher_dir / "tokenizer.json" if (teacher_dir / "tokenizer.json").exists() \
        else job.base / "tokenizer.json"
    t0 = time.time()
    data = training_data(args, load_tokenizer(tokenizer_json))
    features, batches = data.features, data.batches
    total_steps = min(args.max_steps or len(batches), len(batches))
    student = student_of(teacher, args.layers)
    log_json(examples=data.examples, retrieved_negatives=data.retrieved_negatives, features=len(features),
             steps_per_epoch=data.steps_per_epoch, total_steps=total_steps, teacher=str(teacher_dir),
             teacher_params=count_parameters(teacher), student_params=count_parameters(student),
             bf16=job.bf16, device=job.device, jemalloc=jemalloc_loaded(), threads=args.threads,
             prep_s=round(time.time() - t0, 1), out=str(job.out))

    opt = make_optimiser(student, args.lr, args.warmup, total_steps, args.train_word_embeddings)
    record = {"teacher": str(teacher_dir.resolve()), "layers": args.layers, "tokenizer": str(tokenizer_json.resolve()),
              "data": args.data, "features_per_epoch": len(features),
              "retrieved_negatives": data.retrieved_negatives, "epochs": args.epochs, "planned_steps": total_steps,
              "max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size, "lr": args.lr,
              "temperature": args.temperature, "alpha": args.alpha, "keep_negative": args.keep_negative,
              "heading_share": args.heading_share,
              "attention_dropout": args.attention_dropout, "windows_trained": 0, "train_minutes": 0.0, "sessions": []}
    step, record = resume(job.checkpoint, student, opt.optimizer, opt.scheduler, record,
                          must_match=("teacher", "layers"))
    teacher.to(job.device).eval()
    student.to(job.device).train()
    progress = JobProgress(record, step, data.steps_per_epoch, bf16=job.bf16, device=job.device,
                           jemalloc=jemalloc_loaded(), attention_dropout=args.attention_dropout,
                           hidden_weight=args.hidden_weight)  # per session: a job may take it up mid-way

    layers = layer_list(args.layers)
    hidden = args.hidden_weight > 0

    def train_step(i: int) -> tuple[float, int]:
        torch.manual_seed(args.seed + i)  # dropout masks depend on the step alone: a resumed job repeats them
        ids, types, mask, starts, ends = collate(features, batches[i], job.device)
        with torch.autocast(job.device, dtype=torch.bfloat16, enabled=job.bf16):
            with torch.no_grad():
                taught = teacher(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=hidden)
            learnt = student(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=hidden)
        loss = distill_loss(learnt, taught, starts, ends, mask, args.temperature, args.alpha)
        if hidden:
            loss = loss + args.hidden_weight * hidden_loss(learnt, taught, layers, mask)
        loss.backward()
        opt.step()
        progress.count(len(batches[i]))
        return loss.item(), len(batches[i])

    def checkpoint(i: int) -> None:
        save_checkpoint(job.checkpoint, student, opt.optimizer, opt.scheduler, i, {"record": progress.at(i)})

    step = run_steps(train_step, step, total_steps, args.time_budget_min, args.checkpoint_every_min, checkpoint,
                     lambda line: print(line, flush=True), data.steps_per_epoch, job.stop)
    if step >= total_steps:
        save_model_dir(student, job.out / "final", tokenizer_json, record)
        log_json(saved=str(job.out / "final"), steps=step)


if __name__ == "__main__":
    main()
