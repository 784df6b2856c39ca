"""Model directories and their manifests: nothing is loaded unless its sha256 matches.

A manifest lists every file with its sha256 and size, plus the command that rebuilds the
directory, so a missing or corrupt file produces an error a person can act on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from appliance.errors import ModelError

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_verified_manifest(model_dir: Path) -> dict:
    """Return the manifest of ``model_dir`` after checking every file it lists."""
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"model manifest missing: {manifest_path} (rebuild the model with the build_tools "
                         f"command in README, or restore models/ from the release)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelError(f"model manifest unreadable: {manifest_path} ({exc})") from None
    _check_schema(manifest, manifest_path)
    rebuild = manifest.get("rebuild", "see README")
    for name, meta in files.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"model file missing: {path}; rebuild it with: {rebuild}")
        if path.stat().st_size != meta["bytes"]:
            raise ModelError(f"model file truncated or changed: {path} ({path.stat().st_size} bytes, "
                             f"manifest says {meta['bytes']}); rebuild it with: {rebuild}")
        if sha256_file(path) != meta["sha256"]:
            raise ModelError(f"model file corrupt (sha256 mismatch): {path}; rebuild it with: {rebuild}")
    return manifest


def _check_schema(manifest, manifest_path: Path) -> None:
    """files: {relative name: {"bytes": int, "sha256": hex str}}; roles: {role: listed file name}."""
    problem = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        problem = "'files' must be an object mapping file names to their size and sha256"
    else:
        for name, meta in files.items():
            if (not isinstance(meta, dict) or type(meta.get("bytes")) is not int or meta["bytes"] < 0
                    or not isinstance(meta.get("sha256"), str)):
                problem = f"entry {name!r} of 'files' needs an integer 'bytes' and a string 'sha256'"
            elif Path(name).is_absolute() or ".." in Path(name).parts:
                problem = f"file name {name!r} leaves the model directory"
            if problem:
                break
    roles = manifest.get("roles", {}) if isinstance(manifest, dict) else None
    if problem is None and (not isinstance(roles, dict) or not all(isinstance(v, str) for v in roles.values())):
        problem = "'roles' must be an object mapping roles to file names"
    if problem:
        raise ModelError(f"model manifest invalid: {manifest_path}: {problem}")


def model_file(model_dir: Path, manifest: dict, role: str) -> Path:
    """The file that plays ``role`` (e.g. "onnx", "tokenizer") in a verified model directory."""
    try:
        return model_dir / manifest["roles"][role]
    except KeyError:
        raise ModelError(f"{model_dir / MANIFEST} names no '{role}' file") from None
