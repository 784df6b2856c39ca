"""distill-retriever: a shallower sentence encoder trained to reproduce all-MiniLM-L6-v2's
mean-pooled embeddings (MSE + cosine) on unlabelled text: SQuAD train passages and questions,
the knowledge base, medical questions. No labels are needed, so any text the box will see can
be used; retrieval quality is then measured with dev-42 recall like the teacher's.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from appliance.windows import load_tokenizer
from build_tools.compress.common import (batch_inputs, count_parameters, load_model, optimizer_step,
                                         resumable_optimizer, run_steps, save_model)
from build_tools.compress.distill import make_student
from build_tools.compress.vocab import corpus_texts
from build_tools.paths import PROJECT_ROOT, SHARED_DATA, SQUAD_DIR
from build_tools.training import save_checkpoint

DEFAULT_TEXTS = [SQUAD_DIR / "train-v1.1.json.gz", PROJECT_ROOT / "knowledge",
                 SHARED_DATA / "medical" / "medquad_pairs_with_answers.json"]


def load_texts(paths: list[Path], limit: int, seed: int) -> list[str]:
    """Unique non-empty texts (folders split into paragraphs), shuffled."""
    texts: dict[str, None] = {}
    for path in paths:
        for text in corpus_texts(path):
            parts = text.split("\n\n") if Path(path).is_dir() else [text]
            texts.update((t.strip(), None) for t in parts if len(t.strip()) > 3)
    out = list(texts)
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out




def mean_pool(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    """MSE on the pooled vectors (scale-sensitive) plus 1 - cosine (what retrieval ranks by)."""
    cos = F.cosine_similarity(student_emb, teacher_emb, dim=-1)
    return F.mse_loss(student_emb, teacher_emb) + cosine_weight * (1 - cos).mean()


def length_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, seed: int) -> list[list[int]]:
    """Batches of similar token length (less padding), in random order."""
    from build_tools.train_reader import bucketed_batches

    tokenizer.enable_truncation(max_length)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return bucketed_batches(lengths, batch_size, seed)


def mean_cosine(student, teacher, s_tok, t_tok, texts: list[str], max_length: int) -> float:
    student.eval()
    cos = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            chunk = texts[i : i + 32]
            s = mean_pool(student, *batch_inputs(s_tok, chunk, max_length))
            t = mean_pool(teacher, *batch_inputs(t_tok, chunk, max_length))
            cos += F.cosine_similarity(s, t, dim=-1).tolist()
    return round(sum(cos) / max(len(cos), 1), 4)


def held_out_texts(path: Path, n: int) -> list[str]:
    texts = [t for t in corpus_texts(path)] if Path(path).exists() else []
    random.Random(0).shuffle(texts)
    return texts[:n]


def main(argv: list[str] | None = None) -> None:
    from build_tools.paths import minilm_dir

    p = argparse.ArgumentParser(prog="build_tools distill-retriever", description=__doc__)
    p.add_argument("--teacher", default=None, help="HF dir of the teacher encoder (default: all-MiniLM-L6-v2)")
    p.add_argument("--student-init", default=None, help="start from this checkpoint (e.g. a pruned one) "
                   "instead of teacher layers")
    p.add_argument("--layers", default="0,2,4", help="teacher layers the student starts from")
    p.add_argument("--out", default="build/compress/retriever-student")
    p.add_argument("--texts", nargs="+", type=Path, default=DEFAULT_TEXTS)
    p.add_argument("--text-limit", type=int, default=0)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--cosine-weight", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=30)
    p.add_argument("--checkpoint-every-min", type=float, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-data", type=Path, default=SQUAD_DIR / "dev-v1.1-42-articles.json",
                   help="held-out texts for the final cosine-to-teacher check")
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    teacher_dir = Path(args.teacher) if args.teacher else minilm_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_model(teacher_dir, "retriever", attn="sdpa").eval()
    if args.student_init:
        student_dir = Path(args.student_init)
        student = load_model(student_dir, "retriever", attn="sdpa")
    else:
        student_dir = teacher_dir
        student = make_student(teacher, [int(i) for i in args.layers.split(",")])
    t_tok, s_tok = load_tokenizer(teacher_dir / "tokenizer.json"), load_tokenizer(student_dir / "tokenizer.json")
    texts = load_texts(args.texts, args.text_limit, args.seed)
    batches = length_batches(s_tok, texts, args.batch_size, args.max_length, args.seed)
    total = min(args.max_steps or len(batches), len(batches))
    print(json.dumps({"texts": len(texts), "batches": len(batches), "steps": total,
                      "teacher_params": count_parameters(teacher), "student_params": count_parameters(student)}),
          flush=True)

    ckpt = out / "checkpoint.pt"
    trainable, optimizer, scheduler, step = resumable_optimizer(student, args.lr, args.warmup, total, ckpt)
    student.train()

    def train_step(step: int) -> tuple[float, int]:
        chunk = [texts[i] for i in batches[step]]
        with torch.no_grad():
            target = mean_pool(teacher, *batch_inputs(t_tok, chunk, args.max_length))
        loss = embedding_loss(mean_pool(student, *batch_inputs(s_tok, chunk, args.max_length)), target,
                              args.cosine_weight)
        loss.backward()
        optimizer_step(trainable, optimizer, scheduler)
        return loss.item(), len(chunk)

    started = time.time()
    step = run_steps(train_step, step, total, args.max_minutes, args.checkpoint_every_min,
                     lambda at: save_checkpoint(ckpt, student, optimizer, scheduler, at),
                     lambda line: print(line, flush=True))
    held_out = held_out_texts(args.eval_data, 256)
    record = {"teacher": str(teacher_dir), "student_init": str(student_dir), "layers": args.layers,
              "texts": [str(t) for t in args.texts], "text_count": len(texts), "steps": step, "planned_steps": total,
              "texts_seen": sum(len(b) for b in batches[:step]), "batch_size": args.batch_size, "lr": args.lr,
              "cosine_weight": args.cosine_weight, "train_minutes": round((time.time() - started) / 60, 1),
              "cosine_to_teacher": {"data": str(args.eval_data), "texts": len(held_out),
                                    "mean": mean_cosine(student, teacher, s_tok, t_tok, held_out, args.max_length)}}
    save_model(student, out / "final", student_dir / "tokenizer.json", extra={"distillation": record})
    (out / "final" / "distillation.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2), flush=True)


if __name__ == "__main__":
    main()
