"""Quality before and after pruning: the metrics, the CLI's --eval-data, the card, and the push guard."""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from huggingface_hub import ModelCard

import hf_prune
from hf_prune import cli
from hf_prune import evaluation as evaluation_module
from hf_prune.cli import main
from hf_prune.evaluation import Evaluation, check_collapse, choose_metric, evaluate_model

from .hub_server import LocalHub
from .test_calibration import tiny_bert_classifier, tiny_llama
from .text_data import byte_tokenizer, texts


def _independent_perplexity(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean of the model's own loss (every window has the same length here)."""
    with torch.no_grad():
        losses = [float(model(input_ids=b["input_ids"], labels=b["input_ids"]).loss) for b in batches]
    return math.exp(sum(losses) / len(losses))


def _saved(tmp_path: Path, model: torch.nn.Module) -> Path:
    folder = tmp_path / "dense"
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_perplexity_equals_the_models_own_loss() -> None:
    model = tiny_llama()
    data = hf_prune.prepare_calibration(model, texts(40), byte_tokenizer(), samples=4, seq_len=16, batch_size=2)
    assert evaluate_model(model, data)["perplexity"] == pytest.approx(_independent_perplexity(model, data.batches))


def test_accuracy_and_f1_of_a_classifier() -> None:
    model = tiny_bert_classifier()
    batches = [{"input_ids": torch.randint(3, 200, (6, 8)), "labels": torch.tensor([0, 1, 1, 0, 1, 1])}]
    with torch.no_grad():
        predicted = model(input_ids=batches[0]["input_ids"]).logits.argmax(-1)
    truth = batches[0]["labels"]
    result = evaluate_model(model, hf_prune.CalibrationData(batches, "given"), "accuracy")
    assert result["accuracy"] == pytest.approx(float((predicted == truth).float().mean()))
    tp = int(((predicted == 1) & (truth == 1)).sum())
    assert result["f1"] == pytest.approx(2 * tp / (int(predicted.sum()) + int(truth.sum())))


def test_a_metric_that_does_not_fit_is_refused() -> None:
    batches = [{"input_ids": torch.randint(3, 200, (2, 8))}]
    with pytest.raises(ValueError, match="'accuracy' needs a labelled sequence classifier"):
        choose_metric(tiny_llama(), batches, "accuracy")
    with pytest.raises(ValueError, match="'perplexity' does not fit BertForSequenceClassification"):
        choose_metric(tiny_bert_classifier(), batches, "perplexity")
    with pytest.raises(ValueError, match="unknown evaluation metric 'bleu'"):
        choose_metric(tiny_llama(), batches, "bleu")


def test_a_users_own_metric() -> None:
    model = tiny_llama()
    data = hf_prune.CalibrationData([{"input_ids": torch.randint(3, 200, (2, 8))}], "given")
    evaluation = Evaluation(data, lambda m, batches: {"ones": 1.0, "layers": len(m.model.layers)})
    evaluation.before(model)
    assert evaluation.after(model)["after"] == {"ones": 1.0, "layers": 2.0}


def test_collapse_thresholds() -> None:
    assert check_collapse({"before": {"perplexity": 40.0}, "after": {"perplexity": 100.0}}) is None
    assert "x5.0" in check_collapse({"before": {"perplexity": 40.0}, "after": {"perplexity": 200.0}})
    assert check_collapse({"before": {"accuracy": 0.85}, "after": {"accuracy": 0.80}}) is None
    assert "85.0% to 70.0%" in check_collapse({"before": {"accuracy": 0.85}, "after": {"accuracy": 0.70}})


def test_cli_eval_figures_in_report_and_card_equal_an_independent_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_hub: LocalHub
) -> None:
    dense = tiny_llama()
    source = tmp_path / "held_out.txt"
    source.write_text("\n".join(texts(60)), encoding="utf-8")
    output = tmp_path / "pruned"
    code, out, err = _run(
        capsys,
        "prune", _saved(tmp_path, dense), "--heads", "0.5", "--neurons", "0.5", "--output", output,
        "--calibration-samples", "4", "--calibration-seq-len", "16",
        "--eval-data", source, "--eval-samples", "4", "--eval-seq-len", "16",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((output / "pruning_report.json").read_text())
    data = hf_prune.prepare_calibration(dense, source, byte_tokenizer(), samples=4, seq_len=16, seed=1)
    pruned = hf_prune.from_pretrained(output)
    assert report["extra"]["eval"]["before"]["perplexity"] == pytest.approx(
        _independent_perplexity(dense, data.batches)
    )
    assert report["extra"]["eval"]["after"]["perplexity"] == pytest.approx(
        _independent_perplexity(pruned, data.batches), rel=1e-5
    )
    card = ModelCard.load(output / "README.md")
    card.validate()  # huggingface_hub's validation call, answered by the local Hub server
    assert ("POST", "/api/validate-yaml") in local_hub.requests
    assert (
        "model-index" in card.content and str(round(report["extra"]["eval"]["after"]["perplexity"], 2))[:4] in card.text
    )
    assert "## Evaluation" in card.text and "perplexity" in card.text
    assert "perplexity" in out and "->" in out


def test_cli_eval_data_without_the_column_fails_before_pruning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "held_out.jsonl"
    source.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts(10)), encoding="utf-8")
    output = tmp_path / "pruned"
    code, _, err = _run(
        capsys, "prune", _saved(tmp_path, tiny_llama()), "--heads", "0.5", "--output", output,
        "--eval-data", source, "--eval-column", "text",
    )  # fmt: skip
    assert code == 2 and "no column 'text'" in err and "['body']" in err
    assert not output.exists()


