"""train-retriever as a job that spans sessions, on a tiny BERT and tiny data: a run stopped by its
time budget and resumed ends with the same weights as one that never stopped; batches never
teach a false negative; the result exports through export-retriever and embeds exactly as the
runtime encoder does."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import DATA, final_weights, run_cli, run_training_job

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.test_compression import tiny_dirs  # noqa: E402,F401  (fixture)

SQUAD = DATA / "tiny-squad-pool.json"  # articles of several paragraphs: BM25 hard negatives exist
MEDQUAD = DATA / "tiny-medquad.json"


def train(base, out, *extra: str) -> list[dict]:
    return run_training_job("train-retriever", "--base", str(base), "--squad", str(SQUAD),
                            str(DATA / "tiny-squad.json"), "--medquad", str(MEDQUAD), "--out", str(out),
                            "--batch-size", "3", "--epochs", "2", "--bf16", "off", "--threads", "1",
                            "--warm-start", "none", *extra)


def test_a_stopped_job_resumes_where_it_stopped_and_ends_as_if_never_stopped(tiny_dirs, tmp_path):
    base = tiny_dirs["retriever"]
    straight = train(base, tmp_path / "straight")
    total = straight[0]["total_steps"]
    assert straight[0]["hard_negatives"] >= 5 and straight[0]["sources"] == {"squad": 10, "medquad": 5}
    assert straight[-1]["saved"] and straight[-1]["steps"] == total
    assert any("pairs_per_s" in line for line in straight)  # the progress line counts pairs

    first = train(base, tmp_path / "resumed", "--time-budget-min", "0.00001")
    assert any(line.get("stopped") == "time budget" for line in first)
    assert not (tmp_path / "resumed" / "final").exists()
    second = train(base, tmp_path / "resumed")
    assert second[0]["pairs_cached"]  # BM25 negatives are not recomputed on resume
    resumed_at = next(line["resumed_at_step"] for line in second if "resumed_at_step" in line)
    assert 0 < resumed_at < total

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    moved = 0
    base_state = transformers.BertModel.from_pretrained(base).state_dict()
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
        moved += not torch.allclose(a[name], base_state[name])
    assert moved > 0  # it trained
    record = json.loads((tmp_path / "resumed" / "final" / "training.json").read_text())
    assert record["steps"] == total and len(record["sessions"]) == 2
    assert record["pairs_trained"] == json.loads((tmp_path / "straight" / "final" / "training.json").read_text())[
        "pairs_trained"] == 2 * 15


def test_a_job_whose_checkpoint_is_gone_goes_on_from_the_step_the_shipped_retriever_reached(tiny_dirs, tmp_path):
    base = tiny_dirs["retriever"]
    straight = train(base, tmp_path / "straight")
    total = straight[0]["total_steps"]
    train(base, tmp_path / "first", "--time-budget-min", "0.00001")
    snapshot = tmp_path / "snapshot"
    result = run_cli("build_tools", "train-retriever", "--base", str(base), "--out", str(tmp_path / "first"),
                     "--export-snapshot", str(snapshot))
    assert result.returncode == 0, result.stderr[-2000:]
    model = transformers.BertModel.from_pretrained(snapshot)
    with torch.no_grad():  # a tiny model one step from its init has equal tensors, which the export would merge
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(snapshot)
    shipped = tmp_path / "shipped"
    result = run_cli("build_tools", "export-retriever", "--base", str(snapshot), "--out", str(shipped),
                     "--fp32-out", str(tmp_path / "fp32"), "--parity-samples", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    reached = json.loads((shipped / "manifest.json").read_text())["source"]["fine_tuned"]
    assert 0 < reached["steps"] < total

    lines = train(base, tmp_path / "job", "--warm-start", str(shipped))
    assert next(line["continues_at_step"] for line in lines if "continues_at_step" in line) == reached["steps"]
    assert any(str(line.get("warm_start", "")).endswith("model.int8.onnx") for line in lines)
    record = json.loads((tmp_path / "job" / "final" / "training.json").read_text())
    assert record["steps"] == total and len(record["sessions"]) == len(reached["sessions"]) + 1
    assert record["pairs_trained"] == json.loads((tmp_path / "straight" / "final" / "training.json").read_text())[
        "pairs_trained"]

    # a shipped model we did not train (the stock one: no training record) is no warm start
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "model.int8.onnx").write_bytes((shipped / "model.int8.onnx").read_bytes())
    (stock / "manifest.json").write_text(json.dumps({"source": {"model": "stock"}}))
    lines = train(base, tmp_path / "fresh", "--warm-start", str(stock), "--max-steps", "1")
    assert any(line.get("warm_start") == str(base) for line in lines)
    assert not any("continues_at_step" in line for line in lines)

    # nor is one averaged with the stock weights (export-retriever --blend-stock): not a point of the schedule
    (stock / "manifest.json").write_text(json.dumps({"source": {"fine_tuned": {**reached, "blend_stock": 0.5}}}))
    lines = train(base, tmp_path / "blended", "--warm-start", str(stock), "--max-steps", "1")
    assert any(line.get("warm_start") == str(base) for line in lines)
    assert not any("continues_at_step" in line for line in lines)


def test_blending_moves_every_weight_part_of_the_way_back_to_the_stock_model():
    from build_tools.export_retriever import blend_with_stock
    from build_tools.paths import minilm_dir

    stock = transformers.BertModel.from_pretrained(minilm_dir())
    tuned = transformers.BertModel.from_pretrained(minilm_dir())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    blend_with_stock(tuned, 0.25)
    for (name, a), (_, b) in zip(tuned.state_dict().items(), stock.state_dict().items()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b + 0.75, msg=name)


def test_a_share_of_squad_paragraphs_carry_their_articles_title_as_the_box_indexes_passages():
    from build_tools.squad import load_squad
    from build_tools.train_retriever import squad_pairs

    plain = squad_pairs([SQUAD], negatives=True, title_share=0.0)
    titled = squad_pairs([SQUAD], negatives=True, title_share=0.5)
    everything = squad_pairs([SQUAD], negatives=True, title_share=1.0)
    titles = {ex.context: ex.title.replace("_", " ") for ex in load_squad(SQUAD)}
    assert all(p in titles for _, p, _ in plain)
    assert all(p == f"{titles[q]}. {q}" for (_, p, _), (_, q, _) in zip(everything, plain))
    shown = [p != q for (_, p, _), (_, q, _) in zip(titled, plain)]
    assert any(shown) and not all(shown)
    # a paragraph reads the same as a positive and as another question's hard negative
    as_positive = {q: p for (_, p, _), (_, q, _) in zip(titled, plain)}
    for (_, _, n), (_, _, m) in zip(titled, plain):
        if m is not None and m in as_positive:
            assert n == as_positive[m]
    assert squad_pairs([SQUAD], True, 0.5) == titled  # the same every run


def test_batches_hold_no_passage_or_question_twice():
    from build_tools.train_retriever import Pairs, epoch_batches, pair_keys

    # 12 questions over 3 paragraphs; each question's hard negative is the next paragraph
    pairs = Pairs([f"q{i % 10}" for i in range(12)], ["a", "b", "c"], [i % 3 for i in range(12)],
                  [(i + 1) % 3 for i in range(12)], [5] * 12, {"squad": 12})
    batches = epoch_batches(pairs, 4, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for batch in batches:
        keys = [pair_keys(pairs, i) for i in batch]
        assert all(not (keys[x] & keys[y]) for x in range(len(batch)) for y in range(x + 1, len(batch)))
    assert epoch_batches(pairs, 4, seed=1) == batches


def test_the_trained_model_exports_and_embeds_as_the_runtime_encoder(tiny_dirs, tmp_path):
    from appliance.config import RetrieverConfig
    from appliance.encoder import SentenceEncoder
    from appliance.windows import load_tokenizer
    from build_tools.train_retriever import embed

    lines = train(tiny_dirs["retriever"], tmp_path / "job", "--epochs", "1")
    final = tmp_path / "job" / "final"
    assert lines[-1]["saved"] == str(final)
    result = run_cli("build_tools", "export-retriever", "--base", str(final), "--out", str(tmp_path / "int8"),
                     "--fp32-out", str(tmp_path / "fp32"), "--parity-samples", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["source"]["fine_tuned"]["pairs_per_epoch"] == 15
    assert manifest["parity_vs_pytorch"]["int8"]["min_cosine"] > 0.9

    texts = ["how long does the quick program take", "The Quick program takes 30 minutes.", "a"]
    encoder = SentenceEncoder(tmp_path / "fp32", RetrieverConfig(threads=1))
    model = transformers.BertModel.from_pretrained(final).eval()
    with torch.no_grad():
        trained = embed(model, load_tokenizer(final / "tokenizer.json"), texts, 256, "cpu").numpy()
    np.testing.assert_allclose(encoder.encode(texts), trained, atol=1e-4)


def test_sigterm_ends_the_job_with_a_checkpoint(tiny_dirs, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-m", "build_tools", "train-retriever", "--base",
                             str(tiny_dirs["retriever"]), "--squad", str(SQUAD), "--medquad", str(MEDQUAD),
                             "--out", str(out), "--batch-size", "1", "--epochs", "500", "--bf16", "off",
                             "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # the loop starts right after the warm-start line
        if "warm_start" in line:
            break
    proc.terminate()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert '"stopped": "asked to stop' in rest
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] >= 0 and state["record"]["sessions"][0]["started_step"] == 0
    assert not (out / "final").exists()


def test_the_training_queue_runs_the_first_unfinished_job_then_the_next(tiny_dirs, tmp_path):
    import os
    import shutil
    import subprocess
    import time

    from tests.conftest import ROOT

    root = tmp_path / "train"
    shutil.copytree(tiny_dirs["reader"], root / "reader" / "final")  # the reader's job has finished
    tiny_reader_data = f"--base {tiny_dirs['reader']} --data {DATA / 'tiny-squad.json'} --bf16 off --threads 1"
    env = {**os.environ, "APPLIANCE_TRAIN_DIR": str(root), "QUEUE_POLL_S": "1", "TRAIN_SETUP": "0",
           "STUDENT_ARGS": f"{tiny_reader_data} --layers 1 --batch-size 2"}
    started = subprocess.run([str(ROOT / "scripts" / "train.sh")], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    assert "next job: student" in started.stdout
    deadline = time.time() + 300
    while "every job has finished" not in (root / "queue.log").read_text() and time.time() < deadline:
        time.sleep(1)
    log = (root / "queue.log").read_text()
    assert log.index("started student") < log.index("student finished") < log.index("every job has finished")
    student = json.loads((root / "student" / "final" / "training.json").read_text())
    assert student["teacher"] == str((root / "reader" / "final").resolve())  # distilled from the reader job's model
    assert not any((root / job).exists()
                   for job in ("reader-shared", "reader-headings", "reader-domains", "retriever", "retriever-medquad"))
    again = subprocess.run([str(ROOT / "scripts" / "train.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert "every job has finished" in again.stdout

    headed = run_job_by_name(env, root, "reader-headings", *tiny_reader_data.split(), "--batch-size", "4",
                             "--max-steps", "2")
    assert headed["heading_share"] == 0.5
    assert headed["warm_start"] == str(root / "reader" / "final" / "model.safetensors")


def run_job_by_name(env: dict, root, job: str, *args: str) -> dict:
    """`scripts/train.sh JOB ARGS` in the background, waited for: the training record of its final/."""
    import subprocess
    import time

    from tests.conftest import ROOT

    started = subprocess.run([str(ROOT / "scripts" / "train.sh"), job, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert f"started {job}" in started.stdout, started.stderr
    final = root / job / "final" / "training.json"
    deadline = time.time() + 300
    while not final.exists() and time.time() < deadline:
        time.sleep(1)
    return json.loads(final.read_text())


def test_the_medquad_job_by_name_trains_on_medical_pairs_alone(tiny_dirs, tmp_path):
    import os

    root = tmp_path / "train"
    env = {**os.environ, "APPLIANCE_TRAIN_DIR": str(root), "TRAIN_SETUP": "0"}
    record = run_job_by_name(env, root, "retriever-medquad", "--base", str(tiny_dirs["retriever"]), "--medquad",
                             str(MEDQUAD), "--batch-size", "3", "--bf16", "off", "--threads", "1",
                             "--warm-start", "none")
    assert record["squad"] == [] and record["sources"] == {"squad": 0, "medquad": 5}
    assert record["epochs"] == 1
