"""Fine-tune MiniLM-L6 with a span head on SQuAD(+unanswerable) data, on CPU or GPU.

Dynamic padding with length-bucketed batches, optional bf16 autocast, periodic checkpoints
with resume, and a wall-clock budget: the loop that makes CPU training practical.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from appliance.windows import Window, load_tokenizer, make_windows
from build_tools.paths import DEFAULT_TRAIN_FILES, minilm_dir
from build_tools.squad import SquadExample, load_squad


def label_window(window: Window, ex: SquadExample) -> tuple[int, int]:
    """Token start/end of the first gold answer inside this window; (0, 0) = no answer here."""
    if ex.is_impossible:
        return 0, 0
    start_char = ex.answer_starts[0]
    end_char = start_char + len(ex.answers[0])
    start_tok = end_tok = None
    for i, off in enumerate(window.context_offsets):
        if off is None:
            continue
        if start_tok is None and off[0] <= start_char < off[1]:
            start_tok = i
        if off[0] < end_char <= off[1]:
            end_tok = i
    if start_tok is None or end_tok is None or end_tok < start_tok:
        return 0, 0
    return start_tok, end_tok


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


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict(),
                "sched": scheduler.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools train-reader", description=__doc__)
    p.add_argument("--data", nargs="+", default=[str(f) for f in DEFAULT_TRAIN_FILES])
    p.add_argument("--base", default=None, help="HF model dir (default: the MiniLM-L6 package)")
    p.add_argument("--out", default="build/reader-train")
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-4)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=0, help="0 = one epoch")
    p.add_argument("--time-budget-min", type=float, default=0, help="stop after this long (0 = none)")
    p.add_argument("--checkpoint-every-min", type=float, default=10)
    p.add_argument("--bf16", choices=["on", "off"], default="off")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N examples (smoke tests)")
    p.add_argument("--keep-negative", type=float, default=0.3,
                   help="share of answer-less windows of answerable questions to keep")
    p.add_argument("--train-word-embeddings", action="store_true",
                   help="also update the 30k-row embedding matrix (slower on CPU, little gain)")
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args(argv)

    from transformers import AutoModelForQuestionAnswering, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = Path(args.base) if args.base else minilm_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    examples = [ex for f in args.data for ex in load_squad(f)]
    random.Random(args.seed).shuffle(examples)
    if args.limit:
        examples = examples[: args.limit]
    tokenizer = load_tokenizer(base / "tokenizer.json")
    features = build_features(examples, tokenizer, args.max_length, args.stride, args.keep_negative, args.seed)
    batches = bucketed_batches([len(f[0]) for f in features], args.batch_size, args.seed)
    total_steps = min(args.max_steps or len(batches), len(batches))
    print(json.dumps({"examples": len(examples), "features": len(features), "batches": len(batches),
                      "total_steps": total_steps, "prep_s": round(time.time() - t0, 1)}), flush=True)

    model = AutoModelForQuestionAnswering.from_pretrained(base, attn_implementation="sdpa").to(device)
    if not args.train_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup * total_steps), total_steps)
    ckpt = out / "checkpoint.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        scheduler.load_state_dict(state["sched"])
        step = state["step"]
        print(json.dumps({"resumed_at_step": step}), flush=True)

    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    use_bf16 = args.bf16 == "on" or device == "cuda"
    start_time = last_ckpt = last_log = time.time()
    seen = 0
    while step < total_steps:
        if args.time_budget_min and time.time() - start_time > args.time_budget_min * 60:
            print(json.dumps({"stopped": "time budget", "step": step}), flush=True)
            break
        ids, types, mask, starts, ends = collate(features, batches[step], device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        loss = (loss_fn(outputs.start_logits.float(), starts) + loss_fn(outputs.end_logits.float(), ends)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen += len(batches[step - 1])
        now = time.time()
        if now - last_log > 60 or step == total_steps:
            print(json.dumps({"step": step, "of": total_steps, "loss": round(loss.item(), 4),
                              "lr": scheduler.get_last_lr()[0], "features_per_s": round(seen / (now - start_time), 2),
                              "elapsed_min": round((now - start_time) / 60, 1)}), flush=True)
            last_log = now
        if now - last_ckpt > args.checkpoint_every_min * 60:
            save_checkpoint(ckpt, model, optimizer, scheduler, step)
            last_ckpt = now
    save_checkpoint(ckpt, model, optimizer, scheduler, step)
    final = out / "final"
    model.save_pretrained(final)
    shutil.copy(base / "tokenizer.json", final / "tokenizer.json")
    (final / "training.json").write_text(json.dumps({
        "base": str(base), "data": args.data, "steps": step, "planned_steps": total_steps,
        "features_seen": step * args.batch_size, "features_total": len(features),
        "max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size,
        "lr": args.lr, "keep_negative": args.keep_negative, "bf16": use_bf16, "device": device,
        "train_minutes": round((time.time() - start_time) / 60, 1)}, indent=2))
    print(json.dumps({"saved": str(final), "steps": step}), flush=True)


if __name__ == "__main__":
    main()
