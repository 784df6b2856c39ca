"""Helpers shared by the compression commands: model layouts, saving/loading, sizes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYOUT = "layout.json"


def layer_layout(model) -> dict:
    """Per-layer attention heads and FFN width: what a structurally pruned model needs to reload."""
    layers = encoder_layers(model)
    return {"heads": [l.attention.self.num_attention_heads for l in layers],
            "head_size": layers[0].attention.self.attention_head_size,
            "intermediate": [l.intermediate.dense.out_features for l in layers],
            "vocab": model.get_input_embeddings().weight.shape[0]}


def encoder_layers(model):
    """The BertLayer modules of a BertModel or a Bert*For* head model."""
    bert = getattr(model, "bert", model)
    return list(bert.encoder.layer)


def save_model(model, out: Path, tokenizer_json: Path | None = None, extra: dict | None = None) -> None:
    """save_pretrained plus layout.json, so pruned (uneven) layers can be rebuilt by load_model."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.save_pretrained(out)
    (out / LAYOUT).write_text(json.dumps({**layer_layout(model), **(extra or {})}, indent=2))
    if tokenizer_json is not None and tokenizer_json.resolve() != (out / "tokenizer.json").resolve():
        (out / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())


def load_model(path: Path, kind: str = "reader", attn: str = "eager"):
    """Load a checkpoint written by save_model or save_pretrained, reshaping pruned layers first."""
    from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering

    from build_tools.compress.structure import shrink_layer

    cls = AutoModelForQuestionAnswering if kind == "reader" else AutoModel
    layout_file = Path(path) / LAYOUT
    if not layout_file.exists():
        return cls.from_pretrained(path, attn_implementation=attn)
    layout = json.loads(layout_file.read_text())
    config = AutoConfig.from_pretrained(path)
    config._attn_implementation = attn
    model = cls.from_config(config, attn_implementation=attn)
    for layer, heads, width in zip(encoder_layers(model), layout["heads"], layout["intermediate"]):
        shrink_layer(layer, list(range(heads)), list(range(width)))
    state = _load_state(Path(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match its layout: {real_missing[:5]} {unexpected[:5]}")
    return model.eval()


def _load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_parameters(path: Path) -> int:
    """Number of weights stored in an ONNX file (initialisers; int8 counted per element)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        if n > 16:  # ignore scalars/shape constants
            total += n
    return total


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def resumable_optimizer(student, lr: float, warmup: float, total_steps: int, ckpt: Path, log=print):
    """AdamW over all but the (frozen) word embeddings with linear warm-up/decay, resumed from
    ``ckpt`` when it exists (training.load_checkpoint, the resume train-reader uses):
    (trainable parameters, optimizer, scheduler, step)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from build_tools.training import load_checkpoint

    student.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * total_steps), total_steps)
    step = 0
    if ckpt.exists():  # written by training.save_checkpoint (run_steps' checkpoint callback)
        step = load_checkpoint(ckpt, student, optimizer, scheduler)["step"]
        log(json.dumps({"resumed_at_step": step}))
    return trainable, optimizer, scheduler, step


def optimizer_step(trainable: list, optimizer, scheduler) -> None:
    import torch

    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def run_steps(train_step, start: int, total: int, max_minutes: float, checkpoint_every_min: float,
              checkpoint, log, steps_per_epoch: int = 0, stop_requested=lambda: False, unit: str = "items") -> int:
    """The shared training clock: ``train_step(step) -> (loss, items)`` until ``total`` steps or the
    wall-clock budget, a JSON progress line a minute (items/s, named ``{unit}_per_s``; epoch; ETA),
    ``checkpoint(step)`` every N minutes and at the end. Returns the step reached."""
    import time

    started = last_log = last_ckpt = time.time()
    step, seen = start, 0
    while step < total:
        if max_minutes and time.time() - started > max_minutes * 60:
            log(json.dumps({"stopped": "time budget", "step": step}))
            break
        if stop_requested():
            log(json.dumps({"stopped": "asked to stop (SIGTERM/SIGINT)", "step": step}))
            break
        loss, items = train_step(step)
        step, seen = step + 1, seen + items
        now = time.time()
        if now - last_log > 60 or step == total:
            log(json.dumps(progress_line(step, total, start, loss, seen, now - started, steps_per_epoch, unit)))
            last_log = now
        if now - last_ckpt > checkpoint_every_min * 60:
            checkpoint(step)
            last_ckpt = now
    checkpoint(step)
    return step


def progress_line(step: int, total: int, start: int, loss: float, seen: int, elapsed_s: float,
                  steps_per_epoch: int = 0, unit: str = "items") -> dict:
    """Where a job stands: rate over this run, epoch fraction, and time left at that rate."""
    rate = (step - start) / max(elapsed_s, 1e-9)
    line = {"step": step, "of": total, "loss": round(loss, 5), f"{unit}_per_s": round(seen / max(elapsed_s, 1e-9), 2),
            "elapsed_min": round(elapsed_s / 60, 1), "eta_min": round((total - step) / max(rate, 1e-9) / 60, 1)}
    if steps_per_epoch:
        line["epoch"] = round(step / steps_per_epoch, 3)
    return line


def batch_inputs(tokenizer, texts: list[str], max_length: int):
    """Padded (ids, attention mask) tensors for a batch of texts (a `tokenizers` tokenizer)."""
    import torch

    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
    return ids, mask
