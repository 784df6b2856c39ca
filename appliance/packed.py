"""Clustered int8 weights packed at 3-4 bits: the model files shrink by half, the graph stays int8.

`build_tools cluster` replaces the values of each large int8 weight, channel by channel, with
at most k shared levels (k-means, k <= 16), stores every channel as a k-entry codebook plus
ceil(log2 k)-bit indices (one packed bit plane per bit) in ``weights.npz``, and marks those
tensors in ``model.onnx`` as external data whose
file does not exist. Here the indices are expanded back to the int8 tensors in memory and
handed to onnxruntime as external initializers, so inference runs the same int8 kernels as an
unpacked model: smaller on disk, not slower. Loading the ONNX file without its weights fails
(missing external file) rather than running on garbage.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from appliance.errors import ModelError

MISSING_FILE = "weights-are-packed-in-weights.npz"  # the external-data location written into model.onnx
FORMAT = "appliance-packed-weights/2"


def bits_for(clusters: int) -> int:
    return max(1, int(np.ceil(np.log2(clusters))))


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """[channels, length] indices < 2**bits -> [bits, channels, ceil(length/8)] bit planes."""
    if indices.size and int(indices.max()) >= 1 << bits:
        raise ValueError(f"indices do not fit in {bits} bits")
    return np.stack([np.packbits((indices >> b) & 1, axis=1) for b in range(bits)])


def unpack_indices(planes: np.ndarray, length: int) -> np.ndarray:
    """Inverse of pack_indices."""
    out = np.zeros((planes.shape[1], length), dtype=np.uint8)
    for b, plane in enumerate(planes):
        out |= np.unpackbits(plane, axis=1, count=length) << b
    return out


def expand(codebook: np.ndarray, planes: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """One tensor back from its codebooks and indices; ``axis`` is the tensor axis of its channels."""
    channels = shape[axis]
    length = int(np.prod(shape)) // channels
    values = np.take_along_axis(codebook, unpack_indices(planes, length).astype(np.intp), axis=1)
    if axis == 0:
        return values.reshape(shape)
    if len(shape) != 2 or axis != 1:
        raise ModelError(f"packed weights: unsupported channel axis {axis} for shape {shape}")
    return np.ascontiguousarray(values.T)


def load_packed_weights(path: Path) -> dict[str, np.ndarray]:
    """name -> int8/uint8 tensor for every tensor in a ``weights.npz`` written by build_tools cluster."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if meta.get("format") != FORMAT:
                raise ModelError(f"{path}: not a packed-weights file ({meta.get('format')!r})")
            return {t["name"]: expand(npz[f"{t['key']}.codebook"], npz[f"{t['key']}.indices"],
                                      tuple(t["shape"]), int(t["axis"]))
                    for t in meta["tensors"]}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"packed weights unreadable: {path} ({exc})") from None


def add_packed_weights(options, path: Path) -> list:
    """Register the expanded tensors with ORT session options (they replace the external data).

    Returns the OrtValues: the caller keeps them alive until the session is created."""
    import onnxruntime as ort

    tensors = load_packed_weights(path)
    names = list(tensors)
    values = [ort.OrtValue.ortvalue_from_numpy(tensors[n]) for n in names]
    options.add_external_initializers(names, values)
    return values
