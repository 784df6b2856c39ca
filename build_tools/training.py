"""What every long training job here shares: where its checkpoints live, which precision the CPU
runs fastest, whether jemalloc is in, and checkpoints that resume model, optimiser, schedule and
position in the data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from build_tools.errors import require_files


def default_train_dir(job: str) -> Path:
    """Outside the repository, so a fresh clone or a new checkout keeps the job's progress:
    $APPLIANCE_TRAIN_DIR/JOB, else $XDG_CACHE_HOME/appliance/train/JOB (~/.cache/...)."""
    root = os.environ.get("APPLIANCE_TRAIN_DIR")
    if root:
        return Path(root) / job
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "appliance" / "train" / job


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """bf16 autocast is ~3x faster than fp32 with AVX512-BF16 or AMX, and ~1.7x slower without."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def choose_bf16(choice: str, device: str) -> bool:
    """'on'/'off' as asked; 'auto': always on CUDA, on CPU only where the CPU has bf16 units."""
    if choice in ("on", "off"):
        return choice == "on"
    return device == "cuda" or cpu_has_fast_bf16()


def add_job_arguments(p, job: str) -> None:
    """The options every resumable training job shares (where it lives, how long a run goes, the
    CPU settings, the snapshot export), so the jobs read alike."""
    p.add_argument("--base", default=None, help="HF model dir (default: the all-MiniLM-L6-v2 package)")
    p.add_argument("--out", default=None, help=f"job folder (default: ~/.cache/appliance/train/{job})")
    p.add_argument("--max-steps", type=int, default=0, help="0 = all epochs")
    p.add_argument("--time-budget-min", type=float, default=0, help="stop after this long (0 = none)")
    p.add_argument("--checkpoint-every-min", type=float, default=10)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-word-embeddings", action="store_true",
                   help="also update the 30k-row embedding matrix (slower on CPU, little gain)")
    p.add_argument("--attention-dropout", type=float, default=0.0,
                   help="dropout on attention probabilities; >0 forces the slow attention path on CPU "
                        "(a 32x12x256x256 random mask per layer: 3x slower steps, measured)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--export-snapshot", default=None, metavar="DIR",
                   help="write the job's current checkpoint as a model dir and exit")


def jemalloc_loaded() -> bool:
    return "jemalloc" in os.environ.get("LD_PRELOAD", "")


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    """Atomic: a kill mid-write leaves the previous checkpoint."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict(),
                "sched": scheduler.state_dict(), "step": step, **(extra or {})}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, optimizer, scheduler, must_match: dict | None = None) -> dict:
    """Restore a checkpoint written by save_checkpoint; returns the whole state (step, extras).
    ``must_match``: record fields the checkpoint must have been written with (what the model is:
    its teacher, its shape); another value stops the job before anything is loaded or written."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("record", {})
    changed = {k: saved[k] for k, v in (must_match or {}).items() if k in saved and saved[k] != v}
    if changed:
        raise SystemExit(f"{path} was trained with {changed}, not {({k: must_match[k] for k in changed})}: pass "
                         "the same, or move the job folder aside to start anew")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    scheduler.load_state_dict(state["sched"])
    return state


@dataclass
class Optimiser:
    """AdamW over the trainable parameters with linear warm-up and decay, as every job trains."""

    trainable: list
    optimizer: object
    scheduler: object

    def step(self) -> None:
        """Clip, step, advance the schedule, clear the gradients."""
        import torch

        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_optimiser(model, lr: float, warmup: float, total_steps: int, train_word_embeddings: bool) -> Optimiser:
    """Frozen word embeddings by default: the 30k-row matrix is most of an update's cost on CPU and
    adds little."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not train_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    return Optimiser(trainable, optimizer, get_linear_schedule_with_warmup(optimizer, int(warmup * total_steps),
                                                                           total_steps))


def resume(path: Path, model, optimizer, scheduler, record: dict, unit: str = "windows",
           must_match: tuple[str, ...] = ()) -> tuple[int, dict]:
    """(step, record) from the job's checkpoint when it has one (its record over this run's, so
    the items trained and minutes add up across sessions); (0, record) for a new job. The record
    fields named in ``must_match`` must be the checkpoint's (see load_checkpoint)."""
    if not path.exists():
        return 0, record
    state = load_checkpoint(path, model, optimizer, scheduler, {k: record[k] for k in must_match})
    record = {**record, **state.get("record", {})}
    log_json(resumed_at_step=state["step"], **{f"{unit}_trained": record[f"{unit}_trained"]})
    return state["step"], record


