"""What every long training job here shares: where its checkpoints live, which precision the CPU
runs fastest, whether jemalloc is in, and checkpoints that resume model, optimiser, schedule and
position in the data."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint written by save_checkpoint; returns the whole state (step, extras)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    scheduler.load_state_dict(state["sched"])
    return state


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


def start_job(args, job: str, export_snapshot: Callable[[Path, Path, Path], None]) -> Job | None:
    """The set-up every job shares, from its add_job_arguments options; None when the command only
    exported the job's snapshot (--export-snapshot)."""
    import torch

    from build_tools.paths import minilm_dir

    base = Path(args.base) if args.base else minilm_dir()
    out = Path(args.out) if args.out else default_train_dir(job)
    checkpoint = out / "checkpoint.pt"
    if args.export_snapshot:
        export_snapshot(checkpoint, base, Path(args.export_snapshot))
        return None
    stop = stop_on_signals()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    return Job(base, out, checkpoint, device, choose_bf16(args.bf16, device), stop)