def test_eval_on_the_calibration_data_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.txt"
    source.write_text("\n".join(texts(60)), encoding="utf-8")
    with pytest.warns(UserWarning, match="the evaluation data overlaps the calibration data: 4 of 4"):
        code, _, err = _run(
            capsys, "prune", _saved(tmp_path, tiny_llama()), "--heads", "0.5", "--output", tmp_path / "out",
            "--calibration-data", source, "--calibration-samples", "4", "--calibration-seq-len", "16",
            "--eval-data", source, "--eval-samples", "4", "--eval-seq-len", "16",
        )  # fmt: skip
    assert code == 0, err


def test_card_says_plainly_when_quality_was_not_measured() -> None:
    model = tiny_llama()
    report = hf_prune.prune(model, heads=0.5, importance="magnitude", reconstruct=False)
    text = hf_prune.build_model_card(report).text
    assert "Quality was not measured" in text and "--eval-data" in text


def _broken_folder(tmp_path: Path) -> Path:
    """A pruned model broken on purpose (logits scaled x50) whose report measured it before and after."""
    model = tiny_llama()
    data = hf_prune.prepare_calibration(model, texts(40), byte_tokenizer(), samples=4, seq_len=16)
    evaluation = Evaluation(data, "perplexity")
    evaluation.before(model)
    report = hf_prune.prune(model, heads=0.5, importance="magnitude", reconstruct=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    report.extra["eval"] = evaluation.after(model)
    assert check_collapse(report.extra["eval"]) is not None
    folder = tmp_path / "broken"
    hf_prune.save_pretrained(model, folder, extra_files={"pruning_report.json": report.to_json()})
    hf_prune.write_card(folder, report)
    return folder


def test_push_guard_blocks_a_collapsed_model_and_force_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_hub: LocalHub
) -> None:
    folder = _broken_folder(tmp_path)
    code, _, err = _run(capsys, "push", folder, "test-user/broken")
    assert code == 2 and "refusing to push" in err and "perplexity went from" in err and "--force" in err
    assert local_hub.requests == [], "refused before anything reaches the Hub"
    with pytest.raises(ValueError, match="refusing to push"):
        hf_prune.push_to_hub(folder, "test-user/broken")
    code, _, err = _run(capsys, "push", folder, "test-user/broken", "--force")
    assert code == 0, err
    assert "config.json" in local_hub.files("test-user/broken")


# -- sequence classification through the CLI --------------------------------------------------------------------


def _reviews(count: int, seed: int) -> list[str]:
    """Random-letter "reviews": no two share a run of 32 characters (byte tokens), so they never overlap."""
    rng = random.Random(seed)
    return [" ".join("".join(rng.choices("abcdefghij", k=5)) for _ in range(8)) for _ in range(count)]


def _labelled_csv(path: Path, rows: list[str], seed: int, labels: bool = True) -> Path:
    columns: dict[str, list] = {"text": rows}
    if labels:
        columns["label"] = [random.Random(seed + i).randint(0, 1) for i in range(len(rows))]
    datasets.Dataset.from_dict(columns).to_csv(str(path), index=False)
    return path


def _saved_classifier(tmp_path: Path) -> Path:
    folder = tmp_path / "classifier"
    tiny_bert_classifier().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _independent_accuracy(model: torch.nn.Module, source: Path) -> dict[str, float]:
    """Accuracy and F1 of class 1, one unpadded review at a time, counted by hand."""
    rows = datasets.load_dataset("csv", data_files=str(source), split="train")
    tokenizer = byte_tokenizer()
    with torch.no_grad():
        predicted = [int(model.eval()(**tokenizer(t, return_tensors="pt")).logits.argmax(-1)) for t in rows["text"]]
    truth = list(rows["label"])
    tp = sum(p == t == 1 for p, t in zip(predicted, truth, strict=True))
    return {
        "accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth),
        "f1": 2 * tp / (sum(predicted) + sum(truth)),
    }


