"""The ``hf-prune`` command line, run in-process through ``hf_prune.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import hf_prune
from hf_prune.cli import main
from hf_prune.recipe import recipes_dir, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME

DENSE = {
    "llama": {"heads": 8, "kv_heads": 2, "neurons": 96},
    "bert": {"heads": 8, "kv_heads": 8, "neurons": 96},
}
HALVED = {
    # self-calibrated and reconstructed, so gqa_mode="auto" removes 2 query heads of each KV group; both KV heads stay
    "llama": {"heads": 4, "kv_heads": 2, "neurons": 48},
    "bert": {"heads": 4, "kv_heads": 4, "neurons": 48},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny dense llama (causal LM) and bert (sequence classifier) checkpoints, saved once per module."""
    root = tmp_path_factory.mktemp("dense")
    paths = {}
    for name in DENSE:
        CASES_BY_NAME[name].build().save_pretrained(root / name)
        paths[name] = root / name
    return paths


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _inputs() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_inputs()).logits


# ---------------------------------------------------------------------------------------------------------
# recipes / inspect
# ---------------------------------------------------------------------------------------------------------


def test_recipes_lists_every_shipped_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "recipes")
    assert code == 0
    recipes = shipped_recipes()
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith(" ")}
    for name, recipe in recipes.items():
        assert name in lines and recipe.model_types[0] in lines[name]
    assert f"{len(recipes)} recipes in {recipes_dir()}" in out


def test_recipes_show_prints_the_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "recipes", "--show", "llama")
    assert code == 0
    assert out == (recipes_dir() / "llama.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(out)["attention"]["kv_heads_attribute"] == "num_key_value_heads"


def test_recipes_show_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "recipes", "--show", "lama")
    assert code == 2 and out == ""
    assert "no recipe 'lama'; shipped: bert, distilbert" in err


def test_inspect_text(saved: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", saved["llama"])
    assert code == 0
    assert "LlamaForCausalLM (llama), recipe 'llama', head_dim 16" in out
    assert "prunable: 24 heads, 6 KV heads, 288 neurons" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert rows == [[str(i), "8", "2", "96"] for i in range(3)]


def test_inspect_json(saved: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", saved["bert"], "--json")
    assert code == 0
    info = json.loads(out)  # stdout holds nothing but the JSON document
    model = hf_prune.from_pretrained(saved["bert"])
    assert info["model_type"] == "bert" and info["class"] == "BertForSequenceClassification"
    assert info["recipe"] == "bert" and info["head_dim"] == 8 and info["layers"] == 3
    assert info["prunable_groups"] == {"heads": 24, "kv_heads": 24, "neurons": 288}
    assert info["per_layer"] == [DENSE["bert"]] * 3
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["flops_per_token"] > info["block_flops_per_token"] > 0


# ---------------------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_prune_saves_a_loadable_checkpoint_and_report(
    name: str, saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "pruned"
    code, out, _ = _run(capsys, "prune", saved[name], "--heads", "0.5", "--neurons", "0.5", "--output", output)
    assert code == 0
    assert f"saved to {output}" in out and "parameters:" in out

    report = json.loads((output / "pruning_report.json").read_text())
    assert report["layers_before"] == [DENSE[name]] * 3
    assert report["layers_after"] == [HALVED[name]] * 3
    assert report["config"]["heads"] == 0.5 and report["config"]["neurons"] == 0.5
    assert report["vanilla_loadable"] == (name == "llama")  # BERT derives its head size from hidden/heads

    loaded = hf_prune.from_pretrained(output)
    assert [dict(s.counts) for s in ModelStructure(loaded).shapes()] == report["layers_after"]
    assert sum(p.numel() for p in loaded.parameters()) == report["after"]["parameters"]
    assert report["after"]["parameters"] < report["before"]["parameters"]

    # The CLI does exactly what the Python API does with the same settings.
    expected = hf_prune.from_pretrained(saved[name])
    hf_prune.prune(expected, heads=0.5, neurons=0.5)
    torch.testing.assert_close(_logits(loaded), _logits(expected), atol=1e-5, rtol=0)

    code, out, _ = _run(capsys, "inspect", output, "--json")
    assert code == 0 and json.loads(out)["per_layer"] == report["layers_after"]


def test_prune_config_file_with_flags_overriding_it(
    saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "prune.yaml"
    config.write_text("heads: 0.25\nneurons: 0.25\nranking: global\nneuron_multiple: 1\nimportance: magnitude\n")
    output = tmp_path / "pruned"
    code, _, err = _run(capsys, "prune", saved["llama"], "--config", config, "--neurons", "0.5", "--output", output)
    assert code == 0, err
    report = json.loads((output / "pruning_report.json").read_text())
    assert report["config"]["neurons"] == 0.5  # the flag wins
    assert report["config"]["heads"] == 0.25  # the file's value where no flag is given
    assert report["config"]["ranking"] == "global" and report["config"]["neuron_multiple"] == 1
    assert sum(layer["neurons"] for layer in report["layers_after"]) == 144  # half of 3 x 96, globally


def test_prune_config_file_with_unknown_setting_exits_2(
    saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "prune.yaml"
    config.write_text("heads: 0.25\nrankin: global\n")
    code, _, err = _run(capsys, "prune", saved["llama"], "--config", config, "--output", tmp_path / "out")
    assert code == 2
    assert "unknown pruning setting(s) ['rankin']" in err and "'ranking'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value"), [("--heads", "1.5"), ("--neurons", "1.0"), ("--heads", "-0.1")])
def test_prune_bad_fraction_exits_2_before_loading(
    flag: str, value: str, saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    code, out, err = _run(capsys, "prune", saved["llama"], flag, value, "--output", output)
    assert code == 2
    name = flag.lstrip("-")
    assert f"error: `{name}` must be a fraction in [0, 1) (0.5 removes half), got {float(value)!r}" in err
    assert "loading" not in err, "the config is validated before the model is loaded"
    assert not output.exists() and out == ""


def test_prune_into_non_empty_directory_exits_2_and_changes_nothing(
    saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    code, _, err = _run(capsys, "prune", saved["llama"], "--heads", "0.5", "--output", output)
    assert code == 2
    assert f"error: '{output}' exists and is not empty; pass --overwrite" in err
    assert [p.name for p in output.iterdir()] == ["keep.txt"] and (output / "keep.txt").read_text() == "precious"

    code, _, err = _run(capsys, "prune", saved["llama"], "--heads", "0.5", "--output", output, "--overwrite")
    assert code == 0, err
    assert not (output / "keep.txt").exists() and (output / "pruning_report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging directories left behind"
