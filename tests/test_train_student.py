"""train-student as a job that spans sessions, on a tiny BERT teacher and tiny data: the student
keeps the chosen layers, a run stopped by its budget and resumed ends with the same weights as one
that never stopped, it learns from the teacher (not only from the gold spans), a mid-job snapshot
loads, and a missing teacher is refused with a clear message."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import DATA, final_weights, run_cli, run_training_job

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.test_compression import tiny_dirs  # noqa: E402,F401  (fixture)

TINY_SQUAD = DATA / "tiny-squad.json"


def distil(teacher, out, *extra: str) -> list[dict]:
    return run_training_job("train-student", "--teacher", str(teacher), "--layers", "1", "--data", str(TINY_SQUAD),
                            "--out", str(out), "--batch-size", "2", "--epochs", "2", "--bf16", "off",
                            "--threads", "1", "--retrieved-negatives", "0.5", *extra)


def test_a_stopped_student_job_resumes_and_ends_as_if_never_stopped(tiny_dirs, tmp_path):
    teacher = tiny_dirs["reader"]
    straight = distil(teacher, tmp_path / "straight")
    total = straight[0]["total_steps"]
    assert straight[0]["student_params"] < straight[0]["teacher_params"]
    assert straight[-1]["saved"] and straight[-1]["steps"] == total

    first = distil(teacher, tmp_path / "resumed", "--time-budget-min", "0.00001")
    assert any(line.get("stopped") == "time budget" for line in first)
    assert not (tmp_path / "resumed" / "final").exists()
    second = distil(teacher, tmp_path / "resumed")
    resumed_at = next(line["resumed_at_step"] for line in second if "resumed_at_step" in line)
    assert 0 < resumed_at < total

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
    student = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "resumed" / "final")
    assert student.config.num_hidden_layers == 1
    taught = transformers.BertForQuestionAnswering.from_pretrained(teacher)
    assert not torch.allclose(student.bert.encoder.layer[0].output.dense.weight,
                              taught.bert.encoder.layer[1].output.dense.weight)  # it trained
    record = json.loads((tmp_path / "resumed" / "final" / "training.json").read_text())
    assert record["steps"] == total and len(record["sessions"]) == 2 and record["layers"] == "1"
    assert (tmp_path / "resumed" / "final" / "tokenizer.json").exists()


def test_the_soft_targets_change_what_the_student_learns(tiny_dirs, tmp_path):
    soft = distil(tiny_dirs["reader"], tmp_path / "soft", "--max-steps", "3", "--alpha", "1.0")
    hard = distil(tiny_dirs["reader"], tmp_path / "hard", "--max-steps", "3", "--alpha", "0.0")
    assert soft[-1]["saved"] and hard[-1]["saved"]
    a, b = final_weights(tmp_path / "soft"), final_weights(tmp_path / "hard")
    assert any(not torch.allclose(a[name], b[name]) for name in a)


def test_the_layer_wise_loss_is_nothing_for_the_teacher_itself_and_something_for_a_student(tiny_dirs):
    from build_tools.compress.distill import hidden_loss, make_student
    from tests.test_compression import encode

    teacher = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"]).eval()
    _, feeds = encode(tiny_dirs["reader"] / "tokenizer.json", "how long to preheat", "preheat for 20 minutes")
    every = list(range(teacher.config.num_hidden_layers))
    with torch.no_grad():
        taught = teacher(**feeds, output_hidden_states=True)
        whole = make_student(teacher, every)(**feeds, output_hidden_states=True)
        skipping = make_student(teacher, every[-1:])(**feeds, output_hidden_states=True)
    assert hidden_loss(whole, taught, every, feeds["attention_mask"]).item() < 1e-10
    assert hidden_loss(skipping, taught, every[-1:], feeds["attention_mask"]).item() > 1e-6  # a random tiny BERT


def test_a_job_can_take_up_the_layer_wise_loss_and_records_it_per_session(tiny_dirs, tmp_path):
    distil(tiny_dirs["reader"], tmp_path / "plain", "--max-steps", "4")
    first = distil(tiny_dirs["reader"], tmp_path / "layered", "--max-steps", "4", "--time-budget-min", "0.00001")
    assert any(line.get("stopped") == "time budget" for line in first)
    distil(tiny_dirs["reader"], tmp_path / "layered", "--max-steps", "4", "--hidden-weight", "5")
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "layered")
    assert any(not torch.allclose(a[name], b[name]) for name in a)
    record = json.loads((tmp_path / "layered" / "final" / "training.json").read_text())
    assert [s["hidden_weight"] for s in record["sessions"]] == [0.0, 5.0]


def test_a_snapshot_of_a_running_job_loads_as_a_reader(tiny_dirs, tmp_path):
    job = tmp_path / "job"
    distil(tiny_dirs["reader"], job, "--max-steps", "2")
    lines = distil(tiny_dirs["reader"], job, "--export-snapshot", str(tmp_path / "snap"))
    assert lines[-1]["snapshot"] == str(tmp_path / "snap") and lines[-1]["step"] == 2
    snap = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "snap")
    final = final_weights(job)
    for name, value in snap.state_dict().items():
        if name in final:
            np.testing.assert_array_equal(value.numpy(), final[name].numpy(), err_msg=name)


def test_the_student_can_learn_from_an_onnx_reader(tiny_dirs, tmp_path):
    from build_tools.onnx_export import export_onnx, quantize_int8

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    model = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"])
    torch.manual_seed(1)
    with torch.no_grad():  # a trained reader's weights: no two initialisers alike for the export to merge
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_onnx(model, shipped / "model.onnx", ["start_logits", "end_logits"])
    quantize_int8(shipped / "model.onnx", shipped / "model.int8.onnx")
    (shipped / "model.onnx").unlink()
    lines = distil(shipped, tmp_path / "job", "--base", str(tiny_dirs["reader"]), "--max-steps", "1")
    assert lines[-1]["saved"]


def test_a_job_is_not_resumed_with_another_teacher_or_shape(tiny_dirs, tmp_path):
    job = tmp_path / "job"
    distil(tiny_dirs["reader"], job, "--max-steps", "1", "--epochs", "1")
    before = (job / "checkpoint.pt").read_bytes()
    other = tmp_path / "other-teacher"
    import shutil

    shutil.copytree(tiny_dirs["reader"], other)
    for extra in (["--teacher", str(other)], ["--layers", "0"], ["--layers", "0,1"]):
        args = ["--teacher", str(tiny_dirs["reader"]), "--layers", "1", *extra]
        result = run_cli("build_tools", "train-student", *args, "--data", str(TINY_SQUAD), "--out", str(job),
                         "--batch-size", "2", "--bf16", "off", "--threads", "1", "--max-steps", "2")
        assert result.returncode != 0 and "move the job folder aside" in result.stderr, result.stderr[-500:]
    assert (job / "checkpoint.pt").read_bytes() == before  # nothing lost


def test_without_a_trained_teacher_the_job_says_what_to_do(tiny_dirs, tmp_path):
    result = run_cli("build_tools", "train-student", "--teacher", str(tmp_path / "missing"), "--base",
                     str(tiny_dirs["reader"]), "--data", str(TINY_SQUAD), "--out", str(tmp_path / "job"))
    assert result.returncode != 0
    assert "train-reader" in result.stderr and "--teacher" in result.stderr
    assert not (tmp_path / "job" / "checkpoint.pt").exists()


def test_the_finished_student_exports_and_reads_in_the_runtime(tiny_dirs, tmp_path):
    from appliance.config import ReaderConfig
    from appliance.reader import Reader
    from build_tools.compress.common import load_model
    from tests.test_compression import encode, logits

    job = tmp_path / "job"
    distil(tiny_dirs["reader"], job, "--max-steps", "2")
    int8, fp32 = tmp_path / "student-int8", tmp_path / "student-fp32"
    result = run_cli("build_tools", "export-reader", "--checkpoint", str(job / "final"), "--out", str(int8),
                     "--fp32-out", str(fp32), "--parity-samples", "4", "--parity-data", str(TINY_SQUAD))
    assert result.returncode == 0, result.stderr[-2000:]
    question, context = "How long does the Quick program take?", "The Quick program takes 30 minutes."
    reader = Reader(fp32, ReaderConfig(threads=1))
    _, feeds = encode(job / "final" / "tokenizer.json", question, context)
    start, end = reader.session.run(["start_logits", "end_logits"], {k: v.numpy() for k, v in feeds.items()})
    np.testing.assert_allclose(np.concatenate([start, end]), logits(load_model(job / "final"), feeds), atol=1e-4)
    [prediction] = Reader(int8, ReaderConfig(threads=1)).predict([(question, context)])
    assert prediction is not None and prediction.text in context
