"""The variants the report compares, read from a JSON spec, and their (cached) evaluations.

A variant is a model directory + ONNX file (or a PyTorch checkpoint for the fp32 teacher) with
a stage label. Evaluations run with one thread so they can share the machine with training, and
are cached as JSON next to the report so rerunning ``report`` only evaluates what is new.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from build_tools.paths import PROJECT_ROOT, SQUAD_DIR

DEFAULT_SPEC = Path(__file__).with_name("variants.json")
DEV42 = SQUAD_DIR / "dev-v1.1-42-articles.json"


@dataclass
class Variant:
    name: str
    kind: str  # reader | retriever
    stage: str
    model: str = ""  # dir with manifest.json (ONNX variants)
    onnx: str | None = None  # file in that dir (default: the manifest's)
    torch: str = ""  # checkpoint dir (PyTorch variants)
    notes: str = ""
    same_as: str = ""  # a parity-checked export whose accuracy this PyTorch variant shares
    extra: dict = field(default_factory=dict)

    @property
    def is_torch(self) -> bool:
        return bool(self.torch)

    def torch_dir(self, root: Path = PROJECT_ROOT) -> Path:
        """The checkpoint dir; "@minilm" names the all-MiniLM-L6-v2 package the retriever ships."""
        if self.torch == "@minilm":
            from build_tools.paths import minilm_dir

            return minilm_dir()
        return root / self.torch

    def path(self, root: Path = PROJECT_ROOT) -> Path:
        if self.is_torch:
            return self.torch_dir(root)
        manifest = json.loads((root / self.model / "manifest.json").read_text())
        return root / self.model / (self.onnx or manifest["roles"]["onnx"])

    def weights_path(self, root: Path = PROJECT_ROOT) -> Path | None:
        """The packed-weights file of a clustered variant (manifest role "weights"), else None."""
        if self.is_torch:
            return None
        manifest = json.loads((root / self.model / "manifest.json").read_text())
        name = manifest["roles"].get("weights")
        return root / self.model / name if name else None

    def exists(self, root: Path = PROJECT_ROOT) -> bool:
        try:
            return self.path(root).exists()
        except (OSError, ValueError):
            return False


def load_spec(path: Path = DEFAULT_SPEC) -> list[Variant]:
    data = json.loads(Path(path).read_text())
    return [Variant(**v) for v in data["variants"]]


def evaluate_variant(v: Variant, data: Path, limit: int, root: Path = PROJECT_ROOT, threads: int = 1) -> dict:
    """evaluate-reader / evaluate-retriever's metrics for one variant, with `threads` ORT threads."""
    started = time.time()
    if v.kind == "reader":
        result = _evaluate_reader(v, data, limit, root, threads)
    else:
        result = _evaluate_retriever(v, data, limit, root, threads)
    return {"variant": v.name, "data": str(data), "limit": limit, "seconds": round(time.time() - started, 1), **result}


def _evaluate_reader(v: Variant, data: Path, limit: int, root: Path, threads: int) -> dict:
    from appliance import runtime
    from appliance.config import Config
    from build_tools.evaluate_reader import predict_all, report
    from build_tools.squad import load_squad

    examples = load_squad(data)[: limit or None]
    config = Config()
    config.reader.threads = threads
    if v.is_torch:
        from build_tools.torch_reader import TorchReader

        reader = TorchReader(v.torch_dir(root), config.reader)
    else:
        reader = runtime.open_reader(config, root / v.model, v.onnx)
    metrics = report(examples, predict_all(reader, examples), None)["all"]
    return {"exact_match": metrics["exact_match"], "f1": metrics["f1"], "questions": metrics["count"]}


def _evaluate_retriever(v: Variant, data: Path, limit: int, root: Path, threads: int) -> dict:
    """Dense R@1/5/20 of each question's own paragraph among the file's paragraphs
    (evaluate-retriever's dense ranking, with a chosen thread count)."""
    import faiss

    from appliance import runtime
    from appliance.config import Config
    from build_tools.evaluate_retriever import KS, recalls
    from build_tools.squad import load_squad

    all_examples = load_squad(data)
    examples = [ex for ex in all_examples if not ex.is_impossible][: limit or None]
    paragraphs = list(dict.fromkeys(ex.context for ex in all_examples))
    position = {text: i for i, text in enumerate(paragraphs)}
    config = Config()
    config.retriever.threads = threads
    encoder = runtime.open_encoder(config, root / v.model, v.onnx)
    index = faiss.IndexFlatIP(encoder.dim)
    index.add(encoder.encode(paragraphs))
    _, ranked = index.search(encoder.encode([ex.question for ex in examples]), max(KS))
    return {"dense": recalls([list(r) for r in ranked], [position[ex.context] for ex in examples]),
            "questions": len(examples), "paragraphs": len(paragraphs)}


def cached_evaluation(v: Variant, cache_dir: Path, data: Path, limit: int, run_missing: bool,
                      root: Path = PROJECT_ROOT) -> dict | None:
    """The cached result for (variant, data, limit), computing it when asked to."""
    path = cache_dir / f"{v.name}.{data.stem}.{limit or 'all'}.json"
    if path.exists():
        return json.loads(path.read_text())
    if not run_missing or not v.exists(root):
        return None
    result = evaluate_variant(v, data, limit, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result
