"""Writing models/<name>/manifest.json: sha256 of every file, provenance, command, metrics."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from appliance.model_dir import MANIFEST, sha256_file
from build_tools.paths import PROJECT_ROOT, SHARED_DATA


def portable(value):
    """Paths as any machine can read them: inside the project relative to it, the shared data as
    ../shared/..., an installed package by its name, the user's home as ~; the rest unchanged."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    if "site-packages" in path.parts:
        return str(Path(*path.parts[path.parts.index("site-packages") + 1:]))
    for root, shown in ((SHARED_DATA.parent.resolve(), "../shared"), (PROJECT_ROOT.resolve(), ".")):
        if path.is_relative_to(root):
            return str(Path(shown) / path.relative_to(root))
    if path.is_relative_to(Path.home()):
        return str(Path("~") / path.relative_to(Path.home()))
    return value


def invocation() -> str:
    """The command line that is running now, as a person would retype it."""
    return "python -m build_tools " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_manifest(model_dir: Path, *, roles: dict[str, str], rebuild: str, extra: dict) -> dict:
    files = {
        name: {"sha256": sha256_file(model_dir / name), "bytes": (model_dir / name).stat().st_size}
        for name in sorted(set(roles.values()))
    }
    manifest = {
        "name": model_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": invocation(),
        "rebuild": rebuild,
        "roles": roles,
        "files": files,
        **portable(extra),
    }
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def update_manifest(model_dir: Path, **fields) -> dict:
    """Merge measured results (e.g. metrics) into an existing manifest."""
    path = model_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key, value in portable(fields).items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def record_metrics(model_dir: Path, result: dict) -> None:
    """Keep an evaluation result in the manifest, keyed by data file and evaluated ONNX file."""
    key = f"{Path(result['data']).name} | {Path(result.get('model') or result.get('encoder')).name}"
    if result.get("articles", "all") != "all":
        key += f" | articles {result['articles']}"
    update_manifest(model_dir, metrics={key: {**result, "command": invocation()}})
