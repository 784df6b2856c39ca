"""A Piper VITS voice cut in three so that its decoder runs in bounded windows.

The decoder (latent frames -> waveform, HiFi-GAN) holds ~30 MB of tensors per second of audio, most
of them at its last upsampling stage, so a 4.5 s sentence took RSS up by 130-160 MB while it was
spoken. Here the voice's ONNX graph is cut where the decoder starts and where its last upsampling
stage starts: the encoder runs on the whole sentence (prosody, durations and noise as before), the
decoder on windows of latent frames and the last stage on pieces of each window, each with enough
context on both sides to cover its receptive field, which is worked out from the graph (13 and 1
frames for the medium voices). The joined pieces equal the whole model's waveform to float rounding.

The cut reads the protobuf wire format itself (the ``onnx`` package is build-side only): it only
needs the nodes' names, inputs, outputs and convolution attributes, and the initializers' names;
weights are copied through as bytes, from the voice's file to the parts' files.
"""
from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

POST_WINDOW_FRAMES = 32  # latent frames' worth per run of the decoder's last upsampling stage
FLOAT = 1  # TensorProto.FLOAT
_POINTWISE = {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid", "Unsqueeze", "Squeeze",
              "Identity", "Cast", "Constant", "Clip"}


class CutError(ValueError):
    """The graph is not a VITS voice with a convolutional decoder that reads only the latent frames."""


def session(model: str, arena: bool = False):
    """An ONNX Runtime session without the CPU memory arena by default: with it, every new sentence
    length left its buffers behind (RSS 210 -> 362 MB over 25 sentences of a long Wyoming text).
    ``arena``: with the arena, emptied after every run (``shrink``); for the encoder this peaks at a
    third of what malloc does (19 vs 55-58 MB on a 280-character sentence: glibc fragments on its
    many mid-sized tensors). Idle worker threads sleep instead of spinning: the windowed decoder
    makes many short runs, and spinning cost as much CPU as the work (75 s of speech: 21.9 s wall
    with, 10.3 s without, on 2 cores)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


@functools.cache
def shrink():
    """Run options that hand the arena's free memory back at the end of a run."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def load_windowed(voice: Path, window_frames: int) -> WindowedSession:
    """The voice cut in three and loaded (raises ``CutError`` for a graph it cannot cut)."""
    with tempfile.TemporaryDirectory(prefix="appliance-piper-") as tmp:
        cut = write_parts(voice, Path(tmp))
        return WindowedSession(session(str(Path(tmp) / "encoder.onnx"), arena=True),
                               session(str(Path(tmp) / "decoder.onnx")), session(str(Path(tmp) / "post.onnx")),
                               cut, window_frames)


# --- protobuf wire format -------------------------------------------------------------------------

