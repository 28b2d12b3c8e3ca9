"""Which class a checkpoint loads as (hf_prune.loading), in Python and through `hf-prune prune --model-class`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import hf_prune
from hf_prune.loading import ModelClassError, choose_model_class

from .cli_run import run_cli

BERT = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _save(model: torch.nn.Module, path: Path, architectures: list[str] | None = None) -> Path:
    """Save ``model``; ``architectures`` overrides what config.json names (as checkpoints in the wild do)."""
    model.save_pretrained(path)
    if architectures is not None:
        config = json.loads((path / "config.json").read_text())
        config["architectures"] = architectures
        (path / "config.json").write_text(json.dumps(config))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classes")
    torch.manual_seed(0)
    config = transformers.BertConfig(**BERT)
    llama = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return {
        # A sentence-transformers MPNet folder: base-model weights (with the pooler), config naming the MLM class.
        "base_named_mlm": _save(transformers.BertModel(config), root / "base", ["BertForMaskedLM"]),
        # A fine-tuned classifier whose config.json names the base model.
        "classifier_named_base": _save(
            transformers.BertForSequenceClassification(config), root / "classifier", ["BertModel"]
        ),
        "tied_llama": _save(transformers.LlamaForCausalLM(llama), root / "llama"),
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base_named_mlm", "BertModel"),
        ("classifier_named_base", "BertForSequenceClassification"),
        ("tied_llama", "LlamaForCausalLM"),  # the tied LM head comes from the embeddings: nothing is missing
    ],
)
def test_loads_as_the_class_whose_weights_the_checkpoint_holds(
    name: str, expected: str, checkpoints: dict[str, Path], recwarn: pytest.WarningsRecorder
) -> None:
    path = checkpoints[name]
    model = hf_prune.from_pretrained(path)
    assert type(model).__name__ == expected
    stored = _weights(path)
    state = model.state_dict()
    used = [key for key in stored if key in state]
    assert len(used) == len(stored), "every tensor of the checkpoint is part of the model"
    for key in used:
        torch.testing.assert_close(state[key], stored[key], atol=0, rtol=0)
    assert not [w for w in recwarn if "random" in str(w.message) or "unused" in str(w.message)]


def test_model_class_by_auto_or_concrete_name(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["classifier_named_base"]
    assert type(hf_prune.from_pretrained(path, "BertForSequenceClassification")).__name__ == (
        "BertForSequenceClassification"
    )
    with pytest.warns(UserWarning, match=r"BertModel would leave unused 2 weight\(s\) \(classifier.bias"):
        model = hf_prune.from_pretrained(path, transformers.AutoModel)
    assert type(model).__name__ == "BertModel"


def test_model_class_that_adds_random_weights_warns(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["base_named_mlm"]
    with pytest.warns(UserWarning, match=r"would randomly initialise 2 weight\(s\) \(classifier.bias, classifier"):
        model = hf_prune.from_pretrained(path, "AutoModelForSequenceClassification")
    assert type(model).__name__ == "BertForSequenceClassification"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("AutoModelFor", "unknown model class 'AutoModelFor': pass an Auto class or a transformers model class name"),
        ("not a class", "unknown model class 'not a class'"),
        ("LlamaForCausalLM", "LlamaForCausalLM is built from llama configs, but this checkpoint is bert"),
        ("AutoModelForImageClassification", "AutoModelForImageClassification has no class for bert checkpoints"),
    ],
)
def test_unknown_or_unfitting_model_class_is_refused(name: str, message: str, checkpoints: dict[str, Path]) -> None:
    path = checkpoints["base_named_mlm"]
    with pytest.raises(ModelClassError, match=message) as info:
        choose_model_class(path, transformers.AutoConfig.from_pretrained(path), name)
    assert "AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification" in str(info.value)


def test_checkpoint_that_no_class_holds_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _save(transformers.BertModel(transformers.BertConfig(**BERT)), tmp_path / "partial")
    weights = _weights(path)
    del weights["embeddings.LayerNorm.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelClassError, match="no transformers class holds every weight") as info:
        hf_prune.from_pretrained(path)
    assert "BertModel would randomly initialise 1 weight(s) (embeddings.LayerNorm.weight)" in str(info.value)
    assert "--model-class" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# The CLI saves what the checkpoint was, and reports its cost
# ---------------------------------------------------------------------------------------------------------


PRUNE = ("--heads", "0.5", "--neurons", "0.5", "--importance", "magnitude")


def test_cli_keeps_the_pooler_and_adds_no_head(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = checkpoints["base_named_mlm"], tmp_path / "pruned"
    code, out, err = run_cli(capsys, "prune", source, *PRUNE, "--output", output)
    assert code == 0, err
    assert "loaded as BertModel" in err
    assert json.loads((output / "config.json").read_text())["architectures"] == ["BertModel"]
    with safe_open(output / "model.safetensors", "pt") as saved:
        keys = set(saved.keys())
        pooler = saved.get_tensor("pooler.dense.weight")
    assert not [k for k in keys if k.startswith("cls.")], "no randomly initialised LM head is saved"
    torch.testing.assert_close(pooler, _weights(source)["pooler.dense.weight"], atol=0, rtol=0)

    # Parameters and FLOPs are those of what was saved, and of the blocks.
    report = json.loads((output / "pruning_report.json").read_text())
    dense = transformers.BertModel.from_pretrained(source)
    assert report["before"]["parameters"] == sum(p.numel() for p in dense.parameters())
    loaded = hf_prune.from_pretrained(output)
    assert report["after"]["parameters"] == sum(p.numel() for p in loaded.parameters())
    before, after = report["before"], report["after"]
    assert (
        f"attention+MLP blocks: parameters {before['block_parameters']:,} -> {after['block_parameters']:,}, "
        f"FLOPs/token {before['block_flops_per_token']:,} -> {after['block_flops_per_token']:,} "
        f"(x{report['block_flops_ratio']:.2f})"
    ) in out
    card = (output / "README.md").read_text()
    assert f"x{report['block_flops_ratio']:.2f} for the pruned blocks" in card


def test_cli_model_class_flag(checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = checkpoints["classifier_named_base"]
    code, _, err = run_cli(capsys, "prune", source, *PRUNE, "--model-class", "AutoModel", "--output", tmp_path / "a")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == ["BertModel"]

    code, out, err = run_cli(capsys, "prune", source, *PRUNE, "--model-class", "Bertt", "--output", tmp_path / "b")
    assert code == 2 and out == ""
    assert "error: unknown model class 'Bertt'" in err and "AutoModelForSequenceClassification" in err
    assert not (tmp_path / "b").exists()

    code, out, _ = run_cli(capsys, "inspect", source, "--model-class", "AutoModel", "--json")
    assert code == 0 and json.loads(out)["class"] == "BertModel"
