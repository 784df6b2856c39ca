"""What every long training job here shares: where its checkpoints live, which precision the CPU
runs fastest, whether jemalloc is in, and checkpoints that resume model, optimiser, schedule and
position in the data."""
from __future__ import annotations

import json
import os
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