def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, wire type, value, raw bytes of the whole field) of one message; value is an int
    for varints, else a memoryview."""
    i, end = 0, len(buf)
    while i < end:
        start = i
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise CutError(f"unexpected protobuf wire type {wire}")
        yield field, wire, value, buf[start:i]


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload) -> list:
    """A length-delimited field as chunks (the payload is not copied)."""
    return [_encode_varint(number << 3 | 2) + _encode_varint(len(payload)), payload]


def _float_value(name: str) -> bytes:
    """A ValueInfoProto: ``name``, a float tensor (batch, channels, time) of symbolic sizes."""
    def join(chunks):
        return b"".join(bytes(c) for c in chunks)

    shape = join(c for dim in (b"batch", b"channels", b"time") for c in _field(1, join(_field(2, dim))))
    tensor = _encode_varint(1 << 3) + _encode_varint(FLOAT) + join(_field(2, shape))
    return join(_field(1, name.encode()) + _field(2, join(_field(1, tensor))))


class _Node:
    def __init__(self, raw):
        self.raw, self.inputs, self.outputs, self.name, self.op, self.ints = raw, [], [], "", "", {}
        for field, _, value, _ in _fields(raw):
            if field in (1, 2):
                (self.inputs if field == 1 else self.outputs).append(bytes(value).decode())
            elif field == 3:
                self.name = bytes(value).decode()
            elif field == 4:
                self.op = bytes(value).decode()
            elif field == 5:
                self._attribute(value)

    def _attribute(self, raw) -> None:
        name, ints = "", []
        for field, wire, value, _ in _fields(raw):
            if field == 1:
                name = bytes(value).decode()
            elif field == 8 and wire == 0:
                ints.append(value)
            elif field == 8:  # packed
                i = 0
                while i < len(value):
                    v, i = _varint(value, i)
                    ints.append(v)
        self.ints[name] = [v - (1 << 64) if v >= 1 << 63 else v for v in ints]


def write_parts(voice: Path, out: Path) -> dict:
    """Write ``encoder.onnx`` (phoneme ids -> latent frames), ``decoder.onnx`` (latent frames -> the
    input of the last upsampling layer) and ``post.onnx`` (-> audio) to ``out``; return the tensors'
    names and each decoder part's receptive field and rate. The file is read once (63 MB for the
    medium voices, freed before the parts are loaded) and its weights written out as slices of it."""
    return _write_parts(memoryview(voice.read_bytes()), out)


def _write_parts(model, out: Path) -> dict:
    top = list(_fields(model))
    graphs = [value for field, _, value, _ in top if field == 7]
    if len(graphs) != 1:
        raise CutError("no graph in the voice model")
    nodes, initializers, inputs, outputs = [], {}, [], []
    for field, _, value, raw in _fields(graphs[0]):
        if field == 1:
            nodes.append(_Node(value))
        elif field == 5:
            name = next((bytes(v).decode() for f, _, v, _ in _fields(value) if f == 8), "")
            initializers[name] = raw
        elif field == 11:
            inputs.append((next(bytes(v).decode() for f, _, v, _ in _fields(value) if f == 1), raw))
        elif field == 12:
            outputs.append((next(bytes(v).decode() for f, _, v, _ in _fields(value) if f == 1), raw))
    decoder = [n for n in nodes if n.name.startswith("/dec/")]
    ups = [n for n in decoder if n.op == "ConvTranspose"]
    if not decoder or len(ups) < 2 or len(outputs) != 1:
        raise CutError("no HiFi-GAN decoder (/dec/ nodes, two or more ConvTranspose) in the voice model")
    latent, mid, output = decoder[0].inputs[0], ups[-1].inputs[0], outputs[0][0]
    producer = {name: i for i, node in enumerate(nodes) for name in node.outputs}
    graph_inputs = {name for name, _ in inputs} - set(initializers)

    def needed(target: str, stop: str | None) -> tuple[list[_Node], set[str]]:
        """Nodes (in graph order) and non-node tensors that ``target`` is computed from."""
        chosen, leaves, todo = set(), set(), [target]
        while todo:
            name = todo.pop()
            if name == stop or name not in producer:
                leaves.add(name)
            elif producer[name] not in chosen:
                chosen.add(producer[name])
                todo.extend(x for x in nodes[producer[name]].inputs if x)
        return [nodes[i] for i in sorted(chosen)], leaves

    header = [raw for field, _, _, raw in top if field != 7]
    cut: dict = {"latent": latent, "mid": mid}
    for part, (first, last) in {"decoder": (latent, mid), "post": (mid, output)}.items():
        chosen, leaves = needed(last, first)
        reach = receptive_field(chosen, first)
        if leaves & (graph_inputs | {latent, mid}) != {first} or reach is None:
            raise CutError(f"the voice's {part} reads more than its input, or has an operator of unknown reach")
        cut[f"{part}_reach"], cut[f"{part}_rate"] = reach
        out_value = outputs[0][1] if last == output else _field(12, _float_value(last))
        graph = [c for n in chosen for c in _field(1, n.raw)] + _field(2, part.encode()) \
            + [initializers[name] for name in sorted(leaves) if name in initializers] \
            + _field(11, _float_value(first)) + (out_value if isinstance(out_value, list) else [out_value])
        _write_model(out / f"{part}.onnx", header, graph)
    chosen, leaves = needed(latent, None)
    graph = [c for n in chosen for c in _field(1, n.raw)] + _field(2, b"encoder") \
        + [initializers[name] for name in sorted(leaves) if name in initializers] \
        + [raw for _, raw in inputs] + _field(12, _float_value(latent))
    _write_model(out / "encoder.onnx", header, graph)
    (out / "cut.json").write_text(json.dumps(cut), encoding="utf-8")
    return cut


def _write_model(path: Path, header: list, graph: list) -> None:
    with open(path, "wb") as f:
        for raw in header:
            f.write(raw)
        f.write(_encode_varint(7 << 3 | 2) + _encode_varint(sum(len(c) for c in graph)))
        for chunk in graph:
            f.write(chunk)


def receptive_field(nodes: list, first: str) -> tuple[float, int] | None:
    """(How many samples of ``first`` on each side of an output sample the nodes read, an upper
    bound along the longest path; output samples per sample of ``first``), or None for an operator
    whose reach is not known here. A Conv reads ``dilation * (kernel - 1) / 2`` samples each way at
    its rate; a ConvTranspose with stride s reads ceil(max(pad, kernel - 1 - pad) / s) + 1 input
    samples and multiplies the rate by s."""
    reach, rate = {first: 0.0}, {first: 1}
    for node in nodes:
        known = [x for x in node.inputs if x in reach]
        here, r = max((reach[x] for x in known), default=0.0), max((rate[x] for x in known), default=1)
        kernel = (node.ints.get("kernel_shape") or [1])[-1]
        if node.op == "Conv":
            if (node.ints.get("strides") or [1])[-1] != 1:
                return None
            here += (node.ints.get("dilations") or [1])[-1] * (kernel - 1) / 2 / r
        elif node.op == "ConvTranspose":
            stride, pad = (node.ints.get("strides") or [1])[-1], max(node.ints.get("pads") or [0])
            here += (-(-max(pad, kernel - 1 - pad) // stride) + 1) / r
            r *= stride
        elif node.op not in _POINTWISE:
            return None
        for name in node.outputs:
            reach[name], rate[name] = here, r
    return max(reach.values()), max(rate.values())


class WindowedSession:
    """Stands in for the voice's ``InferenceSession``: ``run`` gives the whole model's output, with
    the decoder run window by window and its last stage piece by piece within each window;
    ``stream`` gives the same waveform window by window."""

    def __init__(self, encoder, decoder, post, cut: dict, window_frames: int):
        self.encoder, self.decoder, self.post = encoder, decoder, post
        self.latent, self.mid = cut["latent"], cut["mid"]
        self.rate = cut["decoder_rate"]  # samples of the last stage's input per latent frame
        self.context = int(np.ceil(cut["decoder_reach"]))  # latent frames
        self.post_context = int(np.ceil(cut["post_reach"] / self.rate))  # latent frames' worth
        self.window = window_frames

    def run(self, output_names, feeds, run_options=None):
        """The whole model's output, as piper's ``PiperVoice`` calls it."""
        pieces = list(self.stream(feeds))
        return [np.concatenate(pieces).reshape(1, 1, -1) if pieces else np.zeros((1, 1, 0), np.float32)]

    def stream(self, feeds) -> Iterator[np.ndarray]:
        """The waveform one decoder window at a time, each as soon as it is made."""
        frames = self.encoder.run([self.latent], feeds, shrink())[0]  # (1, channels, T)
        total = frames.shape[2]
        for start in range(0, total, self.window):
            end = min(total, start + self.window)
            # the last stage's input for [start, end) plus its own context, from latent frames with theirs
            lo, hi = max(0, start - self.post_context), min(total, end + self.post_context)
            a, b = max(0, lo - self.context), min(total, hi + self.context)
            mid = self.decoder.run(None, {self.latent: np.ascontiguousarray(frames[:, :, a:b])})[0]
            mid = mid[:, :, (lo - a) * self.rate:(hi - a) * self.rate]
            pieces = []
            for first in range(start, end, POST_WINDOW_FRAMES):
                last = min(end, first + POST_WINDOW_FRAMES)
                p, q = max(lo, first - self.post_context), min(hi, last + self.post_context)
                audio = self.post.run(None, {self.mid: np.ascontiguousarray(
                    mid[:, :, (p - lo) * self.rate:(q - lo) * self.rate])})[0].reshape(-1)
                hop = len(audio) // (q - p)  # samples per latent frame
                pieces.append(audio[(first - p) * hop:(last - p) * hop].copy())
            del mid
            yield np.concatenate(pieces)
