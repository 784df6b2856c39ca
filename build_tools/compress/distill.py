"""distill-reader: train a shallower reader to imitate the fp32 teacher's start/end distributions.

Loss = alpha * T^2 * KL(teacher || student) on start and end softmaxes at temperature T
+ (1 - alpha) * cross-entropy on the gold span. The student starts from a subset of the teacher's
layers (plus its embeddings and span head), so it begins close to the teacher. The loop is
train-reader's: same windows, dynamic padding, length buckets, optional bf16, checkpoints,
a wall-clock budget.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from appliance.windows import load_tokenizer
from build_tools.compress.common import (count_parameters, load_model, optimizer_step, resumable_optimizer,
                                         run_steps, save_model)
from build_tools.paths import DEFAULT_TRAIN_FILES
from build_tools.squad import load_squad
from build_tools.train_reader import bucketed_batches, build_features, collate
from build_tools.training import save_checkpoint


def make_student(teacher, layers: list[int]):
    """A copy of the teacher that keeps only the given encoder layers (in order)."""
    student = copy.deepcopy(teacher)
    bert = getattr(student, "bert", student)
    bert.encoder.layer = torch.nn.ModuleList([bert.encoder.layer[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    for i, layer in enumerate(bert.encoder.layer):
        layer.attention.self.layer_idx = i
    return student


def masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padding positions get -inf-like logits so neither softmax puts mass there."""
    return logits.float().masked_fill(mask == 0, -1e4)


def distill_loss(student_out, teacher_out, starts, ends, mask, temperature: float, alpha: float) -> torch.Tensor:
    """Soft KL at temperature T (scaled by T^2, as Hinton et al.) mixed with the hard span loss."""
    loss = torch.zeros((), dtype=torch.float32, device=starts.device)
    for s_logits, t_logits, gold in ((student_out.start_logits, teacher_out.start_logits, starts),
                                     (student_out.end_logits, teacher_out.end_logits, ends)):
        s, t = masked(s_logits, mask), masked(t_logits, mask)
        if alpha > 0:
            kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                          reduction="batchmean", log_target=True)
            loss = loss + alpha * temperature ** 2 * kl / 2
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(s, gold) / 2
    return loss


def hidden_loss(student_out, teacher_out, layers: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between each student layer's output and the output of the teacher
    layer it was copied from, over real tokens (TinyBERT's layer-wise loss): the span logits alone
    teach a student whose layers skip some of the teacher's slowly, since every layer after a skip
    reads inputs unlike those it was trained on."""
    real = mask.unsqueeze(-1).float()
    per_layer = [((s_h.float() - teacher_out.hidden_states[t + 1].float()) ** 2 * real).sum()
                 / (real.sum() * s_h.shape[-1])
                 for s_h, t in zip(student_out.hidden_states[1:], layers)]
    return torch.stack(per_layer).mean()


def distill_loop(student, teacher, features, batches, args, out: Path, log=print) -> int:
    """Optimise the student on the batches; checkpoints to out/checkpoint.pt and resumes from it."""
    total_steps = min(args.max_steps or len(batches), len(batches))
    ckpt = out / "checkpoint.pt"
    trainable, optimizer, scheduler, step = resumable_optimizer(student, args.lr, args.warmup, total_steps, ckpt, log)
    student.train()
    teacher.eval()

    def train_step(step: int) -> tuple[float, int]:
        ids, types, mask, starts, ends = collate(features, batches[step], "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16 == "on"):
            with torch.no_grad():
                t_out = teacher(input_ids=ids, token_type_ids=types, attention_mask=mask)
            s_out = student(input_ids=ids, token_type_ids=types, attention_mask=mask)
        loss = distill_loss(s_out, t_out, starts, ends, mask, args.temperature, args.alpha)
        loss.backward()
        optimizer_step(trainable, optimizer, scheduler)
        return loss.item(), len(batches[step])

    step = run_steps(train_step, step, total_steps, args.max_minutes, args.checkpoint_every_min,
                     lambda at: save_checkpoint(ckpt, student, optimizer, scheduler, at), log)
    student.eval()
    return step


def add_training_args(p: argparse.ArgumentParser, max_minutes: float) -> None:
    """Options shared by distill-reader and the recovery step of prune-reader."""
    p.add_argument("--data", nargs="+", default=[str(f) for f in DEFAULT_TRAIN_FILES])
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft (KL) loss; 1-alpha for the hard loss")
    p.add_argument("--max-steps", type=int, default=0, help="0 = one pass over the features")
    p.add_argument("--max-minutes", type=float, default=max_minutes, help="wall-clock budget (0 = none)")
    p.add_argument("--checkpoint-every-min", type=float, default=10)
    p.add_argument("--bf16", choices=["on", "off"], default="off",
                   help="bf16 autocast: faster at 2+ threads, measured slower at 1 thread here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="use only the first N examples (smoke tests)")
    p.add_argument("--keep-negative", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=13)


def training_batches(args, tokenizer_path: Path):
    """Shuffled SQuAD-format examples -> labelled windows -> length-bucketed batches."""
    examples = [ex for f in args.data for ex in load_squad(f)]
    random.Random(args.seed).shuffle(examples)
    if args.limit:
        examples = examples[: args.limit]
    tokenizer = load_tokenizer(tokenizer_path)
    features = build_features(examples, tokenizer, args.max_length, args.stride, args.keep_negative, args.seed)
    batches = bucketed_batches([len(f[0]) for f in features], args.batch_size, args.seed)
    return examples, features, batches


def training_record(args, step: int, batches, features, minutes: float) -> dict:
    return {"data": args.data, "steps": step, "planned_steps": min(args.max_steps or len(batches), len(batches)),
            "features_seen": sum(len(b) for b in batches[:step]), "features_total": len(features),
            "max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size, "lr": args.lr,
            "temperature": args.temperature, "alpha": args.alpha, "bf16": args.bf16 == "on",
            "threads": args.threads, "train_minutes": round(minutes, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools distill-reader", description=__doc__)
    p.add_argument("--teacher", default="build/reader-train/final", help="HF checkpoint of the fp32 reader")
    p.add_argument("--layers", default="0,2,4,5", help="teacher layers the student starts from")
    p.add_argument("--out", default="build/compress/reader-distilled")
    add_training_args(p, max_minutes=90)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    teacher_dir, out = Path(args.teacher), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _, features, batches = training_batches(args, teacher_dir / "tokenizer.json")
    print(json.dumps({"features": len(features), "batches": len(batches), "prep_s": round(time.time() - t0, 1)}),
          flush=True)
    teacher = load_model(teacher_dir, "reader", attn="sdpa")
    student = make_student(teacher, [int(i) for i in args.layers.split(",")])
    print(json.dumps({"teacher_params": count_parameters(teacher), "student_params": count_parameters(student)}),
          flush=True)
    started = time.time()
    step = distill_loop(student, teacher, features, batches, args, out, log=lambda s: print(s, flush=True))
    record = {"teacher": str(teacher_dir), "layers": args.layers,
              **training_record(args, step, batches, features, (time.time() - started) / 60)}
    save_model(student, out / "final", teacher_dir / "tokenizer.json", extra={"distillation": record})
    (out / "final" / "training.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({"saved": str(out / "final"), "steps": step}), flush=True)


if __name__ == "__main__":
    main()