def test_cli_classifier_eval_figures_in_report_and_card_equal_an_independent_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_hub: LocalHub
) -> None:
    dense_folder = _saved_classifier(tmp_path)
    calibration = _labelled_csv(tmp_path / "train.csv", _reviews(16, seed=0), seed=0)
    held_out = _labelled_csv(tmp_path / "held_out.csv", _reviews(24, seed=1), seed=100)
    output = tmp_path / "pruned"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = _run(
            capsys,
            "prune", dense_folder, "--heads", "0.5", "--neurons", "0.5", "--output", output,
            "--calibration-data", calibration, "--calibration-samples", "16",
            "--eval-data", held_out, "--eval-samples", "24",
        )  # fmt: skip
    assert code == 0, err
    assert not [w for w in caught if "overlaps" in str(w.message)], "held-out data: no overlap warning"
    entry = json.loads((output / "pruning_report.json").read_text())["extra"]["eval"]
    dense = transformers.AutoModelForSequenceClassification.from_pretrained(dense_folder)
    expected_before = _independent_accuracy(dense, held_out)
    expected_after = _independent_accuracy(hf_prune.from_pretrained(output), held_out)
    assert entry["before"] == pytest.approx(expected_before)
    assert entry["after"] == pytest.approx(expected_after)
    assert entry["dataset"] == {"type": "held_out.csv", "name": "held_out.csv"}

    card = ModelCard.load(output / "README.md")
    card.validate()
    indexed = {r.metric_type: r for r in card.data.eval_results}
    assert indexed.keys() == {"accuracy", "f1"}
    assert indexed["accuracy"].metric_value == pytest.approx(expected_after["accuracy"])
    assert indexed["f1"].metric_value == pytest.approx(expected_after["f1"])
    assert indexed["accuracy"].task_type == "text-classification"
    assert indexed["accuracy"].dataset_name == "held_out.csv"
    row = next(line for line in card.text.splitlines() if line.startswith("| accuracy"))
    assert f"{expected_before['accuracy']:.4g}" in row and f"{expected_after['accuracy']:.4g}" in row
    assert f"accuracy {expected_before['accuracy']:.4g} -> {expected_after['accuracy']:.4g}" in out


@pytest.fixture
def no_pruning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad evaluation input must fail before any pruning: pruning at all fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pruning started")

    monkeypatch.setattr(cli, "prune", refuse)


def test_cli_metric_that_does_not_fit_the_classifier_fails_before_pruning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_pruning: None
) -> None:
    held_out = _labelled_csv(tmp_path / "held_out.csv", _reviews(8, seed=1), seed=0)
    output = tmp_path / "pruned"
    code, _, err = _run(
        capsys, "prune", _saved_classifier(tmp_path), "--heads", "0.5", "--output", output,
        "--eval-data", held_out, "--eval-samples", "8", "--eval-metric", "perplexity",
    )  # fmt: skip
    assert code == 2
    assert "evaluation metric 'perplexity' does not fit BertForSequenceClassification" in err
    assert "evaluating the dense model" not in err and not output.exists()


@pytest.mark.parametrize("metric", ["auto", "accuracy"])
def test_cli_classifier_eval_data_without_labels_fails_before_pruning(
    metric: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_pruning: None
) -> None:
    held_out = _labelled_csv(tmp_path / "held_out.csv", _reviews(8, seed=1), seed=0, labels=False)
    output = tmp_path / "pruned"
    code, _, err = _run(
        capsys, "prune", _saved_classifier(tmp_path), "--heads", "0.5", "--output", output,
        "--eval-data", held_out, "--eval-samples", "8", "--eval-metric", metric,
    )  # fmt: skip
    assert code == 2
    assert "the evaluation data has no label column ('label' or 'labels'): give data with one" in err
    assert "evaluating the dense model" not in err and not output.exists()


def test_cli_eval_set_overlapping_the_calibration_set_warns_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three held-out reviews are copies of calibration ones: the warning counts them and quotes one."""
    train = _reviews(16, seed=0)
    copied = train[3:6]
    calibration = _labelled_csv(tmp_path / "train.csv", train, seed=0)
    held_out = _labelled_csv(tmp_path / "held_out.csv", _reviews(9, seed=1) + copied, seed=0)
    with pytest.warns(UserWarning, match="overlaps the calibration data: 3 of 12 evaluation sequences") as caught:
        code, _, err = _run(
            capsys, "prune", _saved_classifier(tmp_path), "--heads", "0.5", "--output", tmp_path / "pruned",
            "--calibration-data", calibration, "--calibration-samples", "16",
            "--eval-data", held_out, "--eval-samples", "12",
        )  # fmt: skip
    assert code == 0, err
    message = next(str(w.message) for w in caught if "overlaps" in str(w.message))
    assert any(text[:20] in message for text in copied) and "held_out.csv" in message and "train.csv" in message


def test_check_overlap_counts_shared_runs_of_a_causal_lm_windows() -> None:
    """Windows of 48 tokens: one of the three evaluation texts is also in the calibration stream."""
    model, tokenizer = tiny_llama(), byte_tokenizer()
    calibration_texts, held_out = _reviews(12, seed=0), _reviews(6, seed=1)
    calibration = hf_prune.prepare_calibration(model, calibration_texts, tokenizer, samples=8, seq_len=48)
    unseen = hf_prune.prepare_calibration(model, held_out, tokenizer, samples=4, seq_len=48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for held-out text
        assert evaluation_module.check_overlap(unseen, calibration, tokenizer) == 0
    repeated = hf_prune.prepare_calibration(model, calibration_texts[:2], tokenizer, samples=1, seq_len=48)
    with pytest.warns(UserWarning, match="1 of 1 evaluation sequences share 32 consecutive tokens"):
        assert evaluation_module.check_overlap(repeated, calibration, tokenizer) == 1
