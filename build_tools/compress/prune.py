"""Structured pruning of attention heads and FFN neurons by gradient importance (Michel et al.
2019): a gate of ones multiplies each head's output and each FFN neuron; |dLoss/dgate| summed
over validation batches ranks them; the least important are cut out of the weight matrices.

Reader loss: the span cross-entropy on labelled windows. Retriever loss: in-batch contrastive
loss between questions and their own passages (what retrieval needs the encoder to keep).
An optional short distillation from the unpruned model recovers accuracy (reader).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from build_tools.compress.common import (batch_inputs, count_parameters, encoder_layers, load_model, save_model,
                                         write_json)
from build_tools.compress.structure import shrink_layer
from build_tools.paths import SQUAD_DIR
from build_tools.squad import load_squad

IMPORTANCE_DATA = SQUAD_DIR / "train-v2.0-first10-articles.json"


class Gates:
    """Ones-valued gates on every head output and FFN neuron, installed as forward pre-hooks."""

    def __init__(self, model):
        self.heads, self.neurons, self.handles = [], [], []
        for layer in encoder_layers(model):
            attn = layer.attention.self
            h = torch.ones(attn.num_attention_heads, requires_grad=True)
            n = torch.ones(layer.intermediate.dense.out_features, requires_grad=True)
            size = attn.attention_head_size
            self.handles.append(layer.attention.output.dense.register_forward_pre_hook(
                lambda mod, args, h=h, size=size: (args[0] * h.repeat_interleave(size),)))
            self.handles.append(layer.output.dense.register_forward_pre_hook(
                lambda mod, args, n=n: (args[0] * n,)))
            self.heads.append(h)
            self.neurons.append(n)
        self.head_score = [torch.zeros_like(h) for h in self.heads]
        self.neuron_score = [torch.zeros_like(n) for n in self.neurons]

    def accumulate(self) -> None:
        """Add |gradient| of this batch, then clear it."""
        for gates, scores in ((self.heads, self.head_score), (self.neurons, self.neuron_score)):
            for g, s in zip(gates, scores):
                s += g.grad.abs()
                g.grad = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def reader_batches(tokenizer_path: Path, data: Path, n_windows: int, batch_size: int, seed: int = 0):
    """Labelled windows (train-reader's labelling) of the importance data."""
    from appliance.windows import load_tokenizer
    from build_tools.train_reader import build_features, collate

    examples = load_squad(data)
    random.Random(seed).shuffle(examples)
    feats = build_features(examples[: n_windows * 2], load_tokenizer(tokenizer_path), 256, 96, 0.3, seed)[:n_windows]
    return [collate(feats, list(range(i, min(i + batch_size, len(feats)))), "cpu")
            for i in range(0, len(feats), batch_size)]


def reader_loss(model, batch) -> torch.Tensor:
    ids, types, mask, starts, ends = batch
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    return (F.cross_entropy(out.start_logits, starts) + F.cross_entropy(out.end_logits, ends)) / 2


def encode_mean(model, tokenizer, texts: list[str], max_length: int = 256) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings (the runtime SentenceEncoder's pooling), with grad."""
    ids, mask = batch_inputs(tokenizer, texts, max_length)
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(pooled, dim=-1)


def retriever_batches(data: Path, n_pairs: int, batch_size: int, seed: int = 0):
    """(questions, their passages) batches with distinct passages inside a batch."""
    examples = [ex for ex in load_squad(data) if not ex.is_impossible]
    random.Random(seed).shuffle(examples)
    batches, current, seen = [], [], set()
    for ex in examples:
        if ex.context in seen:
            continue
        seen.add(ex.context)
        current.append((ex.question, ex.context))
        if len(current) == batch_size:
            batches.append(current)
            current, seen = [], set()
        if sum(len(b) for b in batches) >= n_pairs:
            break
    return batches


def retriever_loss(model, batch, tokenizer) -> torch.Tensor:
    """In-batch negatives ranking loss (scale 20, as sentence-transformers' MNRL)."""
    q = encode_mean(model, tokenizer, [b[0] for b in batch])
    p = encode_mean(model, tokenizer, [b[1] for b in batch])
    return F.cross_entropy(20 * q @ p.T, torch.arange(len(batch)))


def importance(model, batches, loss_fn) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer head and neuron scores, head scores L2-normalised per layer as in Michel et al."""
    gates = Gates(model)
    model.eval()  # no dropout: the gradient should measure the model, not the noise
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in batches:
            loss_fn(model, batch).backward()
            gates.accumulate()
    finally:
        gates.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    heads = [s / s.norm().clamp(min=1e-12) for s in gates.head_score]
    return heads, gates.neuron_score


def keep_top(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, ascending (stable on ties)."""
    keep = max(1, min(keep, len(scores)))
    return sorted(torch.argsort(scores, descending=True, stable=True)[:keep].tolist())


def prune_model(model, head_scores, neuron_scores, heads_keep: int, ffn_keep: float) -> dict:
    """Cut every layer to its top heads_keep heads and top ffn_keep share of neurons."""
    kept = {"heads": [], "neurons": []}
    for layer, hs, ns in zip(encoder_layers(model), head_scores, neuron_scores):
        keep_h = keep_top(hs, heads_keep) if heads_keep else list(range(len(hs)))
        keep_n = keep_top(ns, round(ffn_keep * len(ns)))
        shrink_layer(layer, keep_h, keep_n)
        kept["heads"].append(keep_h)
        kept["neurons"].append(len(keep_n))
    return kept


def parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"build_tools prune-{kind}", description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint dir (HF or a compress command's)")
    p.add_argument("--out", required=True)
    p.add_argument("--heads-keep", type=int, default=0, help="attention heads kept per layer (0 = all)")
    p.add_argument("--ffn-keep", type=float, default=1.0, help="share of FFN neurons kept per layer")
    p.add_argument("--importance-data", type=Path, default=IMPORTANCE_DATA)
    p.add_argument("--importance-samples", type=int, default=256, help="windows (reader) or pairs (retriever)")
    p.add_argument("--importance-batch-size", type=int, default=8)
    return p


def run(kind: str, argv: list[str] | None) -> None:
    from build_tools.compress.distill import add_training_args

    p = parser(kind)
    if kind == "reader":
        p.add_argument("--teacher", default=None, help="recover by distilling from this model (default: --model)")
        add_training_args(p, max_minutes=0)
        p.add_argument("--recover-steps", type=int, default=0, help="distillation steps after pruning (0 = none)")
    else:
        p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    src, out = Path(args.model), Path(args.out)
    started = time.time()
    model = load_model(src, kind)
    before = count_parameters(model)
    if kind == "reader":
        batches = reader_batches(src / "tokenizer.json", args.importance_data, args.importance_samples,
                                 args.importance_batch_size)
        heads, neurons = importance(model, batches, reader_loss)
    else:
        from appliance.windows import load_tokenizer

        tokenizer = load_tokenizer(src / "tokenizer.json")
        batches = retriever_batches(args.importance_data, args.importance_samples,
                                 args.importance_batch_size)
        heads, neurons = importance(model, batches, lambda m, b: retriever_loss(m, b, tokenizer))
    kept = prune_model(model, heads, neurons, args.heads_keep, args.ffn_keep)
    record = {"source": str(src), "heads_keep": args.heads_keep, "ffn_keep": args.ffn_keep,
              "importance_data": str(args.importance_data), "importance_batches": len(batches),
              "kept": kept, "head_importance": [[round(float(x), 4) for x in h] for h in heads],
              "params_before": before, "params_after": count_parameters(model)}
    if kind == "reader" and args.recover_steps:
        record["recovery"] = recover(model, args, src, out)
    record["seconds"] = round(time.time() - started, 1)
    save_model(model, out, src / "tokenizer.json", extra={"pruning": {k: v for k, v in record.items()
                                                                        if k != "head_importance"}})
    write_json(out / "pruning.json", record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("head_importance", "kept")}, indent=2))


def recover(model, args, src: Path, out: Path) -> dict:
    """Short distillation of the pruned reader from the unpruned one (train windows, KL + span)."""
    from build_tools.compress.distill import distill_loop, training_batches, training_record

    teacher = load_model(Path(args.teacher) if args.teacher else src, "reader", attn="sdpa")
    _, features, batches = training_batches(args, src / "tokenizer.json")
    args.max_steps = args.recover_steps
    started = time.time()
    (out / "recovery").mkdir(parents=True, exist_ok=True)
    step = distill_loop(model, teacher, features, batches, args, out / "recovery", log=lambda s: print(s, flush=True))
    return training_record(args, step, batches, features, (time.time() - started) / 60)
