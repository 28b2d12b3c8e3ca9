"""Quality before and after pruning: the metrics, the CLI's --eval-data, the card, and the push guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import hf_prune
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
    with pytest.warns(UserWarning, match="the evaluation data is the calibration data"):
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