def shipped_training(model_dir: Path) -> dict:
    """The training record a shipped model's manifest keeps (export-reader: source.training,
    export-retriever: source.fine_tuned); {} for a model we did not train (or no manifest)."""
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        return {}
    source = json.loads(manifest.read_text()).get("source", {})
    return source.get("training") or source.get("fine_tuned") or {}


def shipped_position(model_dir: Path, record: dict, schedule: tuple[str, ...],
                     defaults: dict | None = None) -> tuple[int, dict] | None:
    """(step, record) where the shipped model's own run of this same schedule (the ``schedule``
    fields of its record equal this run's; ``defaults`` for fields older records lack) stopped;
    None when it was another schedule. A job whose checkpoint is gone (a new machine) then trains
    only the steps the shipped model has not seen, instead of the whole schedule again over
    weights that already learned it. The record carries on the items, minutes and sessions."""
    trained = shipped_training(model_dir)
    if not trained or any(trained.get(k, (defaults or {}).get(k)) != record[k] for k in schedule):
        return None
    step = int(trained.get("steps", 0))
    if not 0 < step <= record["planned_steps"]:
        return None
    carried = {k: v for k, v in trained.items() if k.endswith("_trained") or k in ("train_minutes", "sessions")}
    return step, {**record, **carried, "continued_from": str(model_dir / "manifest.json")}


def advance_schedule(scheduler, step: int) -> None:
    """Give the schedule the learning rate it had at this step (no optimiser step taken yet)."""
    import warnings

    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": wanted here
        scheduler.step()


class JobProgress:
    """How far the job got, kept in its record across sessions (items trained, minutes, one entry
    per session with its speed and settings): what the model card reports. ``unit`` names the
    items (windows, pairs)."""

    def __init__(self, record: dict, start_step: int, steps_per_epoch: int, unit: str = "windows",
                 **settings) -> None:
        self.record, self.steps_per_epoch, self.unit = record, max(steps_per_epoch, 1), unit
        self.session = {"started_step": start_step, **settings, unit: 0, "minutes": 0.0}
        record["sessions"] = [*record.get("sessions", []), self.session]
        self.before = record.get(f"{unit}_trained", 0)
        self.minutes_before = record.get("train_minutes", 0.0)
        self.started = time.time()

    def count(self, items: int) -> None:
        self.session[self.unit] += items

    def at(self, step: int) -> dict:
        """The record as of this step, for a checkpoint."""
        elapsed = time.time() - self.started
        self.session.update(ended_step=step, minutes=round(elapsed / 60, 1))
        self.session[f"{self.unit}_per_s"] = round(self.session[self.unit] / max(elapsed, 1e-9), 2)
        self.record.update({"steps": step, f"{self.unit}_trained": self.before + self.session[self.unit],
                            "epochs_done": round(step / self.steps_per_epoch, 3),
                            "train_minutes": round(self.minutes_before + self.session["minutes"], 1)})
        return self.record


def save_model_dir(model, out: Path, tokenizer_json: Path, record: dict) -> None:
    """A HF model dir with its tokenizer and training record: a job's final/ (the queue,
    scripts/train.sh, takes final/ as the sign that the job is done) or a snapshot of it."""
    model.save_pretrained(out)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    (out / "training.json").write_text(json.dumps(record, indent=2))


def log_json(**fields) -> None:
    print(json.dumps(fields), flush=True)


def stop_on_signals() -> Callable[[], bool]:
    """SIGTERM/SIGINT end the job after the current step with a checkpoint (a session ending, a
    machine shutting down) instead of losing up to ten minutes of training."""
    asked = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: asked.append(True))
    return lambda: bool(asked)


@dataclass(frozen=True)
class Job:
    """Where a training job lives and how this run of it trains."""

    base: Path  # the HF model it starts from
    out: Path  # the job folder (checkpoint, log, final/)
    checkpoint: Path
    device: str
    bf16: bool
    stop: Callable[[], bool]  # True once SIGTERM/SIGINT asked the job to end


def start_job(args, job: str, export_snapshot: Callable[[Path, Path, Path], None],
              data_files: list[str] = ()) -> Job | None:
    """The set-up every job shares, from its add_job_arguments options; None when the command only
    exported the job's snapshot (--export-snapshot). A missing ``data_files`` entry fails here, before
    the job folder exists."""
    import torch

    from build_tools.paths import minilm_dir

    base = Path(args.base) if args.base else minilm_dir()
    out = Path(args.out) if args.out else default_train_dir(job)
    checkpoint = out / "checkpoint.pt"
    if args.export_snapshot:
        export_snapshot(checkpoint, base, Path(args.export_snapshot))
        return None
    require_files(list(data_files))
    stop = stop_on_signals()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    return Job(base, out, checkpoint, device, choose_bf16(args.bf16, device), stop)
