"""The compression commands on a tiny randomly initialised BERT and tiny data, in seconds:
structural pruning is exact, the ONNX export of a pruned model matches PyTorch, vocabulary
pruning keeps logits identical on text whose tokens are kept, and every command runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ReaderConfig, RetrieverConfig
from tests.conftest import DATA, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # trains, exports and benchmarks tiny torch models (minutes in all)

TINY_SQUAD = DATA / "tiny-squad.json"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ONE_THREAD = ReaderConfig(threads=1)


def tiny_vocab() -> list[str]:
    """Special tokens, single characters (plain and ##), and whole words of the tiny SQuAD file."""
    from build_tools.squad import load_squad

    words, chars = set(), set()
    for ex in load_squad(TINY_SQUAD):
        for text in (ex.question, ex.context):
            for w in text.lower().replace(".", " . ").replace("?", " ? ").replace(",", " , ").split():
                words.add(w)
                chars.update(w)
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789.,?")
    extra = ["##ing", "##s", "quick", "dishwasher", "zebra", "##bra", "xylophone"]
    return SPECIAL + sorted(chars) + ["##" + c for c in sorted(chars)] + sorted(words | set(extra))


def write_tokenizer(path: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.add_special_tokens(SPECIAL)
    tok.save(str(path))


def tiny_config(vocab_size: int):
    return transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny BertForQuestionAnswering and a tiny BertModel, each saved with a tokenizer.json."""
    root = tmp_path_factory.mktemp("tiny")
    vocab = tiny_vocab()
    torch.manual_seed(0)
    out = {}
    for kind, cls in (("reader", transformers.BertForQuestionAnswering), ("retriever", transformers.BertModel)):
        d = root / kind
        model = cls(tiny_config(len(vocab)))
        model.save_pretrained(d)
        write_tokenizer(d / "tokenizer.json", vocab)
        out[kind] = d
    return out


def encode(tokenizer_path: Path, question: str, context: str):
    from appliance.windows import load_tokenizer

    enc = load_tokenizer(tokenizer_path).encode(question, context)
    as_t = lambda x: torch.tensor([x])
    return enc, {"input_ids": as_t(enc.ids), "token_type_ids": as_t(enc.type_ids),
                 "attention_mask": torch.ones(1, len(enc.ids), dtype=torch.long)}


def logits(model, feeds) -> np.ndarray:
    with torch.no_grad():
        out = model(**feeds)
    return np.concatenate([out.start_logits.numpy(), out.end_logits.numpy()])


def test_pruning_nothing_is_the_identity(tiny_dirs):
    from build_tools.compress.common import load_model
    from build_tools.compress.prune import prune_model

    model = load_model(tiny_dirs["reader"])
    _, feeds = encode(tiny_dirs["reader"] / "tokenizer.json", "How long?", "The Quick program takes 30 minutes.")
    before = logits(model, feeds)
    scores = [torch.arange(4.0)] * 2, [torch.arange(64.0)] * 2
    prune_model(model, *scores, heads_keep=0, ffn_keep=1.0)
    assert np.array_equal(before, logits(model, feeds))
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 32


def test_pruning_equals_zero_gates(tiny_dirs):
    """Cutting heads/neurons out of the matrices = multiplying their outputs by 0."""
    from build_tools.compress.common import load_model
    from build_tools.compress.prune import Gates, prune_model

    model = load_model(tiny_dirs["reader"])
    _, feeds = encode(tiny_dirs["reader"] / "tokenizer.json", "Which program?", "The Eco program uses the least energy.")
    head_scores = [torch.tensor([3.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])]
    neuron_scores = [torch.arange(64.0), torch.arange(64.0).flip(0)]
    gates = Gates(model)
    with torch.no_grad():
        for g, s in zip(gates.heads, head_scores):
            g.copy_((s >= s.sort(descending=True).values[1]).float())
        for g, s in zip(gates.neurons, neuron_scores):
            g.copy_((s >= s.sort(descending=True).values[31]).float())
    gated = logits(model, feeds)
    gates.remove()
    prune_model(model, head_scores, neuron_scores, heads_keep=2, ffn_keep=0.5)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 32
    np.testing.assert_allclose(logits(model, feeds), gated, atol=1e-5)


def test_prune_reader_export_matches_pytorch(tiny_dirs, tmp_path):
    from appliance.model_dir import ort_session as make_session
    from build_tools.compress.common import load_model

    pruned, onnx_dir = tmp_path / "pruned", tmp_path / "onnx"
    r = run_cli("build_tools", "prune-reader", "--model", str(tiny_dirs["reader"]), "--out", str(pruned),
                "--heads-keep", "2", "--ffn-keep", "0.5", "--importance-data", str(TINY_SQUAD),
                "--importance-samples", "8", "--importance-batch-size", "4",
                "--recover-steps", "2", "--data", str(TINY_SQUAD), "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    report = json.loads((pruned / "pruning.json").read_text())
    assert report["params_after"] < report["params_before"]
    assert report["recovery"]["steps"] == 2
    assert [len(h) for h in report["kept"]["heads"]] == [2, 2]
    model = load_model(pruned)
    assert [l.attention.self.query.out_features for l in model.bert.encoder.layer] == [16, 16]
    r = run_cli("build_tools", "compress-export", "--model", str(pruned), "--out", str(onnx_dir),
                "--parity-samples", "4", "--parity-data", str(TINY_SQUAD))
    assert r.returncode == 0, r.stderr
    checks = json.loads((onnx_dir / "manifest.json").read_text())["parity_vs_pytorch"]
    assert checks["windows"] == 4 and checks["max_abs_diff"] < 1e-4 and checks["argmax_agreement"] == 1.0
    session = make_session(onnx_dir / "model.onnx", 1)
    _, feeds = encode(pruned / "tokenizer.json", "What is the usual dose?", "The usual starting dose is 500 mg.")
    start, end = session.run(["start_logits", "end_logits"], {k: v.numpy() for k, v in feeds.items()})
    np.testing.assert_allclose(np.concatenate([start, end]), logits(model, feeds), atol=1e-4)


def test_vocab_pruning_keeps_logits_on_kept_text(tiny_dirs, tmp_path):
    from build_tools.compress.common import load_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("The Quick program takes 30 minutes. How long does the Quick program take?")
    out = tmp_path / "vocab"
    r = run_cli("build_tools", "prune-vocab", "--model", str(tiny_dirs["reader"]), "--out", str(out),
                "--corpus", str(corpus), "--held-out", str(TINY_SQUAD), "--min-count", "1")
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "vocab-pruning.json").read_text())
    assert record["vocab_after"] < record["vocab_before"]
    assert 0 < record["held_out"]["changed_token_rate"] < 1
    question, context = "How long does the Quick program take?", "The Quick program takes 30 minutes."
    old_enc, old_feeds = encode(tiny_dirs["reader"] / "tokenizer.json", question, context)
    new_enc, new_feeds = encode(out / "tokenizer.json", question, context)
    assert old_enc.tokens == new_enc.tokens and old_enc.ids != new_enc.ids  # same pieces, renumbered
    np.testing.assert_allclose(logits(load_model(out), new_feeds), logits(load_model(tiny_dirs["reader"]), old_feeds),
                               atol=1e-6)
    dropped_word, _ = encode(out / "tokenizer.json", "xylophone", "zebra")
    assert "[UNK]" not in dropped_word.tokens  # unseen words fall back to characters, not [UNK]


def test_distill_reader_quantize_fuse_and_report(tiny_dirs, tmp_path):
    """distill-reader -> compress-export -> quantize (dynamic, static) and fuse -> report."""
    from appliance.reader import Reader
    from build_tools.torch_reader import TorchReader

    student = tmp_path / "student"
    r = run_cli("build_tools", "distill-reader", "--teacher", str(tiny_dirs["reader"]), "--layers", "1",
                "--out", str(student), "--data", str(TINY_SQUAD), "--max-steps", "3", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((student / "final" / "layout.json").read_text())["heads"] == [4]
    fp32, dyn, static, fused = (tmp_path / n for n in ("fp32", "dyn", "static", "fused"))
    steps = [("compress-export", "--model", str(student / "final"), "--out", str(fp32), "--parity-samples", "0"),
             ("quantize", "--model", str(fp32), "--out", str(dyn)),
             ("quantize", "--model", str(fp32), "--out", str(static), "--method", "static",
              "--calibration-data", str(TINY_SQUAD), "--calibration-samples", "4"),
             ("fuse", "--model", str(fp32), "--out", str(fused), "--num-heads", "4", "--hidden-size", "32")]
    for step in steps:
        r = run_cli("build_tools", *step)
        assert r.returncode == 0, (step, r.stderr)
    pair = [("How long does the Quick program take?", "The Quick program takes 30 minutes.")]
    context = pair[0][1]
    reference = TorchReader(student / "final", ONE_THREAD).predict(pair)[0]  # the student in PyTorch
    exported = Reader(fp32, ONE_THREAD).predict(pair)[0]
    assert (exported.start, exported.end, exported.text) == (reference.start, reference.end, reference.text)
    assert exported.confidence == pytest.approx(reference.confidence, abs=1e-4)
    for d in (fp32, dyn, static, fused):
        found = Reader(d, ONE_THREAD).predict(pair)[0]
        assert found.text and context[found.start:found.end] == found.text  # a real span of the passage
        assert 0 < found.confidence <= 1 and 0 <= found.no_answer <= 1
    spec = tmp_path / "variants.json"
    spec.write_text(json.dumps({"variants": [
        {"name": "student-pt", "kind": "reader", "stage": "student fp32 (PyTorch)", "torch": str(student / "final")},
        {"name": "student-int8", "kind": "reader", "stage": "int8", "model": str(dyn)},
        {"name": "student-fused", "kind": "reader", "stage": "fused int8", "model": str(fused)},
        {"name": "missing", "kind": "reader", "stage": "not built", "model": str(tmp_path / "nope")}]}))
    bench = tmp_path / "bench.json"
    r = run_cli("benchmarks.compression", "--variants", str(spec), "--data", str(TINY_SQUAD), "--length", "24",
                "--repeats", "3", "--warmup", "1", "--session-options", "student-int8", "--out", str(bench))
    assert r.returncode == 0, r.stderr
    latency = json.loads(bench.read_text())["latency"]
    assert latency["student-pt@1"]["speedup_vs_torch_fp32"] == 1.0 and "student-int8@2" in latency
    png, md = tmp_path / "pareto.png", tmp_path / "report.md"
    r = run_cli("build_tools", "report", "--variants", str(spec), "--data", str(TINY_SQUAD), "--limit", "0",
                "--evaluate", "--bench", str(bench), "--cache", str(tmp_path / "eval"), "--out", str(md),
                "--png", str(png))
    assert r.returncode == 0, r.stderr
    table = md.read_text()
    assert "| student-int8 |" in table and "F1" in table and "not built" in table
    assert png.stat().st_size > 1000


def test_prune_and_distill_retriever(tiny_dirs, tmp_path):
    from build_tools.compress.common import load_model

    pruned = tmp_path / "pruned"
    r = run_cli("build_tools", "prune-retriever", "--model", str(tiny_dirs["retriever"]), "--out", str(pruned),
                "--heads-keep", "3", "--ffn-keep", "0.75", "--importance-data", str(TINY_SQUAD),
                "--importance-samples", "4", "--importance-batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert [l.intermediate.dense.out_features for l in load_model(pruned, "retriever").encoder.layer] == [48, 48]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "kb.md").write_text("Metformin is taken with meals.\n\nThe Eco program takes 3 hours.")
    student = tmp_path / "student"
    r = run_cli("build_tools", "distill-retriever", "--teacher", str(tiny_dirs["retriever"]), "--layers", "0",
                "--out", str(student), "--texts", str(TINY_SQUAD), str(corpus), "--max-steps", "2", "--batch-size", "4",
                "--eval-data", str(TINY_SQUAD))
    assert r.returncode == 0, r.stderr
    result = json.loads((student / "final" / "distillation.json").read_text())
    assert result["steps"] == 2 and "cosine_to_teacher" in result
    assert 0 < result["cosine_to_teacher"]["mean"] <= 1.0001
    # a longer run resumes from the job's checkpoint (model, optimiser, schedule, step) instead of restarting
    r = run_cli("build_tools", "distill-retriever", "--teacher", str(tiny_dirs["retriever"]), "--layers", "0",
                "--out", str(student), "--texts", str(TINY_SQUAD), str(corpus), "--max-steps", "3", "--batch-size", "4",
                "--eval-data", str(TINY_SQUAD))
    assert r.returncode == 0, r.stderr
    assert '{"resumed_at_step": 2}' in r.stdout
    assert json.loads((student / "final" / "distillation.json").read_text())["steps"] == 3


def test_one_exporter_writes_fp32_and_int8_dirs_with_parity(tiny_dirs, tmp_path):
    """export_model (behind export-reader, export-retriever, compress-export): both model dirs load in
    the runtime, and the shipped manifest records each file's parity with PyTorch."""
    from appliance.model_dir import load_verified_manifest
    from appliance.encoder import SentenceEncoder
    from build_tools.compress.common import load_model
    from build_tools.onnx_export import export_model, text_feeds

    model = load_model(tiny_dirs["retriever"], "retriever")
    tokenizer = tiny_dirs["retriever"] / "tokenizer.json"
    feeds = text_feeds(tokenizer, ["", "the quick program takes 30 minutes", "xylophone zebra"], 64)
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    manifest = export_model(model, "retriever", fp32, tokenizer, rebuild="test", extra={"source": "tiny"},
                            int8_out=int8, parity_feeds=feeds)
    assert load_verified_manifest(fp32)["roles"]["onnx"] == "model.onnx"
    assert manifest == load_verified_manifest(int8) and manifest["roles"]["onnx"] == "model.int8.onnx"
    assert manifest["dim"] == 32 and manifest["source"] == "tiny" and "quantization" in manifest
    checks = manifest["parity_vs_pytorch"]
    assert checks["fp32"]["windows"] == 3 and checks["fp32"]["max_abs_diff"] < 1e-4
    assert checks["fp32"]["min_cosine"] > 0.9999 and 0 < checks["int8"]["min_cosine"] <= checks["fp32"]["min_cosine"]
    assert checks["int8"]["max_abs_diff"] > checks["fp32"]["max_abs_diff"]  # int8 really is another model
    vectors = SentenceEncoder(int8, RetrieverConfig(max_length=64)).encode(["the quick program"])
    assert vectors.shape == (1, 32) and abs(float(np.linalg.norm(vectors)) - 1) < 1e-5


def test_an_export_elsewhere_keeps_its_fp32_copy_beside_it_not_over_the_shipped_ones():
    from build_tools.onnx_export import fp32_dir

    assert fp32_dir(None, Path("models/reader"), "reader") == Path("build/reader-fp32")
    assert fp32_dir(None, Path("build/ssnap-int8"), "reader") == Path("build/ssnap-int8-fp32")
    assert fp32_dir(None, Path("build/cand"), "retriever") == Path("build/cand-fp32")
    assert fp32_dir("elsewhere", Path("build/ssnap-int8"), "reader") == Path("elsewhere")
