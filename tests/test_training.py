"""train-reader as a job that spans sessions, on a tiny BERT and tiny data: a run stopped by its
time budget and resumed ends with the same weights as one that never stopped; a job without a
checkpoint warm-starts from an int8 ONNX reader; bf16 is chosen from the CPU's flags."""
from __future__ import annotations

import json

import numpy as np
import pytest

from build_tools.training import choose_bf16, cpu_has_fast_bf16
from tests.conftest import DATA, final_weights, run_training_job

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.test_compression import tiny_dirs  # noqa: E402,F401  (fixture)

TINY_SQUAD = DATA / "tiny-squad.json"


def train(base, out, *extra: str) -> list[dict]:
    return run_training_job("train-reader", "--base", str(base), "--data", str(TINY_SQUAD),
                            "--out", str(out), "--batch-size", "2", "--epochs", "2", "--bf16", "off", "--threads", "1",
                            "--retrieved-negatives", "0.5", *extra)


def test_a_stopped_job_resumes_where_it_stopped_and_ends_as_if_never_stopped(tiny_dirs, tmp_path):
    base = tiny_dirs["reader"]
    straight = train(base, tmp_path / "straight", "--warm-start", "none")
    total = straight[0]["total_steps"]
    assert straight[-1]["saved"] and straight[-1]["steps"] == total

    first = train(base, tmp_path / "resumed", "--warm-start", "none", "--time-budget-min", "0.00001")
    assert any(line.get("stopped") == "time budget" for line in first)
    assert not (tmp_path / "resumed" / "final").exists()
    second = train(base, tmp_path / "resumed", "--warm-start", "none")
    resumed_at = next(line["resumed_at_step"] for line in second if "resumed_at_step" in line)
    assert 0 < resumed_at < total

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
    record = json.loads((tmp_path / "resumed" / "final" / "training.json").read_text())
    assert record["steps"] == total and len(record["sessions"]) == 2
    assert record["windows_trained"] == json.loads((tmp_path / "straight" / "final" / "training.json").read_text())[
        "windows_trained"]


def test_a_shared_normalisation_job_resumes_and_ends_as_if_never_stopped(tiny_dirs, tmp_path):
    base = tiny_dirs["reader"]
    grouped = ("--warm-start", "none", "--shared-norm", "2", "--batch-size", "3")
    straight = train(base, tmp_path / "straight", *grouped)
    total = straight[0]["total_steps"]
    assert straight[0]["windows"] >= straight[0]["features"] > 0  # questions, each one or more windows
    train(base, tmp_path / "resumed", *grouped, "--time-budget-min", "0.00001")
    second = train(base, tmp_path / "resumed", *grouped)
    assert 0 < next(line["resumed_at_step"] for line in second if "resumed_at_step" in line) < total
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
    record = json.loads((tmp_path / "resumed" / "final" / "training.json").read_text())
    assert record["shared_norm"] == 2 and record["windows_trained"] == straight[0]["windows"] * 2  # two epochs


def test_a_job_without_checkpoint_warm_starts_from_the_shipped_onnx(tiny_dirs, tmp_path):
    from build_tools.onnx_export import export_onnx, quantize_int8
    from build_tools.onnx_import import load_onnx_weights

    torch.manual_seed(1)
    trained = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"])
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))  # differs from the base the job starts from
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    export_onnx(trained, shipped / "model.onnx", ["start_logits", "end_logits"])
    quantize_int8(shipped / "model.onnx", shipped / "model.int8.onnx")
    (shipped / "model.onnx").unlink()

    fresh = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"])
    assert load_onnx_weights(fresh, shipped / "model.int8.onnx") == len(list(fresh.parameters()))
    for (name, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=0.02, err_msg=name)

    lines = train(tiny_dirs["reader"], tmp_path / "job", "--warm-start", str(shipped), "--max-steps", "1")
    assert any(str(line.get("warm_start", "")).endswith("model.int8.onnx") for line in lines)


def test_a_job_whose_checkpoint_is_gone_trains_only_the_steps_the_shipped_model_has_not_seen(tiny_dirs, tmp_path):
    from build_tools.onnx_export import export_onnx, quantize_int8
    from build_tools.train_reader import export_snapshot

    base = tiny_dirs["reader"]
    straight = train(base, tmp_path / "straight", "--warm-start", "none")
    total = straight[0]["total_steps"]
    train(base, tmp_path / "first", "--warm-start", "none", "--time-budget-min", "0.00001")
    export_snapshot(tmp_path / "first" / "checkpoint.pt", base, tmp_path / "snapshot")
    record = json.loads((tmp_path / "snapshot" / "training.json").read_text())
    assert 0 < record["steps"] < total
    shipped = tmp_path / "shipped"  # as export-reader ships it: int8 ONNX, the run's record in the manifest
    shipped.mkdir()
    snapshot = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "snapshot")
    with torch.no_grad():  # a tiny model one step from its init has equal tensors, which the export would merge
        for p in snapshot.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    export_onnx(snapshot, shipped / "model.onnx", ["start_logits", "end_logits"])
    quantize_int8(shipped / "model.onnx", shipped / "model.int8.onnx")
    (shipped / "model.onnx").unlink()
    (shipped / "manifest.json").write_text(json.dumps({"source": {"training": record}}))

    lines = train(base, tmp_path / "job", "--warm-start", str(shipped))
    assert next(line["continues_at_step"] for line in lines if "continues_at_step" in line) == record["steps"]
    final = json.loads((tmp_path / "job" / "final" / "training.json").read_text())
    assert final["steps"] == total and len(final["sessions"]) == len(record["sessions"]) + 1
    assert final["windows_trained"] == json.loads((tmp_path / "straight" / "final" / "training.json").read_text())[
        "windows_trained"]

    other = train(base, tmp_path / "other", "--warm-start", str(shipped), "--epochs", "3")  # another schedule
    assert not any("continues_at_step" in line for line in other)
    assert other[-1]["steps"] == other[0]["total_steps"] > total


