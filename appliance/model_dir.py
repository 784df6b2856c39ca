"""A model directory: verified manifest, files by role, ORT sessions, fingerprint.

Nothing is loaded unless its sha256 matches the manifest, which also names the command that
rebuilds the directory, so a missing or corrupt file is an error a person can act on. Encoder,
reader, VAD and the build tools all open their models here, so every session gets the same
thread settings, packed weights and error wrapping.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


def ort_session(path: Path, threads: int, packed_weights: Path | None = None):
    """One CPU session of an ONNX file; ``packed_weights`` supplies the clustered tensors of a packed
    model. Any load failure is a ModelError naming the file (ORT raises its own pybind types)."""
    import onnxruntime as ort

    from appliance.packed import add_packed_weights

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads otherwise spin ~50 ms of CPU after every run, stealing the 2 cores from
    # the next model (the encoder's pool from the reader's): benchmarks/ort_spinning measured
    # ask p50 136 -> 113 ms and 263 -> 212 CPU-ms per answer without the spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        keep_alive = add_packed_weights(options, packed_weights) if packed_weights else []  # noqa: F841 - until loaded
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types; say which model failed
        raise ModelError(f"cannot load {path}: {exc}") from None


@dataclass(frozen=True)
class ModelDir:
    """An opened (verified) model directory."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: ModelDir | Path | str) -> ModelDir:
        """Verify every file against the manifest; a ModelDir passes through unchanged."""
        if isinstance(path, ModelDir):
            return path
        path = Path(path)
        return cls(path, load_verified_manifest(path))

    def has(self, role: str) -> bool:
        return role in self.manifest.get("roles", {})

    def file(self, role: str) -> Path:
        """The file that plays ``role`` (e.g. "onnx", "tokenizer", "calibrator")."""
        try:
            return self.path / self.manifest["roles"][role]
        except KeyError:
            raise ModelError(f"{self.path / MANIFEST} names no '{role}' file") from None

    @property
    def packed_weights(self) -> Path | None:
        """The packed-weights file of a clustered model (role "weights"), else None."""
        return self.file("weights") if self.has("weights") else None

    def onnx(self, name: str | None = None) -> Path:
        """The ONNX file to run: the "onnx" role, or another listed variant by name."""
        return self.path / name if name else self.file("onnx")

    def session(self, threads: int, onnx_name: str | None = None):
        return ort_session(self.onnx(onnx_name), threads, self.packed_weights)

    def fingerprint(self, onnx_name: str | None = None) -> str:
        """sha256 of the ONNX file, or of the ONNX and packed-weights hashes together: what an index
        records so that vectors from another encoder are never mixed with this one's."""
        files = self.manifest["files"]
        onnx_sha = files.get(self.onnx(onnx_name).name, {}).get("sha256", "")
        weights = self.packed_weights
        if weights is None:
            return onnx_sha
        return hashlib.sha256(f"{onnx_sha}:{files[weights.name]['sha256']}".encode()).hexdigest()