def test_a_continuation_starts_from_another_jobs_final_weights_and_adds_made_unanswerables(tiny_dirs, tmp_path):
    from build_tools.train_reader import warm_start

    train(tiny_dirs["reader"], tmp_path / "first", "--warm-start", "none")
    source = tmp_path / "first" / "final"
    fresh = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"])
    assert warm_start(fresh, source) == str(source / "model.safetensors")
    for name, weights in final_weights(tmp_path / "first").items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), weights.numpy(), err_msg=name)

    lines = train(tiny_dirs["reader"], tmp_path / "continued", "--warm-start", str(source),
                  "--synthetic-unanswerable", "1.0", "--max-steps", "1")
    assert any(line.get("warm_start") == str(source / "model.safetensors") for line in lines)
    assert lines[0]["synthetic_unanswerables"] > 0
    plain = train(tiny_dirs["reader"], tmp_path / "plain", "--warm-start", "none", "--max-steps", "1")
    assert lines[0]["features"] > plain[0]["features"] and plain[0]["synthetic_unanswerables"] == 0


def test_warm_start_refuses_another_architecture(tiny_dirs, tmp_path):
    from build_tools.onnx_export import export_onnx
    from build_tools.onnx_import import load_onnx_weights
    from tests.test_compression import tiny_config

    other = transformers.BertForQuestionAnswering(tiny_config(50))
    export_onnx(other, tmp_path / "other.onnx", ["start_logits", "end_logits"])
    model = transformers.BertForQuestionAnswering.from_pretrained(tiny_dirs["reader"])
    with pytest.raises(ValueError, match="shape|not an export"):
        load_onnx_weights(model, tmp_path / "other.onnx")


def test_bf16_only_where_the_cpu_has_bf16_units():
    assert cpu_has_fast_bf16({"avx512f", "avx512_bf16"}) and cpu_has_fast_bf16({"amx_bf16"})
    assert not cpu_has_fast_bf16({"avx512f", "avx512_vnni", "avx2"})
    assert choose_bf16("on", "cpu") and not choose_bf16("off", "cuda")
    assert choose_bf16("auto", "cuda")
    assert choose_bf16("auto", "cpu") == cpu_has_fast_bf16()


def test_sigterm_ends_the_job_with_a_checkpoint(tiny_dirs, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-m", "build_tools", "train-reader", "--base", str(tiny_dirs["reader"]),
                             "--data", str(TINY_SQUAD), "--out", str(out), "--batch-size", "1", "--epochs", "500",
                             "--bf16", "off", "--threads", "1", "--warm-start", "none"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # the loop starts right after the warm-start line
        if "warm_start" in line:
            break
    proc.terminate()
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert '"stopped": "asked to stop' in rest
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] >= 0 and state["record"]["sessions"][0]["started_step"] == 0


def test_headings_are_read_in_front_of_the_context_and_the_answer_still_labelled(tiny_dirs, tmp_path):
    from appliance.windows import load_tokenizer, make_windows
    from build_tools.squad import label_window, load_squad
    from build_tools.train_reader import with_headings

    examples = load_squad(TINY_SQUAD)
    headed = with_headings(examples, 1.0, seed=13)
    tokenizer = load_tokenizer(tiny_dirs["reader"] / "tokenizer.json")
    for before, after in zip(examples, headed):
        assert after.context.endswith(before.context) and after.context != before.context
        for text, start in zip(after.answers, after.answer_starts):
            assert after.context[start : start + len(text)] == text
        window = make_windows(tokenizer, [(after.question, after.context)], 256, 96)[0][0]
        start, end = label_window(window, after)
        if not after.is_impossible:
            first, last = window.context_offsets[start][0], window.context_offsets[end][1]
            assert first >= len(after.context) - len(before.context)  # never inside the heading
            assert after.context[first:last] == after.answers[0]
    assert with_headings(examples, 0.0, seed=13) == examples
    read_as: dict[str, set[str]] = {}
    for before, after in zip(examples, with_headings(examples, 0.5, seed=13)):
        read_as.setdefault(before.context, set()).add(after.context)
    assert all(len(forms) == 1 for forms in read_as.values())  # a paragraph reads the same for each question

    lines = train(tiny_dirs["reader"], tmp_path / "job", "--warm-start", "none", "--heading-share", "1.0",
                  "--max-steps", "1")
    assert json.loads((tmp_path / "job" / "final" / "training.json").read_text())["heading_share"] == 1.0
    assert lines[-1]["steps"] == 1
